"""Per-client MQTT session state: subscriptions, in-flight messages, packet ids, offline queue.

A :class:`Session` outlives its connections when it is persistent (MQTT 3.1.1
``clean_session=0``, MQTT 5 Session Expiry Interval > 0).

**One broker subscription per topic filter, whatever the number of clients.** Every session
subscribed to a filter (not ``$share/...``) is a member of that filter's :class:`Feed`: one
broker :class:`~mqkit.Subscription` (key ``mqtt:<filter>``), so an in-process publish to the
filter enters one buffer however many clients subscribed to it. The feed's pump (on the
gateway's loop) takes a message only while at least one member can take one now, and hands it
to every member: to a ready member's session at once, into the private queue of a member that
is not (``[mqtt] max_queued_messages`` each, under ``backpressure``: dropped copies are
counted through ``mqkit_drop``, ``close_subscriber`` ends that member's subscription). While
no member is ready - every client idle, slow or offline - the pump rests and the broker
subscription's own buffer (the same bound and policy) holds what comes, the tail common to
every member's queue: idle clients then cost a publisher one buffer insert (and, once full,
one eviction) per message, and cost the gateway nothing.

A shared subscription (``$share/<group>/<filter>``) is one broker subscription per group,
drained by a pump that hands each message to one ready member in turn (competing consumers).

Delivery respects the client's Receive Maximum: at most that many QoS 1/2 messages are in
flight; beyond it, a session parks at most one message per subscription in ``pending`` and
takes no more from it until that one is sent, so a slow client fills its own queue (where its
policy applies) without holding up anybody else. Overlapping subscriptions of one session
deliver a message once, at the highest granted QoS, with every matching subscription
identifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mqkit.core.errors import MQError, SubscriptionClosedError
from mqkit.core.message import Message
from mqkit.core.subscription import Backpressure, Subscription
from mqkit.protocols.mqtt.codec import encode_publish
from mqkit.protocols.mqtt.mapping import Outgoing

if TYPE_CHECKING:
    from mqkit.protocols.mqtt.server import Connection, Server
    from mqkit.protocols.mqtt.store import GroupJournal, Journal

__all__ = ["NEVER", "Feed", "InFlight", "Session", "SessionSub", "SharedGroup"]

log = logging.getLogger("mqkit.mqtt")

NEVER = 0xFFFFFFFF
"""A Session Expiry Interval meaning "never expires"."""


class SharedGroup:
    """One shared subscription ``$share/<group>/<filter>``: a broker subscription and members.

    One pump per group takes messages from the broker subscription and hands each to the next
    ready member in turn (round robin), so members share the load whatever their speed.
    """

    __slots__ = ("_order", "journal", "key", "members", "ready", "sub", "task")

    def __init__(self, key: str, sub: Subscription) -> None:
        self.key = key
        """``mqtt:$share/<group>/<filter>``."""
        self.sub = sub
        """The broker subscription the members compete for."""
        self.members: dict[Session, SessionSub] = {}
        """The sessions subscribed, and their subscription entries."""
        self.ready = asyncio.Event()
        """Set while at least one member can take a message."""
        self.task: asyncio.Task[None] | None = None
        """The group's pump."""
        self.journal: GroupJournal | None = None
        """The group's stored buffer (with persistence), or None."""
        self._order: deque[Session] = deque()

    def add(self, session: Session, ssub: SessionSub) -> None:
        """A session joined (or re-subscribed)."""
        if session not in self.members:
            self._order.append(session)
        self.members[session] = ssub
        self.update()

    def remove(self, session: Session) -> None:
        """A session left."""
        if self.members.pop(session, None) is not None:
            self._order.remove(session)
        self.update()

    def update(self) -> None:
        """Recompute ``ready`` after a member's readiness changed."""
        if any(s.ready.is_set() for s in self.members.values()):
            self.ready.set()
        else:
            self.ready.clear()

    def _next(self) -> tuple[Session, SessionSub] | None:
        order = self._order
        for _ in range(len(order)):
            session = order[0]
            order.rotate(-1)
            ssub = self.members[session]
            if ssub.ready.is_set():
                return session, ssub
        return None

    async def pump(self, on_closed: Callable[[SharedGroup], None]) -> None:
        """Hand the group's messages to its members in turn while any of them is ready."""
        sub = self.sub
        while True:
            if not self.ready.is_set():
                await self.ready.wait()
                continue
            try:
                message = await sub.aget()
            except SubscriptionClosedError:
                on_closed(self)
                return
            chosen = self._next()
            if chosen is None:
                sub.redeliver(message)  # everybody went away meanwhile: keep it for later
                self.ready.clear()
                continue
            session, ssub = chosen
            try:
                session.offer(message, ssub)
            except Exception:
                log.exception("mqtt: delivering %r to %r failed", message.id, session.client_id)


class Feed:
    """The broker subscription of one topic filter, shared by every session subscribed to it.

    See the module docstring. Loop-thread only, except :attr:`sub`'s filter (the members'
    journals, with persistence), which runs in the publishing thread.
    """

    __slots__ = (
        "_joining",
        "_order",
        "acks",
        "cap",
        "key",
        "members",
        "policy",
        "ready",
        "ready_count",
        "sub",
        "task",
        "unsettled",
    )

    def __init__(self, key: str, sub: Subscription, cap: int, acks: bool) -> None:
        self.key = key
        """``mqtt:<filter>``."""
        self.sub = sub
        """The broker subscription the publishes to the filter enter (once each)."""
        self.cap = cap
        """The bound of each member's private queue (``[mqtt] max_queued_messages``)."""
        self.policy = sub.options.policy
        """What a member's full queue does with one more message (``[mqtt] backpressure``)."""
        self.acks = acks
        """Whether the broker tracks acknowledgements (``enable_ack_support``)."""
        self.members: dict[SessionSub, None] = {}
        """The subscriptions of the sessions subscribed, in the order they joined."""
        self.ready = asyncio.Event()
        """Set while at least one member can take a message now."""
        self.ready_count = 0
        """How many members can take a message now."""
        self.task: asyncio.Task[None] | None = None
        """The feed's pump."""
        self.unsettled: dict[int, list[Any]] = {}
        """``id(message)`` -> [message, members still holding it], for ack-required messages.

        The broker's copy is acknowledged when the last member is done with it.
        """
        self._order: tuple[SessionSub, ...] = ()
        """The members a message goes to (a joining one is left out until it joined)."""
        self._joining: SessionSub | None = None

    def add(self, ssub: SessionSub) -> None:
        """A session's subscription joins (after what the buffer holds went to the others)."""
        ssub.feed = self
        self.members[ssub] = None  # a member already: the feed stays while the others catch up
        self._joining = ssub
        try:
            self.catch_up()
        finally:
            self._joining = None
        self._reorder()
        if ssub.ready.is_set():
            self.count_ready(1)

    def remove(self, ssub: SessionSub) -> None:
        """A session's subscription leaves."""
        if self.members.pop(ssub, 0) is None:
            self._reorder()
            if ssub.ready.is_set():
                self.count_ready(-1)

    def _reorder(self) -> None:
        joining = self._joining
        self._order = tuple(m for m in self.members if m is not joining)

    def count_ready(self, delta: int) -> None:
        """A member became ready (1) or stopped being ready (-1)."""
        self.ready_count += delta
        if self.ready_count > 0:
            self.ready.set()
        else:
            self.ready.clear()

    def catch_up(self) -> None:
        """Hand what the broker subscription holds to the members now.

        A member is joining: what was published before it subscribed is not for it.
        """
        sub = self.sub
        while True:
            try:
                message = sub.get_nowait()
            except (TimeoutError, SubscriptionClosedError):
                return
            self.fan_out(message)

    async def pump(self, on_closed: Callable[[Feed], None]) -> None:
        """Take messages while any member is ready and hand each to every member."""
        sub = self.sub
        ready = self.ready
        while True:
            if not ready.is_set():
                await ready.wait()
                continue
            try:
                message = await sub.aget()
            except SubscriptionClosedError:
                on_closed(self)
                return
            self.fan_out(message)

    def fan_out(self, message: Message) -> None:
        """Hand ``message`` to every member: sent (or parked) if it is ready, else queued."""
        order = self._order
        if self.acks:
            ack_id: str = getattr(message, "ack_id", "")
            if ack_id:
                self.unsettled[id(message)] = [message, len(order)]
        members = self.members
        for ssub in order:
            if ssub not in members:  # left meanwhile (its queue overflowed: close_subscriber)
                self.release(message)
                continue
            try:
                if ssub.ready.is_set():
                    ssub.session.offer(message, ssub)
                else:
                    self.enqueue(ssub, message)
            except Exception:  # a bug must not stop the feed
                log.exception(
                    "mqtt: delivering %r to %r failed", message.id, ssub.session.client_id
                )

    def enqueue(self, ssub: SessionSub, message: Message) -> None:
        """Put ``message`` in the private queue of a member that cannot take it now."""
        queue = ssub.queue
        if len(queue) < self.cap:
            queue.append(message)
            return
        policy = self.policy
        dropped = message
        if policy is Backpressure.DROP_OLDEST:
            dropped = queue.popleft()
            queue.append(message)
        # BLOCK_WITH_TIMEOUT cannot make the publisher wait for one member (it waits while
        # every member is full, at the broker subscription): the new message is dropped.
        session = ssub.session
        session.drop(dropped, ssub, policy.value)
        if policy is Backpressure.CLOSE_SUBSCRIBER:
            session.server.subscription_lost(session, ssub)

    def release(self, message: Message) -> None:
        """A member is done with ``message``: acknowledge the broker's copy after the last."""
        unsettled = self.unsettled
        if not unsettled:
            return
        key = id(message)
        entry = unsettled.get(key)
        if entry is None or entry[0] is not message:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del unsettled[key]
            with contextlib.suppress(MQError):
                self.sub.ack(message.ack_id)


class SessionSub:
    """One topic filter of a session with its options and broker subscription (feed or group)."""

    __slots__ = (
        "feed",
        "group",
        "held",
        "identifier",
        "inner",
        "journal",
        "matches",
        "no_local",
        "qos",
        "queue",
        "ready",
        "retain_as_published",
        "session",
        "sub",
        "topic_filter",
    )

    def __init__(
        self,
        session: Session,
        topic_filter: str,
        inner: str,
        group: SharedGroup | None,
        matches: Callable[[str], bool],
        sub: Subscription,
    ) -> None:
        self.session = session
        """The session it belongs to."""
        self.topic_filter = topic_filter
        """The filter as subscribed (``$share/...`` included)."""
        self.inner = inner
        """The filter without the ``$share/<group>/`` prefix."""
        self.group = group
        """The shared group, or None."""
        self.matches = matches
        """Whether a topic name matches ``inner``."""
        self.sub = sub
        """The broker subscription (the feed's, or the group's when shared)."""
        self.feed: Feed | None = None
        """The filter's feed (None when shared)."""
        self.queue: deque[Message] = deque()
        """Messages the feed handed over while the session could not take them (bounded)."""
        self.qos = 0
        """The granted QoS."""
        self.no_local = False
        """MQTT 5 No Local: skip messages this client published."""
        self.retain_as_published = False
        """MQTT 5 Retain As Published."""
        self.identifier: int | None = None
        """MQTT 5 Subscription Identifier."""
        self.held = 0
        """Messages of this subscription parked in the session's pending queue."""
        self.ready = asyncio.Event()
        """Set while the session can take the next message of this subscription now."""
        self.journal: Journal | None = None
        """The stored queue of a session's own subscription (with persistence), or None."""

    def set_ready(self, ready: bool) -> None:
        """Set or clear :attr:`ready` (and the feed's count of ready members)."""
        event = self.ready
        if ready == event.is_set():
            return
        if ready:
            event.set()
        else:
            event.clear()
        feed = self.feed
        if feed is not None and self in feed.members:
            feed.count_ready(1 if ready else -1)


class InFlight:
    """A QoS 1/2 message sent to the client and not yet fully acknowledged."""

    __slots__ = ("message", "out", "packet_id", "qos", "released", "retain", "ssub", "sub_ids")

    def __init__(
        self,
        packet_id: int,
        message: Message,
        out: Outgoing,
        qos: int,
        retain: bool,
        sub_ids: tuple[int, ...],
        ssub: SessionSub | None,
    ) -> None:
        self.packet_id = packet_id
        self.message = message
        self.out = out
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.ssub = ssub
        self.released = False
        """QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP."""


# A message waiting for a window slot: (message, subscription or None, QoS, retain, ids).
Pending = tuple[Message, SessionSub | None, int, bool, tuple[int, ...]]


class Session:
    """The state of one client identifier (see the module docstring). Loop-thread only."""

    def __init__(self, server: Server, client_id: str) -> None:
        self.server = server
        self.client_id = client_id
        """The client identifier."""
        self.owner: str | None = None
        """The user name of the client that created the session (None: anonymous)."""
        self.version = 4
        """Protocol level of the last connection."""
        self.expiry = 0
        """Session Expiry Interval in seconds (``NEVER``: does not expire)."""
        self.subs: dict[str, SessionSub] = {}
        self.inflight: dict[int, InFlight] = {}
        self.pending: deque[Pending] = deque()
        self.incoming_qos2: set[int] = set()
        self.conn: Connection | None = None
        self.window = 65535
        """How many QoS 1/2 messages may be in flight to the client."""
        self.max_packet = 0
        """The client's Maximum Packet Size (0: no limit)."""
        self.writable = True
        self.ended = False
        self.expiry_handle: asyncio.TimerHandle | None = None
        self.will_handle: asyncio.TimerHandle | None = None
        self.will_publish: Callable[[], None] | None = None
        self.seqs = itertools.count(1)
        """Numbers the messages stored for the session, in the order they were queued."""
        self.disconnected_at: float | None = None
        """When the session went offline (POSIX seconds; None while connected)."""
        self.stored = False
        """Whether the store holds a record of the session."""
        self._next_id = 0

    # -- connection ------------------------------------------------------------------------------

    def attach(self, conn: Connection, window: int, max_packet: int) -> None:
        """A connection took the session: resend what is in flight, then go on delivering."""
        self.conn = conn
        self.version = conn.version
        self.window = window
        self.max_packet = max_packet
        self.writable = True
        for h in (self.expiry_handle, self.will_handle):
            if h is not None:
                h.cancel()
        self.expiry_handle = self.will_handle = None
        self.will_publish = None
        for inf in list(self.inflight.values()):
            if inf.released:
                conn.write(_pubrel(inf.packet_id))
            elif not (
                self.server.may_read(conn, inf.message.topic) and self._write_publish(inf, dup=True)
            ):
                # The ACL changed since it was sent, it expired, or this client cannot take it
                # (a v5 client resumed a v3 session): never resent, so the flow ends here and
                # its window slot is free again.
                del self.inflight[inf.packet_id]
                self._settle(inf.message, inf.ssub)
        self._drain()
        self._refresh()

    def detach(self) -> None:
        """The connection went away; a persistent session waits for the next one."""
        self.conn = None
        keep: deque[Pending] = deque()
        for entry in self.pending:
            ssub = entry[1]
            if ssub is not None and ssub.group is not None:
                ssub.held -= 1
                ssub.sub.redeliver(entry[0])  # another member may take it now
            else:
                keep.append(entry)
        self.pending = keep
        self._refresh()

    def set_writable(self, writable: bool) -> None:
        """The transport's buffer crossed a water mark: stop or resume the pumps."""
        self.writable = writable
        self._refresh()

    def _go(self) -> bool:
        return self.conn is not None and self.writable and not self.ended

    def _refresh(self, only: SessionSub | None = None) -> None:
        for ssub in (only,) if only is not None else tuple(self.subs.values()):
            queue = ssub.queue
            # What the feed queued while the session could not take it goes first, in order.
            while queue and ssub.held <= 0 and self._go():
                self.offer(queue.popleft(), ssub)
            ssub.set_ready(not queue and ssub.held <= 0 and self._go())
            if ssub.group is not None:
                ssub.group.update()

    # -- subscriptions ---------------------------------------------------------------------------

    def add_sub(self, ssub: SessionSub) -> None:
        """Register a new subscription: join its feed (or shared group)."""
        self.subs[ssub.topic_filter] = ssub
        self.server.join_sub(self, ssub)
        self._refresh(ssub)

    def remove_sub(self, topic_filter: str) -> SessionSub | None:
        """Forget a subscription: leave its feed and drop (or give back) what it held."""
        ssub = self.subs.pop(topic_filter, None)
        if ssub is None:
            return None
        ssub.set_ready(False)
        feed = ssub.feed
        if feed is not None:
            for message in ssub.queue:
                feed.release(message)
            ssub.queue.clear()
        if ssub.journal is not None:  # what is in flight stays stored until it completes
            ssub.journal.close({id(i.message) for i in self.inflight.values() if i.ssub is ssub})
        if ssub.held:
            keep: deque[Pending] = deque()
            for entry in self.pending:
                if entry[1] is ssub:
                    if ssub.group is not None:
                        ssub.sub.redeliver(entry[0])
                    elif feed is not None:
                        feed.release(entry[0])
                else:
                    keep.append(entry)
            self.pending = keep
            ssub.held = 0
        self.server.release_sub(self, ssub)
        return ssub

    # -- delivery --------------------------------------------------------------------------------

    def offer(self, message: Message, ssub: SessionSub, retained: bool = False) -> None:
        """Deliver ``message`` that ``ssub`` received (or, ``retained``, matched at subscribe)."""
        out = self.server.outgoing(message)
        client_id = self.client_id
        if ssub.no_local and out.client_id == client_id and not retained:
            _forget(message, ssub)
            return
        if retained and ssub.journal is not None:
            ssub.journal(message)
        qos = ssub.qos
        retain = retained or (ssub.retain_as_published and out.retain)
        ids: tuple[int, ...] = () if ssub.identifier is None else (ssub.identifier,)
        if ssub.group is None and not retained and len(self.subs) > 1:
            topic = message.topic
            matching = [
                s
                for s in self.subs.values()
                if s.group is None
                and s.matches(topic)
                and not (s.no_local and out.client_id == client_id)
            ]
            if len(matching) > 1:
                if min(s.sub.id for s in matching) != ssub.sub.id:
                    _forget(message, ssub)
                    return  # the oldest matching subscription delivers for all of them
                qos = max(s.qos for s in matching)
                retain = any(s.retain_as_published for s in matching) and out.retain
                ids = tuple(s.identifier for s in matching if s.identifier is not None)
        qos = min(qos, out.qos)
        if self.conn is None or (qos and (self.pending or len(self.inflight) >= self.window)):
            self.pending.append((message, ssub, qos, retain, ids))
            ssub.held += 1
            ssub.set_ready(False)
            if ssub.group is not None:
                ssub.group.update()
            return
        self._send(message, out, ssub, qos, retain, ids)

    def _send(
        self,
        message: Message,
        out: Outgoing,
        ssub: SessionSub | None,
        qos: int,
        retain: bool,
        ids: tuple[int, ...],
    ) -> None:
        conn = self.conn
        if conn is not None and not self.server.may_read(conn, message.topic):
            self._settle(message, ssub)  # dropped for this client: it may not read the topic
            return
        if qos == 0:
            data = self._encode(out, 0, retain, False, 0, ids)
            if data is not None and self.conn is not None:
                self.conn.write(data)
            self._settle(message, ssub)
            return
        inf = InFlight(self._packet_id(), message, out, qos, retain, ids, ssub)
        if ssub is not None and ssub.journal is not None:
            ssub.journal.flying(inf)
        if self._write_publish(inf, dup=False):
            self.inflight[inf.packet_id] = inf
        else:
            self._settle(message, ssub)

    def _encode(
        self, out: Outgoing, qos: int, retain: bool, dup: bool, packet_id: int, ids: tuple[int, ...]
    ) -> bytes | None:
        problem = out.v5_problem if self.version >= 5 else out.problem
        if problem is not None:  # MQTT forbids a string of it: dropped for this client
            self.server.unsendable(out.message, problem)
            return None
        props: bytes | None = None
        if self.version >= 5:
            props = out.properties(self.server.now(), ids)
            if props is None:
                return None  # expired
        elif out.expires_at is not None and out.expires_at <= self.server.now():
            return None
        data = encode_publish(out.topic_bytes, out.payload, qos, retain, dup, packet_id, props)
        if self.max_packet and len(data) > self.max_packet:
            # The client could not take it: discarded, as the spec says (and counted).
            self.server.unsendable(
                out.message, f"the client's Maximum Packet Size is {self.max_packet} bytes"
            )
            return None
        return data

    def _write_publish(self, inf: InFlight, dup: bool) -> bool:
        data = self._encode(inf.out, inf.qos, inf.retain, dup, inf.packet_id, inf.sub_ids)
        if data is None:
            return False
        if self.conn is not None:
            self.conn.write(data)
        return True

    def _packet_id(self) -> int:
        n = self._next_id
        inflight = self.inflight
        while True:
            n = n + 1 if n < 65535 else 1
            if n not in inflight:
                self._next_id = n
                return n

    def _drain(self) -> None:
        pending = self.pending
        while pending and self.conn is not None and len(self.inflight) < self.window:
            message, ssub, qos, retain, ids = pending.popleft()
            if ssub is not None:
                ssub.held -= 1
                if ssub.held == 0:
                    self._refresh(ssub)
            self._send(message, self.server.outgoing(message), ssub, qos, retain, ids)

    def _settle(self, message: Message, ssub: SessionSub | None) -> None:
        """The message is done: out of the store; the ack plugin hears of an ack-required one."""
        _forget(message, ssub)
        ack_id = getattr(message, "ack_id", "")
        if ack_id and ssub is not None and ssub.group is not None and self.server.acks:
            with contextlib.suppress(MQError):
                ssub.sub.ack(ack_id)

    def drop(self, message: Message, ssub: SessionSub, reason: str) -> None:
        """A subscription's full queue dropped ``message`` (``reason``: the policy).

        Counted through ``mqkit_drop`` (no subscription: the gateway had taken the message
        from the feed), so the metrics count it as dropped for its topic.
        """
        _forget(message, ssub)
        server = self.server
        hooks = server.hooks
        if hooks.drop_on:
            hooks.drop(server.broker, None, message, reason)

    # -- acknowledgements from the client --------------------------------------------------------

    def on_puback(self, packet_id: int) -> None:
        """PUBACK: a QoS 1 delivery is complete."""
        inf = self.inflight.get(packet_id)
        if inf is not None and inf.qos == 1:
            del self.inflight[packet_id]
            self._settle(inf.message, inf.ssub)
            self._drain()

    def on_pubrec(self, packet_id: int, reason: int) -> bool:
        """PUBREC: answer PUBREL (False when the packet id is unknown)."""
        inf = self.inflight.get(packet_id)
        if inf is None or inf.qos != 2:
            return False
        if reason >= 0x80:  # the client refused it: the flow ends here
            del self.inflight[packet_id]
            _forget(inf.message, inf.ssub)
            self._drain()
            return True
        inf.released = True
        if inf.ssub is not None and inf.ssub.journal is not None:
            inf.ssub.journal.flying(inf)
        if self.conn is not None:
            self.conn.write(_pubrel(packet_id))
        return True

    def on_pubcomp(self, packet_id: int) -> None:
        """PUBCOMP: a QoS 2 delivery is complete."""
        inf = self.inflight.get(packet_id)
        if inf is not None and inf.released:
            del self.inflight[packet_id]
            self._settle(inf.message, inf.ssub)
            self._drain()

    # -- end -------------------------------------------------------------------------------------

    def end(self) -> None:
        """The session is over: stop pumps, drop subscriptions, give shared messages back."""
        if self.ended:
            return
        self.ended = True
        for h in (self.expiry_handle, self.will_handle):
            if h is not None:
                h.cancel()
        self.expiry_handle = self.will_handle = None
        for inf in self.inflight.values():
            ssub = inf.ssub
            if ssub is not None and ssub.group is not None and not inf.released:
                ssub.sub.redeliver(inf.message)  # stays stored for the group
            else:
                _forget(inf.message, ssub)
        self.inflight.clear()
        for topic_filter in list(self.subs):
            self.remove_sub(topic_filter)
        self.pending.clear()

    def queued(self) -> list[Message]:
        """Every message the session holds for its client: in flight, pending, buffered."""
        found = [inf.message for inf in self.inflight.values()]
        found += [entry[0] for entry in self.pending]
        for ssub in self.subs.values():
            if ssub.group is None:
                found += ssub.queue
                found += ssub.sub.buffered()  # the feed's buffer: the tail of every member's
        return found


def _forget(message: Message, ssub: SessionSub | None) -> None:
    """``message`` is done for the session: out of the subscription's stored queue.

    The last member of a feed done with an ack-required message acknowledges it to the broker.
    """
    if ssub is not None:
        journal = ssub.journal if ssub.group is None else ssub.group.journal
        if journal is not None:
            journal.forget(message)
        feed = ssub.feed
        if feed is not None:
            feed.release(message)


def _pubrel(packet_id: int) -> bytes:
    return b"\x62\x02" + packet_id.to_bytes(2, "big")
