"""Persistent MQTT sessions on disk, written as they change (``enable_persistence``).

The gateway keeps its state in a diskcache directory, ``<persistence_path>/mqtt`` (SQLite in
WAL mode: a write that returned survives a SIGKILL of the process). Every key is a tuple:

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
``("g", key)``                  a shared subscription's buffer (written at a clean close)
==============================  ==============================================================

``seq`` numbers a session's messages in the order they were queued; a restart restores them
in that order, the in-flight ones with their packet ids (resent with DUP, or PUBREL when the
client had sent PUBREC).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from mqkit.core.convert import message_to_dict, to_json
from mqkit.core.message import Message
from mqkit.protocols.mqtt.mapping import K_QOS

if TYPE_CHECKING:
    from mqkit.protocols.mqtt.session import InFlight, Session, SessionSub

__all__ = ["Journal", "SessionStore"]

log = logging.getLogger("mqkit.mqtt")


class SessionStore:
    """The gateway's diskcache, with every failed write counted and logged (thread-safe)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        """The ``diskcache.Cache``."""
        self.failures = 0
        """Writes that failed since the server started."""
        self.last_failure = ""
        """The text of the last failed write."""
        self._lock = threading.Lock()

    def put(self, key: Hashable, value: str) -> None:
        """Write ``key`` (a failure is counted and logged, never raised)."""
        try:
            self.cache.set(key, value)
        except Exception as exc:
            self.failed(f"cannot store {key!r}: {_why(exc)}")

    def delete(self, *keys: Hashable) -> None:
        """Delete ``keys``, in one store transaction (a failure is counted and logged)."""
        cache = self.cache
        try:
            if len(keys) == 1:
                cache.delete(keys[0])
            else:
                with cache.transact():
                    for key in keys:
                        cache.delete(key)
        except Exception as exc:
            self.failed(f"cannot delete {keys[0]!r}: {_why(exc)}")

    def failed(self, text: str) -> None:
        """Count and log a failed write."""
        with self._lock:
            self.failures += 1
            new = text != self.last_failure
            self.last_failure = text
        if new:  # once per distinct failure, not once per message
            log.error("mqtt: %s", text)


def _why(exc: BaseException) -> str:
    """The text of a failed store call: the SQLite error behind a ``diskcache.Timeout``."""
    cause = exc.__context__
    if not str(exc) and isinstance(cause, sqlite3.Error):
        return str(cause)
    return str(exc) or repr(exc)


class Journal:
    """The stored queue of one subscription of a session, and the filter that fills it.

    It is the broker subscription's ``SubOptions.filter``: it runs in the publishing thread
    before the message enters the subscription's buffer, and writes a QoS 1/2 message of a
    persistent session to the store (``("q", client_id, seq)``) before the publish returns.
    The session calls :meth:`flying` when it sends the message and :meth:`forget` when the
    message is done; the gateway's ``mqkit_drop`` calls :meth:`forget` for a message the
    subscription dropped. Messages are known by object identity (each publish stamps its own).
    """

    __slots__ = ("closed", "entries", "flights", "session", "ssub", "store")

    def __init__(self, store: SessionStore, session: Session) -> None:
        self.store = store
        self.session = session
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
        if (
            ssub is not None
            and ssub.qos
            and self.session.expiry
            and not self.closed
            and message.meta.get(K_QOS) != "0"
        ):
            self.put(message)
        return True

    def put(self, message: Message) -> None:
        """Store ``message`` for the session (once: a message already stored is left alone)."""
        entries = self.entries
        ident = id(message)
        if ident in entries:
            return
        session = self.session
        ssub = self.ssub
        assert ssub is not None
        try:
            value = to_json({"f": ssub.topic_filter, "m": message_to_dict(message)})
        except Exception as exc:
            self.store.failed(f"cannot store message {message.id!r}: {exc}")
            return
        seq = next(session.seqs)
        entries[ident] = (message, seq)
        self.store.put(("q", session.client_id, seq), value)

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
        self.store.put(("i", self.session.client_id, seq), to_json(state))

    def forget(self, message: Message) -> None:
        """``message`` is done for the session: delete it from the store.

        While the server shuts down nothing is deleted: what is stored is for the next run.
        """
        entry = self.entries.pop(id(message), None)
        if entry is None or self.session.server.closing:
            return
        self._delete((entry[1],))

    def close(self, keep: set[int]) -> None:
        """The subscription is gone: delete what it stored, except ``keep`` (``id``s in flight)."""
        self.closed = True
        if self.session.server.closing:
            return
        entries = self.entries
        gone = [ident for ident in list(entries) if ident not in keep]
        seqs = [entry[1] for entry in (entries.pop(ident, None) for ident in gone) if entry]
        if seqs:
            self._delete(seqs)

    def _delete(self, seqs: Iterable[int]) -> None:
        client_id = self.session.client_id
        keys: list[Hashable] = []
        for seq in seqs:
            keys.append(("q", client_id, seq))
            if seq in self.flights:
                self.flights.discard(seq)
                keys.append(("i", client_id, seq))
        self.store.delete(*keys)
