"""The ``metrics`` plugin (``enable_metrics``): counters per topic and in total, and latency.

Counts, per topic: ``published`` (messages routed), ``delivered`` (handed to a consumer),
``dropped`` (by a backpressure policy), ``expired``, ``acked``, ``nacked``, ``redelivered``,
``dead_lettered`` (under the original topic) and ``errors`` (failed operations, a rejected
publish among them); ``last_error`` is the text of the latest error. Latency is the time from
publish (the message's ``time``) to the hand-out, over the last ``LATENCY_WINDOW`` deliveries
for the percentiles and over all deliveries for the mean and maximum.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from types import MappingProxyType

from mqkit.core.broker import Broker
from mqkit.core.errors import MQError
from mqkit.core.features import MetricsFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import Message, posix_time
from mqkit.core.plugins import PluginInfo
from mqkit.core.shards import ThreadShards
from mqkit.core.status import MetricsSnapshot, TopicMetrics
from mqkit.core.subscription import Backpressure, Subscription

__all__ = ["LATENCY_WINDOW", "MetricsPlugin"]

LATENCY_WINDOW = 10_000
"""Deliveries (of each consumer thread, and of the finished threads together) whose latencies
the percentiles are computed over."""

_FIELDS = (
    "published", "delivered", "dropped", "expired", "acked",
    "nacked", "redelivered", "dead_lettered", "errors",
)  # fmt: skip
(_PUBLISHED, _DELIVERED, _DROPPED, _EXPIRED, _ACKED,
 _NACKED, _REDELIVERED, _DEAD_LETTERED, _ERRORS) = range(len(_FIELDS))  # fmt: skip
_POLICIES = frozenset(p.value for p in Backpressure)
_COUNTED_DROPS = _POLICIES | {"unsendable"}  # and what a gateway could not send a client


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class _Shard:
    """One thread's counters: only that thread writes them, so no lock is taken to count."""

    __slots__ = ("latencies", "latency_count", "latency_max", "latency_sum", "rows")

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.latency_max = 0.0


def _fold(total: _Shard, shard: _Shard) -> None:
    """Add a finished thread's counters into the total of finished threads."""
    for topic, row in shard.rows.items():
        into = total.rows.get(topic)
        if into is None:
            total.rows[topic] = row
        else:
            for i, value in enumerate(row):
                into[i] += value
    total.latencies.extend(shard.latencies)  # the window keeps the latest
    total.latency_sum += shard.latency_sum
    total.latency_count += shard.latency_count
    total.latency_max = max(total.latency_max, shard.latency_max)


class MetricsPlugin(MetricsFeature):
    """Counts what happens to messages; ``broker.metrics()`` reads it.

    Counting takes no lock: each thread counts into its own shard, and a snapshot adds the
    shards up (a snapshot taken while messages flow is a consistent-enough sum of each
    counter, as with any live metrics source). A thread's shard is folded into one total when
    the thread ends, so a snapshot adds up the live threads' shards and that total.
    """

    plugin_info = PluginInfo(
        name="metrics", description="counters and delivery latency", flag="enable_metrics"
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shards = ThreadShards(_Shard, _fold)
        self._local = self._shards.local
        self._last_error = ""
        self._broker: Broker | None = None

    @property
    def shards(self) -> ThreadShards[_Shard]:
        """The per-thread counters (for tests and tooling: ``len(shards)``)."""
        return self._shards

    def _count(self, topic: str, field: int, n: int = 1) -> None:
        rows = self._shards.get().rows
        row = rows.get(topic)
        if row is None:
            row = rows[topic] = [0] * len(_FIELDS)
        row[field] += n

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Remember the broker (for its clock)."""
        self._broker = broker

    @hookimpl
    def mqkit_published(
        self, broker: Broker, messages: Sequence[Message], copies: Sequence[int]
    ) -> None:
        """Count routed messages."""
        try:  # _count, inlined: this runs for every message
            rows = self._local.shard.rows
        except AttributeError:
            rows = self._shards.get().rows
        for message in messages:
            row = rows.get(message.topic)
            if row is None:
                row = rows[message.topic] = [0] * len(_FIELDS)
            row[_PUBLISHED] += 1

    @hookimpl
    def mqkit_delivered(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """Count a hand-out and its publish-to-delivery latency."""
        latency = 0.0
        published_at = posix_time(message)  # the stamped float: no datetime made or read
        if published_at is not None:
            latency = broker.clock.time() - published_at
            if latency < 0.0:  # a clock stepped back
                latency = 0.0
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shards.get()
        row = shard.rows.get(message.topic)
        if row is None:
            row = shard.rows[message.topic] = [0] * len(_FIELDS)
        row[_DELIVERED] += 1
        shard.latencies.append(latency)
        shard.latency_sum += latency
        shard.latency_count += 1
        if latency > shard.latency_max:
            shard.latency_max = latency

    @hookimpl
    def mqkit_drop(
        self, broker: Broker, subscription: Subscription | None, message: Message, reason: str
    ) -> None:
        """Count drops by a backpressure policy, and messages a gateway could not send."""
        if reason in _COUNTED_DROPS:
            self._count(message.topic, _DROPPED)

    @hookimpl
    def mqkit_expire(self, broker: Broker, topic: str, message: Message) -> None:
        """Count an expiry."""
        self._count(topic, _EXPIRED)

    @hookimpl
    def mqkit_ack(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """Count an ack."""
        self._count(message.topic, _ACKED)

    @hookimpl
    def mqkit_nack(
        self, broker: Broker, subscription: Subscription, message: Message, requeue: bool
    ) -> None:
        """Count a nack."""
        self._count(message.topic, _NACKED)

    @hookimpl
    def mqkit_redeliver(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """Count a redelivery."""
        self._count(message.topic, _REDELIVERED)

    @hookimpl
    def mqkit_dead_letter(self, broker: Broker, topic: str, message: Message, reason: str) -> None:
        """Count a dead letter under its original topic."""
        self._count(topic, _DEAD_LETTERED)

    @hookimpl
    def mqkit_error(self, broker: Broker, operation: str, topic: str, error: MQError) -> None:
        """Count a failed operation and remember its text."""
        with self._lock:
            self._last_error = str(error)
        self._count(topic, _ERRORS)

    def snapshot(self) -> MetricsSnapshot:
        """The counters now (the broker adds the subscription gauges)."""
        with self._lock:
            last_error = self._last_error
        rows: dict[str, list[int]] = {}
        latencies: list[float] = []
        total_latency, count, worst = 0.0, 0, 0.0
        with self._shards.lock:  # no finished thread's shard is folded while we add up
            for shard in self._shards.all:
                for topic, row in list(shard.rows.items()):  # one C-level copy: safe to count
                    into = rows.setdefault(topic, [0] * len(_FIELDS))
                    for i, value in enumerate(list(row)):
                        into[i] += value
                latencies.extend(list(shard.latencies))
                total_latency += shard.latency_sum
                count += shard.latency_count
                worst = max(worst, shard.latency_max)
        ordered = sorted(latencies)
        broker = self._broker
        subscribers: dict[str, int] = {}
        if broker is not None:
            for sub in broker.subscriptions():
                subscribers[sub.topic] = subscribers.get(sub.topic, 0) + 1
        totals = [sum(row[i] for row in rows.values()) for i in range(len(_FIELDS))]
        topics = {
            topic: TopicMetrics(
                **dict(zip(_FIELDS, row, strict=True)), subscribers=subscribers.get(topic, 0)
            )
            for topic, row in sorted(rows.items())
            if topic
        }
        return MetricsSnapshot(
            total_published=totals[_PUBLISHED],
            total_delivered=totals[_DELIVERED],
            total_dropped=totals[_DROPPED],
            total_expired=totals[_EXPIRED],
            total_acked=totals[_ACKED],
            total_nacked=totals[_NACKED],
            total_redelivered=totals[_REDELIVERED],
            total_dead_lettered=totals[_DEAD_LETTERED],
            total_errors=totals[_ERRORS],
            average_latency=total_latency / count if count else 0.0,
            p50_latency=_percentile(ordered, 0.50),
            p99_latency=_percentile(ordered, 0.99),
            max_latency=worst,
            last_error=last_error,
            topics=MappingProxyType(topics),
        )
