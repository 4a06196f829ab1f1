"""Persistent MQTT sessions on disk, written as they change (``enable_persistence``).

The gateway keeps its state in ``<persistence_path>/mqtt``, a record store of the persistence
package (:class:`~mqkit.plugins.persistence.store.RecordStore`: the store format of
:mod:`mqkit.plugins.persistence.format`, its files, version and key rules; SQLite in WAL mode:
a write that returned survives a SIGKILL of the process). Messages are written by the store's
serializer (:mod:`mqkit.plugins.persistence.serializer`). Every key is a tuple (stored as its
JSON text, ``["q","client",3]``; stores of earlier versions pickled it, and are upgraded when
they open):

==============================  ==============================================================
``("s", client_id)``            a persistent session: expiry, subscriptions, disconnect time
                                (written when it connects, subscribes, unsubscribes and goes
                                offline; deleted when it ends)
``("q", client_id, seq)``       one QoS 1/2 message queued for the session: ``{"f": filter,
                                "m": message}`` (written by the publishing thread before the
                                publish returns - so before the publisher's PUBACK/PUBREC;
                                deleted when the message is done for the session: PUBACK,
                                PUBCOMP, dropped by the subscription's policy, expired)
``("i", client_id, seq)``       the in-flight state of message ``seq``: ``[packet id, qos,
                                retain, [subscription ids], released]`` (written before the
                                PUBLISH, and again before the PUBREL)
``("p", client_id, pid)``       packet id ``pid`` of a QoS 2 publication from the client,
                                between its PUBREC (written before it) and PUBREL (deleted)
``("r", topic)``                a retained message (written as it changes)
``("gq", key, seq)``            one QoS 1/2 message in a shared subscription ``key``: the
                                message (written before the publish returns; deleted when a
                                member completes it, or the subscription drops it)
``("g", key)``                  a shared subscription's buffer (read from earlier versions)
==============================  ==============================================================

``seq`` numbers a session's messages in the order they were queued; a restart restores them
in that order, the in-flight ones with their packet ids (resent with DUP, or PUBREL when the
client had sent PUBREC).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mqkit.core.message import Message
from mqkit.plugins.persistence.format import RecordKey
from mqkit.plugins.persistence.serializer import message_to_dict, to_json
from mqkit.plugins.persistence.store import RecordStore
from mqkit.protocols.mqtt.mapping import K_QOS

if TYPE_CHECKING:
    from mqkit.protocols.mqtt.server import Server
    from mqkit.protocols.mqtt.session import InFlight, Session, SessionSub

__all__ = ["FeedJournals", "GroupJournal", "Journal", "SessionStore"]

log = logging.getLogger("mqkit.mqtt")


class SessionStore(RecordStore):
    """The gateway's record store, with every failed write counted and logged (thread-safe)."""

    def failed(self, text: str) -> bool:
        """Count and log a failed write (once per distinct failure, not once per message)."""
        new = super().failed(text)
        if new:
            log.error("mqtt: %s", text)
        return new


class Journal:
    """The stored queue of one subscription of a session, and the filter that fills it.

    It is the broker subscription's ``SubOptions.filter``: it runs in the publishing thread
    before the message enters the subscription's buffer, and writes a QoS 1/2 message of a
    persistent session to the store (``("q", client_id, seq)``) before the publish returns.
    The session calls :meth:`flying` when it sends the message and :meth:`forget` when the
    message is done; the gateway's ``mqkit_drop`` calls :meth:`forget` for a message the
    subscription dropped. Messages are known by object identity (each publish stamps its own).
    """

    __slots__ = ("closed", "entries", "flights", "server", "session", "ssub", "store")

    kind = "q"
    """The first part of the store keys of the messages."""

    def __init__(self, store: SessionStore, server: Server, session: Session | None) -> None:
        self.store = store
        self.server = server
        self.session = session
        """The session (None for a shared subscription's journal)."""
        self.ssub: SessionSub | None = None
        """The subscription entry (set once it exists)."""
        self.entries: dict[int, tuple[Message, int]] = {}
        """``id(message)`` -> (message, seq) for every message stored and not yet done."""
        self.flights: set[int] = set()
        """The seqs with an in-flight entry."""
        self.closed = False

    def __call__(self, message: Message) -> bool:
        """The subscription filter: store what a persistent session must not lose; let all in."""
        ssub = self.ssub
        session = self.session
        if (
            ssub is not None
            and ssub.qos
            and session is not None
            and session.expiry
            and not self.closed
            and message.meta.get(K_QOS) != "0"
        ):
            self.put(message)
        return True

    @property
    def owner(self) -> str:
        """The second part of the store keys: the client id."""
        assert self.session is not None
        return self.session.client_id

    def _value(self, message: Message) -> str:
        assert self.ssub is not None
        return to_json({"f": self.ssub.topic_filter, "m": message_to_dict(message)})

    def _next_seq(self) -> int:
        assert self.session is not None
        return next(self.session.seqs)

    def put(self, message: Message) -> None:
        """Store ``message`` (once: a message already stored is left alone)."""
        entries = self.entries
        ident = id(message)
        if ident in entries:
            return
        try:
            value = self._value(message)
        except Exception as exc:
            self.store.failed(f"cannot store message {message.id!r}: {exc}")
            return
        seq = self._next_seq()
        entries[ident] = (message, seq)
        self.store.put((self.kind, self.owner, seq), value)

    def adopt(self, message: Message, seq: int, flying: bool) -> None:
        """Take over a message restored from the store as ``seq`` (nothing is written)."""
        self.entries[id(message)] = (message, seq)
        if flying:
            self.flights.add(seq)

    def flying(self, inf: InFlight) -> None:
        """Write the in-flight state of a stored message (before its PUBLISH or PUBREL)."""
        entry = self.entries.get(id(inf.message))
        if entry is None:
            return
        seq = entry[1]
        state = [inf.packet_id, inf.qos, inf.retain, list(inf.sub_ids), inf.released]
        self.flights.add(seq)
        self.store.put(("i", self.owner, seq), to_json(state))

    def forget(self, message: Message) -> None:
        """``message`` is done: delete it from the store.

        While the server shuts down nothing is deleted: what is stored is for the next run.
        """
        entry = self.entries.pop(id(message), None)
        if entry is None or self.server.closing:
            return
        self._delete((entry[1],))

    def close(self, keep: set[int]) -> None:
        """The subscription is gone: delete what it stored, except ``keep`` (``id``s in flight)."""
        self.closed = True
        if self.server.closing:
            return
        entries = self.entries
        gone = [ident for ident in list(entries) if ident not in keep]
        seqs = [entry[1] for entry in (entries.pop(ident, None) for ident in gone) if entry]
        if seqs:
            self._delete(seqs)

    def _delete(self, seqs: Iterable[int]) -> None:
        owner = self.owner
        keys: list[RecordKey] = []
        for seq in seqs:
            keys.append((self.kind, owner, seq))
            if seq in self.flights:
                self.flights.discard(seq)
                keys.append(("i", owner, seq))
        self.store.delete(*keys)


class FeedJournals:
    """The filter of a feed's broker subscription: the journals of its persistent members.

    It runs in the publishing thread before a message enters the feed's buffer, and stores the
    message for every member that keeps it (:class:`Journal`) before the publish returns. The
    gateway's ``mqkit_drop`` calls :meth:`forget` for a message the feed's buffer dropped.
    """

    __slots__ = ("journals",)

    def __init__(self) -> None:
        self.journals: tuple[Journal, ...] = ()
        """The members' journals (replaced whole as members come and go: publishers read it)."""

    def __call__(self, message: Message) -> bool:
        """Store ``message`` for each member that keeps it; let it in."""
        for journal in self.journals:
            journal(message)
        return True

    def forget(self, message: Message) -> None:
        """The feed's buffer dropped ``message``: out of every member's stored queue."""
        for journal in self.journals:
            journal.forget(message)


class GroupJournal(Journal):
    """The stored buffer of a shared subscription (``("gq", key, seq)``), whoever its members.

    Every QoS 1/2 message it takes is written; a message is done when a member completes it
    (or the subscription drops it). One handed to a member is not marked in flight: after a
    crash it goes back to the group (without DUP) and is resent to a member.
    """

    __slots__ = ("key", "seqs")

    kind = "gq"

    def __init__(self, store: SessionStore, server: Server, key: str, first: int) -> None:
        super().__init__(store, server, None)
        self.key = key
        """``mqtt:$share/<group>/<filter>``."""
        self.seqs = itertools.count(first)
        """Numbers the group's messages in the order they came."""

    def __call__(self, message: Message) -> bool:
        """The group subscription's filter: store every QoS 1/2 message; let all in."""
        if not self.closed and message.meta.get(K_QOS) != "0":
            self.put(message)
        return True

    @property
    def owner(self) -> str:
        """The second part of the store keys: the group's key."""
        return self.key

    def _value(self, message: Message) -> str:
        return to_json(message_to_dict(message))

    def _next_seq(self) -> int:
        return next(self.seqs)

    def flying(self, inf: InFlight) -> None:
        """Nothing: a shared message in flight goes back to the group after a crash."""
