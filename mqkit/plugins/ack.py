"""The ``ack`` plugin: per-subscription acknowledgement with deadlines, retries and dead letters.

Switched on by ``enable_ack_support``. An ack-required message (an :class:`~mqkit.AckMessage`
or :class:`~mqkit.AckTTLMessage` whose policy is not ``NONE``; ``TIMEOUT`` behaves as
``REQUIRED``) is tracked per subscription from the moment ``get`` hands it out:

- ``ack`` settles it;
- a missed deadline (``ack_timeout``, else ``default_ack_timeout``) or a ``nack`` redelivers it
  to *that* subscription only, with ``attempt`` raised by one, until ``max_ack_retries``
  redeliveries were made (``max_ack_retries + 1`` deliveries in all);
- then, or at once on ``nack(requeue=False)``, it is dead-lettered with reason
  ``ack timeout after N attempts`` or ``nacked after N attempts`` (with the dead letter queue
  off it is dropped, counted, and ``health_check()`` says so).

Cancelling a subscription dead-letters what it holds unacknowledged, delivered or still
buffered (reason ``unsubscribed before ack``): nothing is silently leaked.

An ack id names one unsettled message: from the moment a publish call is accepted until every
copy of it has ended (acked, dead-lettered, dropped, expired or cancelled with its
subscription), a publish of another ack-required message with the same explicit ack id is
refused with ``InvalidMessageError`` - through every path (a batch or a transaction commit is
refused whole, also when it repeats an ack id itself) and before anything is stored or
delivered. The count of unsettled copies per ack id is taken at ``mqkit_accept`` (under the
lock: concurrent publishes of one id let exactly one in), set from ``mqkit_published`` and
lowered as each copy ends; ``mqkit_refused`` gives back what a refused call had taken.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final, NamedTuple

from mqkit.core.broker import Broker
from mqkit.core.errors import AckNotFoundError, InvalidMessageError, MQError
from mqkit.core.features import AckFeature
from mqkit.core.hookspecs import for_messages, hookimpl
from mqkit.core.message import (
    AckPolicy,
    Message,
    estimate_size,
    has_field,
    needs_ack,
    redelivery,
)
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.shards import ByteShard
from mqkit.core.subscription import Subscription
from mqkit.core.timers import TimerHandle
from mqkit.core.topics import normalize_topic

__all__ = ["AckPlugin", "needs_ack"]


class _Pending(NamedTuple):
    """One unacknowledged delivery (a tuple: made with one C call per delivery)."""

    message: Message
    subscription: Subscription
    ack_id: str
    timeout: float
    deadline: float
    size: int


_new_pending: Final = tuple.__new__
"""``_new_pending(_Pending, (fields...))``: a ``_Pending`` without the generated ``__new__``."""
_NO_ACK: Final = AckPolicy.NONE


_Bucket = OrderedDict[tuple[Subscription, str], _Pending]

_COPY_ENDED: Final = frozenset({"drop_oldest", "withheld", "unsubscribed"})
"""``mqkit_drop`` reasons that end a buffered copy (the others: the copy never entered)."""


def _has_ack_id(cls: type, config: object) -> bool:
    return has_field(cls, "ack_id")


def _ack_id(message: Message) -> str:
    """The ack id of an ack-required message; "" for any other message."""
    ack_id: str = getattr(message, "ack_id", "")
    return ack_id if ack_id and needs_ack(message) else ""


class AckPlugin(AckFeature, Plugin):
    """Tracks delivered ack-required messages per subscription.

    Deadlines cost no timer per message: deliveries with the same timeout are kept in one
    insertion-ordered bucket, which is therefore also deadline-ordered, and a single timer on
    the broker's timer service is armed for the earliest deadline of all buckets. An ack is a
    dictionary removal.
    """

    plugin_info = PluginInfo(
        name="ack",
        description="per-subscription ack/nack with deadlines, retries and dead letters",
        flag="enable_ack_support",
    )

    def __init__(self, broker: Broker) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Subscription, dict[str, _Pending]] = {}
        self._buckets: dict[float, _Bucket] = {}  # timeout -> deliveries in deadline order
        # ack id -> unsettled copies (buffered or delivered), plus one while being published
        self._ids: dict[str, int] = {}
        self._publishing: dict[str, Message] = {}  # ack id -> the message being published
        # bytes of the pending deliveries: the broker counts them (Feature.held_shard)
        self._held = self.held_shard = ByteShard()
        self._timer: TimerHandle | None = None
        self._armed_at: float | None = None
        self._broker: Broker | None = broker  # None once stopped

    # -- lifecycle -----------------------------------------------------------------------------

    @hookimpl
    def mqkit_broker_close(self, broker: Broker) -> None:
        """Stop the deadlines; what is unacked stays unacked (persistence keeps it)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._armed_at = None
            self._pending.clear()
            self._buckets.clear()
            self._ids.clear()
            self._publishing.clear()
            self._held.bytes = 0
            self._broker = None

    # -- hooks ---------------------------------------------------------------------------------

    @hookimpl
    @for_messages(_has_ack_id)
    def mqkit_accept(self, broker: Broker, messages: Sequence[Message]) -> None:
        """Take the ack id of each ack-required message, or refuse the whole call.

        Every path passes here before anything is stored or buffered: ``publish``,
        ``publish_batch``, a transaction's commit, a replay. An ack id still unsettled, or
        given twice in the call, refuses it.
        """
        if len(messages) == 1:  # publish: no list, no set, no call (_ack_id, inlined)
            message = messages[0]
            ack_id = getattr(message, "ack_id", "")
            if ack_id and getattr(message, "ack_policy", _NO_ACK) != _NO_ACK:
                lock = self._lock  # acquire/release, not ``with``: a third fewer instructions
                lock.acquire()
                try:
                    if ack_id in self._ids:
                        raise _taken(ack_id, message)
                    self._ids[ack_id] = 1
                    self._publishing[ack_id] = message
                finally:
                    lock.release()
            return
        claims = [(ack_id, m) for m in messages if (ack_id := _ack_id(m))]
        if not claims:
            return
        with self._lock:
            ids = self._ids
            seen: set[str] = set()
            for ack_id, message in claims:
                if ack_id in ids:
                    raise _taken(ack_id, message)
                if ack_id in seen:
                    raise InvalidMessageError.because(
                        f"ack id {ack_id!r} is given twice in one publish: message "
                        f"{message.id!r} to topic {message.topic!r} refused"
                    )
                seen.add(ack_id)
            for ack_id, message in claims:
                ids[ack_id] = 1
                self._publishing[ack_id] = message

    @hookimpl
    def mqkit_refused(self, broker: Broker, messages: Sequence[Message], error: MQError) -> None:
        """Give back the ack ids this refused call had taken."""
        with self._lock:
            for message in messages:
                ack_id = getattr(message, "ack_id", "")
                if ack_id and self._publishing.get(ack_id) is message:
                    del self._publishing[ack_id]
                    self._release(ack_id)

    @hookimpl
    @for_messages(_has_ack_id)
    def mqkit_published(
        self, broker: Broker, messages: Sequence[Message], copies: Sequence[int]
    ) -> None:
        """An ack id stays taken by the copies the message left in buffers."""
        publishing = self._publishing
        if not publishing:
            return
        lock = self._lock
        lock.acquire()
        try:
            for i, message in enumerate(messages):
                ack_id = getattr(message, "ack_id", "")
                if ack_id and publishing.get(ack_id) is message:
                    del publishing[ack_id]
                    if copies[i] != 1 or self._ids.get(ack_id, 1) <= 0:  # else: count unchanged
                        self._release(ack_id, 1 - copies[i])
        finally:
            lock.release()

    @hookimpl
    def mqkit_drop(
        self, broker: Broker, subscription: Subscription | None, message: Message, reason: str
    ) -> None:
        """A buffered copy left without being handed out (evicted, expired, cancelled)."""
        if subscription is None or reason not in _COPY_ENDED:
            return
        ack_id = _ack_id(message)
        if ack_id:
            with self._lock:
                # A buffer refusing the message it is being published with reports it too
                # (a priority buffer under DROP_OLDEST): that copy never entered, it is not
                # counted. (A copy evicted while its message is still being routed elsewhere
                # keeps the id taken: the safe side.)
                if self._publishing.get(ack_id) is not message:
                    self._release(ack_id)

    @hookimpl
    @for_messages(lambda cls, config: has_field(cls, "ack_policy"))
    def mqkit_delivered(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """Start the deadline of an ack-required message just handed out."""
        if getattr(message, "ack_policy", _NO_ACK) is _NO_ACK:  # needs_ack, inlined
            return
        ack_id: str = getattr(message, "ack_id", "")
        timeout: float | None = getattr(message, "ack_timeout", None)
        if timeout is None:
            timeout = broker.config.default_ack_timeout
        deadline = broker.clock.monotonic() + timeout
        size = message._size  # estimate_size, inlined for a copy built with its size
        if size < 0:
            size = estimate_size(message)  # O(1)
        pending: _Pending = _new_pending(
            _Pending, (message, subscription, ack_id, timeout, deadline, size)
        )
        lock = self._lock
        lock.acquire()
        try:
            held = self._pending.get(subscription)
            if held is None:
                held = self._pending[subscription] = {}
            elif ack_id in held:  # the same copy again (publish refuses a second one)
                self._unlink(held[ack_id])
            held[ack_id] = pending
            bucket = self._buckets.get(timeout)
            if bucket is None:
                bucket = self._buckets[timeout] = OrderedDict()
            bucket[(subscription, ack_id)] = pending
            self._held.bytes += size
            if self._armed_at is None or deadline < self._armed_at:
                self._arm(broker, deadline)
        finally:
            lock.release()

    @hookimpl
    def mqkit_unsubscribe(self, broker: Broker, subscription: Subscription) -> None:
        """Dead-letter what the cancelled subscription holds unacknowledged."""
        with self._lock:
            held = self._pending.pop(subscription, {})
            for pending in held.values():
                self._unlink(pending)
                self._release(pending.ack_id)  # dead-lettered below; buffered ones: mqkit_drop
        for pending in held.values():
            message = pending.message
            broker.dead_letter(
                message.topic, message, "unsubscribed before ack", message.attempt, subscription
            )
        for message in subscription.remove(needs_ack):  # buffered copies: the drop ends them
            broker.hooks.drop(broker, subscription, message, "unsubscribed")
            broker.dead_letter(message.topic, message, "unsubscribed before ack", message.attempt)

    # -- the feature ---------------------------------------------------------------------------

    def ack(self, topic: str, ack_id: str) -> None:
        """Acknowledge ``ack_id`` on every subscription of ``topic`` holding it."""
        for subscription in self._holders(topic, ack_id):
            self.ack_subscription(subscription, ack_id)

    def nack(self, topic: str, ack_id: str, requeue: bool = True) -> None:
        """Reject ``ack_id`` on every subscription of ``topic`` holding it."""
        for subscription in self._holders(topic, ack_id):
            self.nack_subscription(subscription, ack_id, requeue)

    def ack_subscription(self, subscription: Subscription, ack_id: str) -> None:
        """Settle ``ack_id`` on ``subscription``."""
        # _take(settle=True) with _unlink and _release inlined: the ack's whole bookkeeping
        # under one lock, without a call.
        lock = self._lock
        lock.acquire()
        try:
            held = self._pending.get(subscription)
            pending = held.pop(ack_id, None) if held is not None else None
            if pending is None:
                raise _not_found(ack_id)
            bucket = self._buckets.get(pending.timeout)
            if bucket is not None:
                bucket.pop((subscription, ack_id), None)
            self._held.bytes -= pending.size
            ids = self._ids
            left = ids.get(ack_id)
            if left is not None:
                if left > 1 or ack_id in self._publishing:
                    ids[ack_id] = left - 1
                else:
                    del ids[ack_id]
        finally:
            lock.release()
        broker = self._broker
        if broker is None:
            broker = self._live_broker()
        broker.hooks.ack(broker, subscription, pending.message)

    def nack_subscription(self, subscription: Subscription, ack_id: str, requeue: bool) -> None:
        """Redeliver ``ack_id`` to ``subscription`` (``requeue``) or dead-letter it."""
        pending = self._take(subscription, ack_id)
        broker = self._live_broker()
        again = requeue and self._may_retry(broker, pending)
        broker.hooks.nack(broker, subscription, pending.message, again)
        self._retry_or_dead_letter(broker, pending, again, "nacked")

    def held_bytes(self) -> int:
        """Bytes of delivered messages held for a possible redelivery."""
        return self._held.bytes

    def pending_count(self, subscription: Subscription | None = None) -> int:
        """Unacknowledged deliveries (of one subscription, or in all)."""
        with self._lock:
            if subscription is not None:
                return len(self._pending.get(subscription, {}))
            return sum(len(held) for held in self._pending.values())

    # -- internals -----------------------------------------------------------------------------

    def _live_broker(self) -> Broker:
        broker = self._broker
        if broker is None:
            from mqkit.core.errors import BrokerClosedError

            raise BrokerClosedError()
        return broker

    def _holders(self, topic: str, ack_id: str) -> list[Subscription]:
        wanted = normalize_topic(topic)
        with self._lock:
            found = [
                sub
                for sub, held in self._pending.items()
                if ack_id in held and held[ack_id].message.topic == wanted
            ]
        if not found:
            raise AckNotFoundError.because(f"ack id {ack_id!r} not found on topic {wanted!r}")
        return found

    def _take(self, subscription: Subscription, ack_id: str) -> _Pending:
        """Take the delivery of ``ack_id`` off ``subscription`` (its copy goes on for now)."""
        with self._lock:
            held = self._pending.get(subscription)
            pending = held.pop(ack_id, None) if held is not None else None
            if pending is None:
                raise _not_found(ack_id)
            self._unlink(pending)
        return pending

    def _unlink(self, pending: _Pending) -> None:
        """Under the lock: take a delivery out of its deadline bucket and the byte count."""
        bucket = self._buckets.get(pending.timeout)
        if bucket is not None:
            bucket.pop((pending.subscription, pending.ack_id), None)
        self._held.bytes -= pending.size

    def _release(self, ack_id: str, copies: int = 1) -> None:
        """Under the lock: ``copies`` copies of ``ack_id``'s message ended (may be negative).

        While the message is still being published, its count may dip to zero or below (a
        copy settled before ``mqkit_published`` counted it): the id stays taken until then.
        """
        left = self._ids.get(ack_id)
        if left is None:  # buffered before the plugin started: never counted
            return
        left -= copies
        if left > 0 or ack_id in self._publishing:
            self._ids[ack_id] = left
        else:
            del self._ids[ack_id]

    def _arm(self, broker: Broker, deadline: float) -> None:
        """Under the lock: (re)arm the one timer for ``deadline``."""
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = deadline
        self._timer = broker.timers.call_later(deadline - broker.clock.monotonic(), self._expire)

    def _expire(self) -> None:
        """The timer fired: settle every delivery whose deadline passed, re-arm for the next."""
        broker = self._broker
        if broker is None:
            return
        now = broker.clock.monotonic()
        due: list[_Pending] = []
        with self._lock:
            self._timer = self._armed_at = None
            nearest: float | None = None
            for timeout, bucket in list(self._buckets.items()):
                while bucket:
                    key, pending = next(iter(bucket.items()))
                    if pending.deadline > now:
                        if nearest is None or pending.deadline < nearest:
                            nearest = pending.deadline
                        break
                    del bucket[key]
                    self._held.bytes -= pending.size
                    held = self._pending.get(pending.subscription)
                    if held is not None and held.get(pending.ack_id) is pending:
                        del held[pending.ack_id]
                        if not held:
                            del self._pending[pending.subscription]
                    due.append(pending)
                if not bucket:
                    del self._buckets[timeout]
            if nearest is not None:
                self._arm(broker, nearest)
        for pending in due:
            self._retry_or_dead_letter(
                broker, pending, self._may_retry(broker, pending), "ack timeout"
            )

    @staticmethod
    def _may_retry(broker: Broker, pending: _Pending) -> bool:
        return (
            pending.message.attempt <= broker.config.max_ack_retries
            and not pending.subscription.closed
        )

    def _retry_or_dead_letter(
        self, broker: Broker, pending: _Pending, retry: bool, why: str
    ) -> None:
        message = pending.message
        if retry and pending.subscription.redeliver(redelivery(message)):
            return  # the copy goes on: its ack id stays taken
        with self._lock:
            self._release(pending.ack_id)
        reason = f"{why} after {message.attempt} attempts"
        broker.dead_letter(message.topic, message, reason, message.attempt, pending.subscription)


def _not_found(ack_id: str) -> AckNotFoundError:
    return AckNotFoundError.because(
        f"ack id {ack_id!r} not found (unknown, or already acked or settled)"
    )


def _taken(ack_id: str, message: Message) -> InvalidMessageError:
    return InvalidMessageError.because(
        f"ack id {ack_id!r} is already pending (a message holding it is unsettled): message "
        f"{message.id!r} to topic {message.topic!r} refused"
    )
