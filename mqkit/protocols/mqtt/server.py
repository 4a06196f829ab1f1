"""The MQTT server: an asyncio listener, one protocol object per connection, the session table.

Everything here runs on the gateway's own event loop (see :mod:`.plugin`). A connection parses
packets as they arrive (:class:`~.codec.PacketReader`) and handles each at once; work that may
block - authentication (key derivation, plugin hooks) and a publish that meets a
``BLOCK_WITH_TIMEOUT`` subscriber - goes to a small thread pool while that one connection stops
reading, so no client and no in-process publisher ever waits for another client.

Errors follow the specification: a malformed packet or a protocol error closes that connection
only, after a DISCONNECT with the reason code for MQTT 5 clients (a CONNACK with one, when it
is the CONNECT that is wrong); MQTT 3.1.1 clients are simply disconnected. A connection the
server ends is closed politely (:meth:`Connection.close_politely`): write side shut, input
drained for a bounded time, so that the client reads the last packet instead of a reset.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs

from mqkit.core.errors import InvalidTopicError, LimitExceededError, MQError
from mqkit.core.message import Message
from mqkit.core.subscription import Backpressure, SubOptions
from mqkit.plugins.persistence.serializer import message_from_dict, message_to_dict, to_json
from mqkit.protocols.mqtt import codec
from mqkit.protocols.mqtt.codec import (
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    MalformedPacket,
    PacketReader,
    PacketTooLarge,
    Properties,
    PubAck,
    Publish,
    PubRec,
    Reason,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)
from mqkit.protocols.mqtt.mapping import Outgoing, message_from_publish
from mqkit.protocols.mqtt.session import NEVER, Feed, InFlight, Session, SessionSub, SharedGroup
from mqkit.protocols.mqtt.store import FeedJournals, GroupJournal, Journal, SessionStore
from mqkit.protocols.mqtt.topics import compile_filter, filter_is_valid, parse_shared

if TYPE_CHECKING:
    from mqkit.core.broker import Broker

__all__ = ["Connection", "Server"]

log = logging.getLogger("mqkit.mqtt")

KEY_PREFIX: Final = "mqtt:"
"""Broker subscription keys of MQTT filters: ``mqtt:<filter>``."""
_HIGH_WATER: Final = 256 * 1024
_READ_PAUSE: Final = 1024 * 1024
_OUTGOING_CACHE: Final = 2048
_DRAIN_SECONDS: Final = 1.0
"""After the server ends a connection: how long it reads and discards what the client sends."""
_DRAIN_BYTES: Final = 4 * 1024 * 1024
"""... and how many bytes at most (beyond that, the close goes ahead: a reset is then fair)."""

_NEW, _AUTHENTICATING, _CONNECTED, _CLOSED = range(4)


class Server:
    """The MQTT server of one broker (loop-thread only, except where noted)."""

    def __init__(self, broker: Broker, store: Any = None) -> None:
        cfg = broker.config
        self.broker = broker
        self.hooks = broker.hooks
        self.session_store: SessionStore | None = store
        """Persistent sessions, written as they change (see :mod:`.store`), or None."""
        self.store = store.cache if store is not None else None
        """The session store's ``diskcache.Cache`` (for tools and tests), or None."""
        self.max_packet_size = cfg.mqtt_max_packet_size
        self.receive_maximum = cfg.mqtt_max_inflight
        self.topic_alias_maximum = cfg.mqtt_topic_alias_maximum
        self.max_keep_alive = cfg.mqtt_max_keep_alive
        self.max_connections = cfg.mqtt_max_connections
        self.connect_timeout = cfg.mqtt_connect_timeout
        self.sub_options = SubOptions(
            buffer_size=cfg.mqtt_max_queued_messages, policy=Backpressure(cfg.mqtt_backpressure)
        )
        self.acks = broker.has_feature("ack")
        self.sessions: dict[str, Session] = {}
        self.connections: set[Connection] = set()
        self.draining: set[Connection] = set()
        """Connections the server ended that still read their input (``close_politely``)."""
        self.feeds: dict[str, Feed] = {}
        """One per topic filter that sessions subscribe to (not ``$share/...``), by key."""
        self.groups: dict[str, SharedGroup] = {}
        self.retained: dict[str, Message] = {}
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mqkit-mqtt")
        self.closing = False
        self._servers: list[asyncio.base_events.Server] = []
        self._matchers: dict[str, Callable[[str], bool]] = {}
        self._outgoing: dict[int, tuple[Message, Outgoing]] = {}
        self._unsendable_logged: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.unclaimed: set[str] = set()
        """Client ids of restored sessions stored without an owner (by an older version)."""
        self._group_seqs: dict[str, int] = {}  # while loading: the next seq of a stored group

    # -- lifecycle -------------------------------------------------------------------------------

    async def listen(
        self, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        """Start a listener; return its bound address."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Connection(self), host, port, ssl=tls, reuse_address=True, backlog=1024
        )
        self._servers.append(server)
        sockname = server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def shutdown(self, publish_wills: bool) -> None:
        """Stop listening, disconnect every client (v5: 0x8B), then stop every session."""
        self.closing = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.shut_down(publish_wills)
        for server in self._servers:
            await server.wait_closed()
        draining = [c.drained for c in self.draining if c.drained is not None]
        if draining:  # each is bounded by its own timer; this wait only backs them up
            await asyncio.wait(draining, timeout=_DRAIN_SECONDS * 2)
        if self.store is not None:
            self.save_sessions()
        for session in list(self.sessions.values()):
            session.end()
        for feed in list(self.feeds.values()):
            if feed.task is not None:
                feed.task.cancel()
            feed.sub.cancel()
        self.feeds.clear()
        for group in list(self.groups.values()):
            if group.task is not None:
                group.task.cancel()
            group.sub.cancel()
        self.groups.clear()
        self.sessions.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.executor.shutdown(wait=True, cancel_futures=True)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the server waits for at shutdown."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def now(self) -> datetime:
        """The broker's clock."""
        return self.broker.clock.now()

    # -- publishing into the broker --------------------------------------------------------------

    def outgoing(self, message: Message) -> Outgoing:
        """The wire form of ``message``, computed once per message (a small cache)."""
        key = id(message)
        found = self._outgoing.get(key)
        if found is not None and found[0] is message:
            return found[1]
        out = Outgoing(message)
        if len(self._outgoing) >= _OUTGOING_CACHE:
            self._outgoing.clear()
        self._outgoing[key] = (message, out)
        return out

    def unsendable(self, message: Message, why: str) -> None:
        """``message`` cannot be sent to one client: count the drop, log it once per topic.

        Counted through ``mqkit_drop`` (reason ``unsendable``, no subscription: the gateway had
        taken it from its subscription), so the metrics count it as dropped.
        """
        hooks = self.hooks
        if hooks.drop_on:
            hooks.drop(self.broker, None, message, "unsendable")
        key = (message.topic, why)
        logged = self._unsendable_logged
        if key not in logged:
            if len(logged) >= 1024:
                logged.clear()
            logged.add(key)
            log.warning(
                "mqtt: dropped a message on %r for a client that cannot be sent it: %s "
                "(logged once per topic and reason; each drop is counted as dropped)",
                message.topic,
                why,
            )

    def publish_status(self, topic: str, message: Message) -> int:
        """Publish in-process now; return a reason code (0 when it was accepted)."""
        try:
            self.broker.publish(topic, message)
        except LimitExceededError:
            return Reason.QUOTA_EXCEEDED
        except InvalidTopicError:
            return Reason.TOPIC_NAME_INVALID
        except MQError as exc:
            log.warning("mqtt: publish to %r refused: %s", topic, exc)
            return Reason.UNSPECIFIED_ERROR
        return 0

    def may_block(self, topic: str) -> bool:
        """Whether a publish to ``topic`` could block (a BLOCK_WITH_TIMEOUT subscriber)."""
        try:
            subs = self.broker.routes(topic)
        except MQError:
            return False
        block = Backpressure.BLOCK_WITH_TIMEOUT
        return any(s.options.policy is block for s in subs)

    def set_retained(self, topic: str, message: Message) -> None:
        """Store (or, with an empty payload, clear) the retained message of ``topic``."""
        if message.data:
            self.retained[topic] = message
        else:
            self.retained.pop(topic, None)
        if self.session_store is not None:
            key = ("r", topic)
            try:
                if message.data:
                    self.session_store.set(key, to_json(message_to_dict(message)))
                else:
                    self.session_store.remove(key)
            except Exception as exc:  # the gateway goes on; the loss is logged
                log.error("mqtt: cannot store retained message of %r: %s", topic, exc)

    def retained_for(self, matches: Callable[[str], bool]) -> list[Message]:
        """The retained messages whose topics ``matches`` accepts (expired ones dropped)."""
        now = self.now()
        found: list[Message] = []
        for topic, message in list(self.retained.items()):
            if not matches(topic):
                continue
            expires = getattr(message, "expires_at", None)
            if expires is not None and expires <= now:
                del self.retained[topic]
                continue
            found.append(message)
        return found

    # -- subscriptions ---------------------------------------------------------------------------

    def matcher(self, topic_filter: str) -> Callable[[str], bool]:
        """The compiled matcher of a (valid, non-shared) filter, cached."""
        found = self._matchers.get(topic_filter)
        if found is None:
            if len(self._matchers) > 10_000:
                self._matchers.clear()
            found = self._matchers[topic_filter] = compile_filter(topic_filter)
        return found

    def make_sub(self, session: Session, topic_filter: str) -> SessionSub:
        """A subscription entry for one filter of ``session``, on the filter's feed or group.

        Makes the broker subscription when the filter has none yet (this may raise
        :class:`~mqkit.MQError`: a limit); the entry joins it in :meth:`join_sub`.
        """
        shared = parse_shared(topic_filter)
        inner = shared.topic_filter if shared is not None else topic_filter
        matches = self.matcher(inner)
        key = KEY_PREFIX + topic_filter
        if shared is None:
            feed = self.feeds.get(key)
            if feed is None:
                options = self.sub_options
                if self.session_store is not None:
                    options = attrs.evolve(options, filter=FeedJournals())
                sub = self.broker.subscribe_matching(key, matches, options)
                feed = self.feeds[key] = Feed(key, sub, options.buffer_size, self.acks)
                feed.task = asyncio.get_running_loop().create_task(feed.pump(self._feed_closed))
            ssub = SessionSub(session, topic_filter, inner, None, matches, feed.sub)
            ssub.feed = feed
            if self.session_store is not None:
                journal = Journal(self.session_store, self, session)
                ssub.journal = journal
                journal.ssub = ssub
            return ssub
        group = self.groups.get(key)
        if group is None:
            group_journal = None
            options = self.sub_options
            if self.session_store is not None:
                group_journal = GroupJournal(
                    self.session_store, self, key, self._group_seqs.get(key, 1)
                )
                options = attrs.evolve(options, filter=group_journal)
            sub = self.broker.subscribe_matching(key, matches, options)
            group = self.groups[key] = SharedGroup(key, sub)
            group.journal = group_journal
            group.task = asyncio.get_running_loop().create_task(group.pump(self._group_closed))
        return SessionSub(session, topic_filter, inner, group, matches, group.sub)

    def join_sub(self, session: Session, ssub: SessionSub) -> None:
        """``ssub`` (of :meth:`make_sub`) starts receiving: it joins its feed or group."""
        feed = ssub.feed
        if feed is not None:
            feed.add(ssub)
            journals = feed.sub.options.filter
            if isinstance(journals, FeedJournals) and ssub.journal is not None:
                journals.journals = (*journals.journals, ssub.journal)
        elif ssub.group is not None:
            ssub.group.add(session, ssub)

    def release_sub(self, session: Session, ssub: SessionSub) -> None:
        """A session dropped ``ssub``: leave its feed or group (the last one cancels it)."""
        group = ssub.group
        if group is None:
            feed = ssub.feed
            if feed is None:
                return
            feed.remove(ssub)
            journals = feed.sub.options.filter
            if isinstance(journals, FeedJournals):
                journals.journals = tuple(j for j in journals.journals if j is not ssub.journal)
            if not feed.members and self.feeds.get(feed.key) is feed:
                del self.feeds[feed.key]
                if feed.task is not None:
                    feed.task.cancel()
                feed.sub.cancel()
            return
        group.remove(session)
        if not group.members and self.groups.get(group.key) is group:
            del self.groups[group.key]
            if group.task is not None:
                group.task.cancel()
            group.sub.cancel()
            if group.journal is not None:  # the group is gone, and what it held
                group.journal.close(set())

    def _group_closed(self, group: SharedGroup) -> None:
        """The broker closed a group's subscription (``CLOSE_SUBSCRIBER``): drop it."""
        for session, ssub in list(group.members.items()):
            if session.subs.get(ssub.topic_filter) is ssub:
                session.remove_sub(ssub.topic_filter)
                if not self.closing:
                    self.write_session(session)

    def _feed_closed(self, feed: Feed) -> None:
        """The broker closed a feed's subscription: every member loses its subscription.

        (``CLOSE_SUBSCRIBER``: the feed's buffer overflowed while no member could take a
        message, so every member's queue was full.)
        """
        for ssub in list(feed.members):
            session = ssub.session
            if session.subs.get(ssub.topic_filter) is ssub and not session.ended:
                self.subscription_lost(session, ssub)

    def broker_closed_sub(self, sub_id: int) -> None:
        """The broker closed subscription ``sub_id`` (loop thread; via ``mqkit_unsubscribe``)."""
        if self.closing:
            return
        for feed in list(self.feeds.values()):
            if feed.sub.id == sub_id:
                self._feed_closed(feed)
                return
        for session in list(self.sessions.values()):
            for ssub in list(session.subs.values()):
                if ssub.sub.id == sub_id:
                    if ssub.group is not None:
                        self._group_closed(ssub.group)
                    else:
                        self.subscription_lost(session, ssub)
                    return

    def subscription_lost(self, session: Session, ssub: SessionSub) -> None:
        """The broker closed a subscription (``CLOSE_SUBSCRIBER``): the client is too slow."""
        session.remove_sub(ssub.topic_filter)
        if self.closing:
            return
        self.write_session(session)
        conn = session.conn
        if conn is not None:
            conn.fail(Reason.QUOTA_EXCEEDED, "subscriber too slow: its subscription was closed")

    # -- sessions --------------------------------------------------------------------------------

    def end_session(self, session: Session) -> None:
        """End a session now (its pending will, if any, is published first)."""
        if session.will_publish is not None:
            publish, session.will_publish = session.will_publish, None
            publish()
        session.end()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        if self.session_store is not None and session.stored:
            session.stored = False
            client_id = session.client_id
            pids = [("p", client_id, pid) for pid in session.incoming_qos2]
            self.session_store.delete(("s", client_id), *pids)

    def schedule_expiry(self, session: Session) -> None:
        """A persistent session went offline: end it when its expiry interval runs out."""
        if session.expiry == 0:
            self.end_session(session)
            return
        session.disconnected_at = self.now().timestamp()
        self.write_session(session)
        if session.expiry != NEVER:
            loop = asyncio.get_running_loop()
            session.expiry_handle = loop.call_later(session.expiry, lambda: self._expire(session))

    def _expire(self, session: Session) -> None:
        if session.conn is None and not session.ended:
            self.end_session(session)

    # -- persistence -----------------------------------------------------------------------------

    def write_session(self, session: Session) -> None:
        """Write the record of a persistent session (delete it once the session is not one)."""
        store = self.session_store
        if store is None:
            return
        if session.ended:  # end_session deleted it (or, at shutdown, it stays as saved)
            return
        key = ("s", session.client_id)
        if session.expiry == 0:
            if session.stored:
                session.stored = False
                store.delete(key)
            return
        record = {
            "client_id": session.client_id,
            "owner": session.owner,
            "expiry": session.expiry,
            "disconnected_at": session.disconnected_at,
            "subs": [
                [s.topic_filter, s.qos, s.no_local, s.retain_as_published, s.identifier]
                for s in session.subs.values()
            ],
        }
        store.put(key, to_json(record))
        session.stored = True

    def write_incoming(self, session: Session, packet_id: int, held: bool) -> None:
        """Write (``held``) or delete a QoS 2 publication's packet id (PUBREC to PUBREL).

        Kept for a persistent session's client, so a PUBLISH it resends after a crash is
        acknowledged without being published again.
        """
        store = self.session_store
        if store is not None and session.expiry:
            key = ("p", session.client_id, packet_id)
            if held:
                store.put(key, "")
            else:
                store.delete(key)

    def save_sessions(self) -> None:
        """At a clean close: every persistent session's record (offline from now on).

        The messages queued and in flight for sessions and shared subscriptions are in the
        store already.
        """
        now = self.now().timestamp()
        for session in self.sessions.values():
            if session.disconnected_at is None:  # connected until now
                session.disconnected_at = now
            self.write_session(session)

    def load(self) -> None:
        """Restore retained messages and persistent sessions saved by a previous run."""
        store = self.session_store
        assert store is not None
        now = self.now().timestamp()
        groups: dict[str, list[Message]] = {}
        records: list[dict[str, Any]] = []
        # client id -> seq -> stored text, of queued messages ("q") and in-flight states ("i");
        # client id -> packet id -> "", of QoS 2 publications received from the client ("p");
        # shared subscription key -> seq -> stored text, of its messages ("gq")
        stored: dict[str, dict[str, dict[int, Any]]] = {"q": {}, "i": {}, "p": {}, "gq": {}}
        keys: list[Any] = list(store.keys())
        for key in keys:
            try:
                if len(key) == 3 and key[0] in stored:
                    kind, client_id, seq = key
                    stored[kind].setdefault(client_id, {})[seq] = store.get(key)
                    continue
                if len(key) != 2:
                    continue
                kind, name = key
                raw = store.get(key)
                if kind == "r":
                    self.retained[name] = message_from_dict(json.loads(raw))
                elif kind == "g":
                    groups[name] = [message_from_dict(d) for d in json.loads(raw)]
                    store.remove(key)
                elif kind == "s":
                    records.append(json.loads(raw))
            except Exception as exc:
                log.error("mqtt: skipped unreadable stored %r: %s", key, exc)
        self._group_seqs = {key: max(found) + 1 for key, found in stored["gq"].items() if found}
        for record in records:
            try:
                client_id = str(record["client_id"])
                self._load_session(
                    record,
                    now,
                    stored["q"].pop(client_id, {}),
                    stored["i"].pop(client_id, {}),
                    stored["p"].pop(client_id, {}),
                )
            except Exception as exc:
                log.error("mqtt: skipped unreadable stored session %r: %s", record, exc)
        for key, found in list(stored["gq"].items()):
            group = self.groups.get(key)
            if group is not None and group.journal is not None:
                del stored["gq"][key]
                self._load_group(group, group.journal, found)
        self._group_seqs = {}
        # What a crash left of sessions that ended: messages written as their session ended.
        leftovers = [(k, c, seq) for k, found in stored.items() for c in found for seq in found[c]]
        if leftovers and self.session_store is not None:
            self.session_store.delete(*leftovers)
        for key, messages in groups.items():  # as earlier versions saved them at close
            group = self.groups.get(key)
            if group is not None:
                if group.journal is not None:
                    for message in messages:
                        group.journal.put(message)
                for message in reversed(messages):
                    group.sub.redeliver(message)

    def _load_group(self, group: SharedGroup, journal: GroupJournal, found: dict[int, Any]) -> None:
        """Put a shared subscription's stored messages back in its buffer, in order."""
        messages: list[Message] = []
        gone: list[tuple[str, str, int]] = []
        for seq in sorted(found):
            try:
                message = message_from_dict(json.loads(found[seq]))
            except Exception as exc:
                log.error("mqtt: skipped unreadable message %d of %r: %s", seq, group.key, exc)
                gone.append(("gq", group.key, seq))
                continue
            journal.adopt(message, seq, flying=False)
            messages.append(message)
        for message in reversed(messages):
            group.sub.redeliver(message)
        if gone and self.session_store is not None:
            self.session_store.delete(*gone)

    def _load_session(
        self,
        record: dict[str, Any],
        now: float,
        queued: dict[int, Any],
        flights: dict[int, Any],
        received: dict[int, Any],
    ) -> None:
        """Restore one session: its subscriptions, then its messages in the order queued."""
        store = self.session_store
        assert store is not None
        client_id = str(record["client_id"])
        expiry = int(record["expiry"])
        # When it went offline; one connected when the broker died counts from the restart.
        since = record.get("disconnected_at", record.get("saved_at"))
        since = now if since is None else float(since)
        if expiry != NEVER and now - since >= expiry:
            store.delete(
                ("s", client_id),
                *[("q", client_id, seq) for seq in queued],
                *[("i", client_id, seq) for seq in flights],
                *[("p", client_id, pid) for pid in received],
            )
            return
        session = Session(self, client_id)
        if "owner" in record:
            owner = record["owner"]
            session.owner = None if owner is None else str(owner)
        else:  # stored without an owner (by an older version): the first to log in claims it
            self.unclaimed.add(client_id)
        session.expiry = expiry
        session.version = 5
        session.disconnected_at = since
        session.stored = True
        session.incoming_qos2.update(received)
        # Numbered on from the stored ones before any subscription exists to take a message.
        session.seqs = itertools.count(max([0, *queued, *flights]) + 1)
        self.sessions[session.client_id] = session
        for topic_filter, qos, no_local, rap, identifier in record["subs"]:
            ssub = self.make_sub(session, topic_filter)
            ssub.qos, ssub.no_local, ssub.retain_as_published = qos, no_local, rap
            ssub.identifier = identifier
            session.add_sub(ssub)
        gone: list[tuple[str, str, int]] = []
        for seq in sorted(queued):
            flight = flights.pop(seq, None)
            target: SessionSub | None = None
            try:
                data = json.loads(queued[seq])
                target = session.subs.get(data["f"])
                message = message_from_dict(data["m"])
                state = json.loads(flight) if flight is not None else None
            except Exception as exc:
                log.error("mqtt: skipped unreadable message %d of %r: %s", seq, client_id, exc)
                target = None
            if target is None or target.journal is None:  # unreadable, or its subscription gone
                gone += [("q", client_id, seq), ("i", client_id, seq)]
                continue
            target.journal.adopt(message, seq, flying=flight is not None)
            if state is not None:
                packet_id, qos, retain, ids, released = state
                if packet_id not in session.inflight:
                    inf = InFlight(
                        packet_id, message, self.outgoing(message), qos, retain, tuple(ids), target
                    )
                    inf.released = bool(released)
                    session.inflight[packet_id] = inf
                    continue
            session.offer(message, target)
        gone += [("i", client_id, seq) for seq in flights]  # in-flight states without a message
        if gone:
            store.delete(*gone)
        for data in record.get("queued", ()):  # earlier versions wrote the messages at close
            message = message_from_dict(data)
            target = next(
                (s for s in session.subs.values() if s.group is None and s.matches(message.topic)),
                None,
            )
            if target is not None:
                if target.journal is not None:
                    target.journal.put(message)
                session.offer(message, target)
        if "disconnected_at" not in record:
            self.write_session(session)  # in this version's format
        if expiry != NEVER:
            left = expiry - (now - since)
            loop = asyncio.get_running_loop()
            session.expiry_handle = loop.call_later(left, lambda: self._expire(session))

    # -- authorisation ---------------------------------------------------------------------------

    def authorize(self, conn: Connection, action: str, topic: str) -> bool:
        """Ask ``mqkit_authorize`` (answers for publish are cached per connection)."""
        cache = conn.acl_cache
        key = (action, topic)
        found = cache.get(key)
        if found is None:
            found = self.hooks.authorize(
                self.broker, "mqtt", conn.client_id, conn.username, action, topic
            )
            if len(cache) > 1024:
                cache.clear()
            cache[key] = found
        return found

    def may_read(self, conn: Connection, topic: str) -> bool:
        """Whether ``conn``'s client may receive a message on ``topic`` (checked per delivery).

        Asks ``mqkit_authorize`` ``subscribe`` with the topic name; answers are cached per
        connection and topic until :meth:`acl_changed`.
        """
        cache = conn.read_cache
        found = cache.get(topic)
        if found is None:
            found = self.hooks.authorize(
                self.broker, "mqtt", conn.client_id, conn.username, "subscribe", topic
            )
            if len(cache) > 1024:
                cache.clear()
            cache[topic] = found
        return found

    def acl_changed(self) -> None:
        """The ACL was reloaded: forget every cached decision (loop thread)."""
        for conn in self.connections:
            conn.acl_cache.clear()
            conn.read_cache.clear()


class Connection(asyncio.Protocol):
    """One client connection: framing, the packet handlers, keep-alive and will."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.broker = server.broker
        self.transport: asyncio.Transport | None = None
        self.reader = PacketReader(server.max_packet_size)
        self.version = 0
        self.state = _NEW
        self.session: Session | None = None
        self.client_id = ""
        self.username: str | None = None
        self.will: Will | None = None
        self.keep_alive = 0
        self.last_rx = 0.0
        self.aliases: dict[int, str] = {}
        self.acl_cache: dict[tuple[str, str], bool] = {}
        self.read_cache: dict[str, bool] = {}
        self.auth_state: dict[str, Any] = {}
        self.auth_method = ""
        self.over_limit = False
        self.taken_over = False
        self._busy = False
        self._reauth = False
        self._reading_paused = False
        self._connect: Connect | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._base_meta: tuple[str, ...] = ()
        self._drain: asyncio.TimerHandle | None = None
        self._drain_left = 0
        self.drained: asyncio.Future[None] | None = None
        """Set while closing politely (:meth:`close_politely`); done once the connection is lost."""

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept: count it against the limit, start the CONNECT timeout."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        server = self.server
        if server.max_connections and len(server.connections) >= server.max_connections:
            self.over_limit = True
        server.connections.add(self)
        loop = asyncio.get_running_loop()
        self.last_rx = loop.time()
        self._timer = loop.call_later(server.connect_timeout, self._connect_timed_out)

    def data_received(self, data: bytes) -> None:
        """Frame and handle what arrived."""
        if self._drain is not None:  # closing politely: what the client still sends is dropped
            self._drain_left -= len(data)
            if self._drain_left < 0:
                self.close()
            return
        self.last_rx = asyncio.get_running_loop().time()
        self.reader.feed(data)
        if not self._busy:
            self._process()
        elif self.reader.buffered() > _READ_PAUSE and not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        """The client half-closed: close our side too."""
        return None

    def pause_writing(self) -> None:
        """The client reads slowly: stop feeding it until the buffer drains."""
        if self.session is not None and self.session.conn is self:
            self.session.set_writable(False)

    def resume_writing(self) -> None:
        """The buffer drained: go on."""
        if self.session is not None and self.session.conn is self:
            self.session.set_writable(True)

    def connection_lost(self, exc: Exception | None) -> None:
        """Clean up: will, session detach or end."""
        self.state = _CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._drain is not None:
            self._drain.cancel()
            self.server.draining.discard(self)
            if self.drained is not None and not self.drained.done():
                self.drained.set_result(None)
        server = self.server
        server.connections.discard(self)
        session = self.session
        self.session = None
        if session is None or session.conn is not self:
            return
        session.detach()
        self._handle_will(session)
        if server.closing:
            return
        if session.expiry == 0:
            server.end_session(session)
        else:
            server.schedule_expiry(session)

    # -- writing and closing ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes (dropped once closing)."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and self._drain is None:
            transport.write(data)

    def close(self) -> None:
        """Close after what is buffered is sent (at once, if the client stopped reading)."""
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size() > _HIGH_WATER:
                transport.abort()
            else:
                transport.close()

    def close_politely(self) -> None:
        """End the connection from the server's side so that the client reads the last packet.

        Closing a socket with unread input makes the kernel send a TCP reset, and a client that
        pipelined packets may then lose the DISCONNECT (or CONNACK) before it reads it. So:
        send what is buffered and shut the write side (the client reads the packet, then the
        end of the stream), read and discard what the client still sends until it closes too -
        for at most ``_DRAIN_SECONDS`` and ``_DRAIN_BYTES`` - then close.
        """
        transport = self.transport
        if transport is None or transport.is_closing() or self._drain is not None:
            return
        if transport.get_write_buffer_size() > _HIGH_WATER:
            transport.abort()  # the client does not read: waiting for it would be pointless
            return
        # For MQTT the client is gone now: its session (will, expiry) goes on at once, not when
        # the drain ends (connection_lost runs again then, with nothing left to do).
        self.connection_lost(None)
        if transport.can_write_eof():  # not over TLS: there the client's own close ends it
            try:
                transport.write_eof()
            except OSError:  # the client is gone already (a reset): nothing to wait for
                transport.abort()
                return
        loop = asyncio.get_running_loop()
        self._drain_left = _DRAIN_BYTES
        self._drain = loop.call_later(_DRAIN_SECONDS, self.close)
        self.drained = loop.create_future()
        self.server.draining.add(self)
        self.reader = PacketReader(self.server.max_packet_size)  # unparsed input is dropped
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def fail(self, reason: int, why: str) -> None:
        """A protocol violation (or a server decision): DISCONNECT (v5) and close; will follows."""
        log.info("mqtt: closing %r: %s (0x%02x)", self.client_id or "?", why, reason)
        if self.state == _CONNECTED and self.version >= 5:
            self.write(Disconnect(reason_code=reason).encode(5))
        self.state = _CLOSED
        self.close_politely()

    def shut_down(self, publish_wills: bool) -> None:
        """The server stops: DISCONNECT 0x8B (v5), will as on any unexpected close."""
        if self.state == _CONNECTED and self.version >= 5:
            self.write(Disconnect(reason_code=Reason.SERVER_SHUTTING_DOWN).encode(5))
        session = self.session
        if session is not None and session.conn is self:
            self.session = None
            session.detach()
            if publish_wills and self.will is not None:
                will, self.will = self.will, None
                message = self._will_message(will)
                if message is not None:  # now: the server is about to stop its tasks
                    self.server.publish_status(will.topic, message)
        self.state = _CLOSED
        self.close_politely()

    def _handle_will(self, session: Session) -> None:
        will = self.will
        self.will = None
        if will is None or self.server.closing:
            return
        delay = will.properties.will_delay_interval or 0
        if delay and session.expiry:
            loop = asyncio.get_running_loop()

            def publish() -> None:
                session.will_publish = None
                self.server.spawn(self._publish_will(will))

            session.will_publish = publish
            if session.expiry == NEVER or delay < session.expiry:
                session.will_handle = loop.call_later(delay, publish)
            return
        self.server.spawn(self._publish_will(will))

    def _will_message(self, will: Will) -> Message | None:
        """The will as a message (stored as retained if it says so), or None if not allowed."""
        server = self.server
        if not server.authorize(self, "publish", will.topic):
            return None
        message = message_from_publish(
            will.topic,
            will.payload,
            will.qos,
            will.retain,
            self.client_id,
            will.properties,
            server.now(),
        )
        if will.retain:
            server.set_retained(will.topic, message)
        return message

    async def _publish_will(self, will: Will) -> None:
        server = self.server
        message = self._will_message(will)
        if message is None:
            return
        if server.may_block(will.topic):
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(server.executor, server.publish_status, will.topic, message)
        else:
            server.publish_status(will.topic, message)

    def _connect_timed_out(self) -> None:
        self._timer = None
        if self.state in (_NEW, _AUTHENTICATING):
            self.fail(Reason.MAXIMUM_CONNECT_TIME, "no CONNECT in time")

    def _keep_alive_check(self) -> None:
        self._timer = None
        if self.state != _CONNECTED:
            return
        loop = asyncio.get_running_loop()
        limit = self.keep_alive * 1.5
        idle = loop.time() - self.last_rx
        if idle >= limit:
            self.fail(Reason.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
        else:
            self._timer = loop.call_later(limit - idle, self._keep_alive_check)

    # -- the packet loop -------------------------------------------------------------------------

    def _process(self) -> None:
        reader = self.reader
        while not self._busy and self.state != _CLOSED:
            try:
                frame = reader.next_frame()
                if frame is None:
                    return
                first, body = frame
                if self.state == _NEW:
                    awaitable = self._first_packet(first, body)
                else:
                    awaitable = self._dispatch(codec.decode(first, body, self.version))
            except PacketTooLarge as exc:
                if self.state == _NEW:
                    level = codec.connect_level(reader.peek_body())
                    self._refuse_connect(Reason.PACKET_TOO_LARGE, level or 4, str(exc))
                else:
                    self.fail(exc.reason_code, str(exc))
                return
            except MalformedPacket as exc:
                self.fail(exc.reason_code, str(exc))
                return
            if awaitable is not None:
                self._busy = True
                self.server.spawn(self._run(awaitable))

    async def _run(self, awaitable: Coroutine[Any, Any, None]) -> None:
        try:
            await awaitable
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("mqtt: handler failed for %r", self.client_id)
            self.fail(Reason.UNSPECIFIED_ERROR, "internal error")
        self._busy = False
        if self._reading_paused and self.transport is not None and self.state != _CLOSED:
            self._reading_paused = False
            self.transport.resume_reading()
        self._process()

    def _dispatch(self, packet: codec.Packet) -> Coroutine[Any, Any, None] | None:
        if self.state == _AUTHENTICATING:
            if isinstance(packet, Auth):
                return self._on_auth(packet)
            if isinstance(packet, Disconnect):
                self.close()
                return None
            raise MalformedPacket("expected AUTH during authentication", Reason.PROTOCOL_ERROR)
        if isinstance(packet, Publish):
            return self._on_publish(packet)
        session = self.session
        assert session is not None
        if isinstance(packet, codec.PubAck):
            session.on_puback(packet.packet_id)
        elif isinstance(packet, codec.PubRec):
            if not session.on_pubrec(packet.packet_id, packet.reason_code):
                self.write(
                    codec.PubRel(
                        packet_id=packet.packet_id, reason_code=Reason.PACKET_IDENTIFIER_NOT_FOUND
                    ).encode(self.version)
                )
        elif isinstance(packet, codec.PubComp):
            session.on_pubcomp(packet.packet_id)
        elif isinstance(packet, codec.PubRel):
            known = packet.packet_id in session.incoming_qos2
            session.incoming_qos2.discard(packet.packet_id)
            if known:
                self.server.write_incoming(session, packet.packet_id, False)
            reason = 0 if known else Reason.PACKET_IDENTIFIER_NOT_FOUND
            self.write(
                codec.PubComp(packet_id=packet.packet_id, reason_code=reason).encode(self.version)
            )
        elif isinstance(packet, codec.PingReq):
            self.write(b"\xd0\x00")
        elif isinstance(packet, Subscribe):
            self._on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            self._on_unsubscribe(packet)
        elif isinstance(packet, Disconnect):
            self._on_disconnect(packet)
        elif isinstance(packet, Auth):
            return self._on_auth(packet)
        elif isinstance(packet, Connect):
            raise MalformedPacket("second CONNECT", Reason.PROTOCOL_ERROR)
        else:
            raise MalformedPacket(
                f"a client may not send packet type {packet.packet_type}", Reason.PROTOCOL_ERROR
            )
        return None

    # -- CONNECT and authentication --------------------------------------------------------------

    def _first_packet(self, first: int, body: bytes) -> Coroutine[Any, Any, None] | None:
        if first >> 4 != codec.CONNECT:
            self.state = _CLOSED
            self.close()  # not MQTT, or not a CONNECT first: close without a word
            return None
        try:
            packet = codec.decode(first, body)
        except MalformedPacket as exc:
            level = codec.connect_level(body)
            if exc.reason_code == Reason.UNSUPPORTED_PROTOCOL_VERSION:
                self._refuse_connect(exc.reason_code, level or 4, str(exc))
            elif level == 5:
                self._refuse_connect(exc.reason_code, 5, str(exc))
            else:
                self.state = _CLOSED
                self.close()
            return None
        assert isinstance(packet, Connect)
        self.version = packet.protocol_level
        self.state = _AUTHENTICATING
        return self._on_connect(packet)

    def _refuse_connect(self, reason: int, level: int, why: str) -> None:
        """Answer a CONNECT with a failure (in the format of the client's level) and close."""
        log.info("mqtt: refusing a connection: %s", why)
        if level >= 5:
            self.write(ConnAck(reason_code=reason).encode(5))
        else:
            v3 = {
                Reason.UNSUPPORTED_PROTOCOL_VERSION: Reason.V3_UNACCEPTABLE_PROTOCOL_VERSION,
                Reason.CLIENT_IDENTIFIER_NOT_VALID: Reason.V3_IDENTIFIER_REJECTED,
                Reason.BAD_USER_NAME_OR_PASSWORD: Reason.V3_BAD_USER_NAME_OR_PASSWORD,
                Reason.NOT_AUTHORIZED: Reason.V3_NOT_AUTHORIZED,
                Reason.SERVER_UNAVAILABLE: Reason.V3_SERVER_UNAVAILABLE,
                Reason.QUOTA_EXCEEDED: Reason.V3_SERVER_UNAVAILABLE,
            }.get(reason)
            if v3 is not None:
                self.write(ConnAck(reason_code=v3).encode(4))
        self.state = _CLOSED
        self.close_politely()

    async def _on_connect(self, packet: Connect) -> None:
        v5 = self.version >= 5
        client_id = packet.client_id
        self._connect = packet
        if not client_id:
            if not v5 and not packet.clean_start:
                self._refuse_connect(Reason.CLIENT_IDENTIFIER_NOT_VALID, 4, "empty client id")
                return
            client_id = f"mqkit-{uuid.uuid4().hex}"
        self.client_id = client_id
        self.username = packet.username
        if self.over_limit:
            self._refuse_connect(Reason.QUOTA_EXCEEDED, self.version, "too many connections")
            return
        method = packet.properties.authentication_method or ""
        self.auth_method = method
        await self._auth_step(packet.password, packet.properties.authentication_data)

    async def _auth_step(self, password: bytes | None, data: bytes | None) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            server.executor,
            server.hooks.authenticate,
            server.broker,
            "mqtt",
            self.client_id,
            self.username,
            password,
            self.auth_method,
            data,
            self.auth_state,
        )
        if self.state == _CLOSED:
            return
        reauth = self.state == _CONNECTED
        if isinstance(result, bytes):
            if self.version < 5 or not self.auth_method:
                result = False
            else:
                if not reauth:
                    self.state = _AUTHENTICATING
                self.write(
                    Auth(
                        reason_code=Reason.CONTINUE_AUTHENTICATION,
                        properties=Properties(
                            authentication_method=self.auth_method, authentication_data=result
                        ),
                    ).encode(5)
                )
                return
        if result is None and self.auth_method:
            reason = Reason.BAD_AUTHENTICATION_METHOD
        elif not result:
            reason = (
                Reason.BAD_USER_NAME_OR_PASSWORD
                if self.username is not None
                else Reason.NOT_AUTHORIZED
            )
        else:
            reason = 0
        if reauth:
            self._reauth = False
            if reason:
                self.fail(reason, "re-authentication failed")
            else:
                props = Properties(authentication_method=self.auth_method)
                self.write(Auth(reason_code=0, properties=props).encode(5))
            return
        if reason:
            self._refuse_connect(reason, self.version, "authentication failed")
            return
        self._accept()

    async def _on_auth(self, packet: Auth) -> None:
        method = packet.properties.authentication_method or ""
        if self.version < 5 or not self.auth_method or method != self.auth_method:
            self.fail(Reason.PROTOCOL_ERROR, "AUTH without (or with another) method")
            return
        if self.state == _CONNECTED:
            expected = Reason.CONTINUE_AUTHENTICATION if self._reauth else Reason.REAUTHENTICATE
            if packet.reason_code != expected:
                self.fail(Reason.PROTOCOL_ERROR, "unexpected AUTH")
                return
            self._reauth = True
        await self._auth_step(None, packet.properties.authentication_data)

    def _accept(self) -> None:
        packet = self._connect
        assert packet is not None
        server = self.server
        v5 = self.version >= 5
        props = packet.properties
        client_id = self.client_id
        keep_alive = packet.keep_alive
        server_keep_alive = None
        if server.max_keep_alive and (keep_alive == 0 or keep_alive > server.max_keep_alive):
            keep_alive = server.max_keep_alive
            server_keep_alive = keep_alive if v5 else None
        self.keep_alive = keep_alive
        existing = server.sessions.get(client_id)
        if existing is not None and not existing.ended and existing.owner != self.username:
            # A session belongs to its user: another one neither resumes nor takes it over.
            if client_id not in server.unclaimed:
                why = f"client id {client_id!r} is in use by another user's session"
                self._refuse_connect(Reason.NOT_AUTHORIZED, self.version, why)
                return
            existing.owner = self.username
        server.unclaimed.discard(client_id)
        # Take the session over from a connection that still holds it.
        if existing is not None and existing.conn is not None:
            old = existing.conn
            old.taken_over = True
            existing.detach()
            old.session = None
            if old.state == _CONNECTED and old.version >= 5:
                old.write(Disconnect(reason_code=Reason.SESSION_TAKEN_OVER).encode(5))
            old.state = _CLOSED
            old.close_politely()
            will = old.will
            old.will = None
            if will is not None:
                delay = will.properties.will_delay_interval or 0
                if not (delay and not packet.clean_start):
                    server.spawn(old._publish_will(will))
        session_present = False
        if existing is not None and (packet.clean_start or existing.ended):
            server.end_session(existing)
            existing = None
        if existing is not None:
            session = existing
            session_present = True
            session.will_publish = None
        else:
            session = Session(server, client_id)
            session.owner = self.username
            server.sessions[client_id] = session
        if v5:
            session.expiry = props.session_expiry_interval or 0
        else:
            session.expiry = 0 if packet.clean_start else NEVER
        session.disconnected_at = None
        server.write_session(session)  # before the CONNACK: a crash from now on keeps it
        self.will = packet.will
        self._connect = None
        ack_props = NO_PROPERTIES
        if v5:
            ack_props = Properties(
                receive_maximum=(
                    server.receive_maximum if server.receive_maximum != 65535 else None
                ),
                maximum_packet_size=server.max_packet_size,
                topic_alias_maximum=server.topic_alias_maximum or None,
                # Only an id the server assigned (libmosquitto refuses one it did not ask for).
                assigned_client_identifier=client_id if not packet.client_id else None,
                server_keep_alive=server_keep_alive,
                authentication_method=self.auth_method or None,
            )
        self.write(
            ConnAck(session_present=session_present, properties=ack_props).encode(self.version)
        )
        self.state = _CONNECTED
        self.session = session
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if keep_alive:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(keep_alive * 1.5, self._keep_alive_check)
        window = min(props.receive_maximum or 65535, 65535)
        if not v5:
            window = server.receive_maximum
        session.attach(self, window, props.maximum_packet_size or 0)

    # -- PUBLISH ---------------------------------------------------------------------------------

    def _on_publish(self, packet: Publish) -> Coroutine[Any, Any, None] | None:
        session = self.session
        assert session is not None
        topic = packet.topic
        props = packet.properties
        version = self.version
        if props.topic_alias is not None:
            alias = props.topic_alias
            if alias == 0 or alias > self.server.topic_alias_maximum:
                raise MalformedPacket(
                    f"topic alias {alias} out of range", Reason.TOPIC_ALIAS_INVALID
                )
            if topic:
                self.aliases[alias] = topic
            else:
                found = self.aliases.get(alias)
                if found is None:
                    raise MalformedPacket(f"unknown topic alias {alias}", Reason.PROTOCOL_ERROR)
                topic = found
            props = attrs.evolve(props, topic_alias=None)
        if not topic:
            raise MalformedPacket("PUBLISH without a topic", Reason.PROTOCOL_ERROR)
        if "+" in topic or "#" in topic:
            raise MalformedPacket(f"wildcard in topic name {topic!r}", Reason.TOPIC_NAME_INVALID)
        qos = packet.qos
        pid = packet.packet_id
        if qos == 2 and pid in session.incoming_qos2:
            self.write(PubRec(packet_id=pid).encode(version))  # a resend: deliver only once
            return None
        if qos == 2 and len(session.incoming_qos2) >= self.server.receive_maximum:
            raise MalformedPacket(
                "too many QoS 2 messages in flight", Reason.RECEIVE_MAXIMUM_EXCEEDED
            )
        server = self.server
        if not server.authorize(self, "publish", topic):
            self._ack_publish(qos, pid, Reason.NOT_AUTHORIZED)
            return None
        if topic != topic.strip() or len(topic.encode()) > 1024:
            self._ack_publish(qos, pid, Reason.TOPIC_NAME_INVALID)
            return None
        message = message_from_publish(
            topic, packet.payload, qos, packet.retain, self.client_id, props, server.now()
        )
        if packet.retain:
            server.set_retained(topic, message)
        if server.may_block(topic):
            return self._publish_blocking(topic, message, qos, pid)
        self._ack_publish(qos, pid, server.publish_status(topic, message))
        return None

    async def _publish_blocking(self, topic: str, message: Message, qos: int, pid: int) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        reason = await loop.run_in_executor(server.executor, server.publish_status, topic, message)
        if self.state == _CONNECTED:
            self._ack_publish(qos, pid, reason)

    def _ack_publish(self, qos: int, pid: int, reason: int) -> None:
        if qos == 0:
            return
        v5 = self.version >= 5
        code = reason if v5 else 0
        if qos == 1:
            self.write(PubAck(packet_id=pid, reason_code=code).encode(self.version))
            return
        if code < 0x80 and self.session is not None:
            self.session.incoming_qos2.add(pid)
            self.server.write_incoming(self.session, pid, True)  # before the PUBREC
        self.write(PubRec(packet_id=pid, reason_code=code).encode(self.version))

    # -- SUBSCRIBE / UNSUBSCRIBE / DISCONNECT ----------------------------------------------------

    def _on_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        assert session is not None
        server = self.server
        v5 = self.version >= 5
        ids = packet.properties.subscription_identifiers
        identifier = ids[0] if ids else None
        codes: list[int] = []
        retained: list[tuple[SessionSub, bool]] = []
        for req in packet.subscriptions:
            topic_filter = req.topic_filter
            try:
                shared = parse_shared(topic_filter)
            except ValueError:
                codes.append(Reason.TOPIC_FILTER_INVALID if v5 else 0x80)
                continue
            inner = shared.topic_filter if shared is not None else topic_filter
            if shared is not None and req.no_local:
                raise MalformedPacket("No Local on a shared subscription", Reason.PROTOCOL_ERROR)
            key = KEY_PREFIX + topic_filter
            if not filter_is_valid(inner) or key != key.strip() or len(key.encode()) > 1024:
                codes.append(Reason.TOPIC_FILTER_INVALID if v5 else 0x80)
                continue
            if not server.authorize(self, "subscribe", inner):
                codes.append(Reason.NOT_AUTHORIZED if v5 else 0x80)
                continue
            ssub = session.subs.get(topic_filter)
            is_new = ssub is None
            if ssub is None:
                try:
                    ssub = server.make_sub(session, topic_filter)
                except MQError as exc:
                    log.warning("mqtt: subscription to %r refused: %s", topic_filter, exc)
                    codes.append(Reason.QUOTA_EXCEEDED if v5 else 0x80)
                    continue
            ssub.qos = req.qos
            ssub.no_local = req.no_local
            ssub.retain_as_published = req.retain_as_published
            ssub.identifier = identifier
            if is_new:
                session.add_sub(ssub)
            codes.append(req.qos)
            if shared is None and (
                req.retain_handling == 0 or (req.retain_handling == 1 and is_new)
            ):
                retained.append((ssub, is_new))
        server.write_session(session)  # before the SUBACK
        self.write(
            SubAck(packet_id=packet.packet_id, reason_codes=tuple(codes)).encode(self.version)
        )
        for ssub, _ in retained:
            for message in server.retained_for(ssub.matches):
                session.offer(message, ssub, retained=True)

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        codes = []
        for topic_filter in packet.topic_filters:
            found = session.remove_sub(topic_filter)
            codes.append(0 if found is not None else Reason.NO_SUBSCRIPTION_EXISTED)
        self.server.write_session(session)  # before the UNSUBACK
        self.write(
            UnsubAck(packet_id=packet.packet_id, reason_codes=tuple(codes)).encode(self.version)
        )

    def _on_disconnect(self, packet: Disconnect) -> None:
        session = self.session
        assert session is not None
        if self.version >= 5:
            expiry = packet.properties.session_expiry_interval
            if expiry is not None:
                if session.expiry == 0 and expiry != 0:
                    raise MalformedPacket(
                        "session expiry set at DISCONNECT after 0 at CONNECT",
                        Reason.PROTOCOL_ERROR,
                    )
                session.expiry = expiry
            if packet.reason_code != Reason.DISCONNECT_WITH_WILL:
                self.will = None
        else:
            self.will = None
        self.state = _CLOSED
        self.close()
