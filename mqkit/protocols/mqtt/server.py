"""The MQTT server: an asyncio listener, the session table, subscriptions, the session store.

One protocol object per connection (:class:`~.connection.Connection`) handles that client's
packets.

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
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs

from mqkit.core.errors import InvalidTopicError, LimitExceededError, MQError
from mqkit.core.message import Message
from mqkit.core.subscription import Backpressure, SubOptions
from mqkit.plugins.persistence.serializer import message_from_dict, message_to_dict, to_json
from mqkit.protocols.mqtt.codec import Reason
from mqkit.protocols.mqtt.connection import DRAIN_SECONDS, Connection
from mqkit.protocols.mqtt.mapping import Outgoing
from mqkit.protocols.mqtt.session import NEVER, Feed, InFlight, Session, SessionSub, SharedGroup
from mqkit.protocols.mqtt.settings import MQTTSettings
from mqkit.protocols.mqtt.store import FeedJournals, GroupJournal, Journal, SessionStore
from mqkit.protocols.mqtt.topics import KEY_PREFIX, compile_filter, parse_shared

if TYPE_CHECKING:
    from mqkit.core.broker import Broker

__all__ = ["KEY_PREFIX", "Connection", "Server"]

log = logging.getLogger("mqkit.mqtt")

_OUTGOING_CACHE: Final = 2048


class Server:
    """The MQTT server of one broker (loop-thread only, except where noted)."""

    def __init__(self, broker: Broker, store: Any = None) -> None:
        cfg = broker.settings(MQTTSettings)
        self.broker = broker
        self.hooks = broker.hooks
        self.session_store: SessionStore | None = store
        """Persistent sessions, written as they change (see :mod:`.store`), or None."""
        self.store = store.cache if store is not None else None
        """The session store's ``diskcache.Cache`` (for tools and tests), or None."""
        self.max_packet_size = cfg.max_packet_size
        self.receive_maximum = cfg.max_inflight
        self.topic_alias_maximum = cfg.topic_alias_maximum
        self.max_keep_alive = cfg.max_keep_alive
        self.max_connections = cfg.max_connections
        self.connect_timeout = cfg.connect_timeout
        self.sub_options = SubOptions(buffer_size=cfg.max_queued_messages, policy=cfg.backpressure)
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
            await asyncio.wait(draining, timeout=DRAIN_SECONDS * 2)
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
