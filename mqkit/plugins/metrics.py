"""The ``metrics`` plugin (``enable_metrics``): counters per topic and in total, and latency.

Counts, per topic: ``published`` (messages routed), ``delivered`` (handed to a consumer),
``dropped`` (by a backpressure policy), ``expired``, ``acked``, ``nacked``, ``redelivered``,
``dead_lettered`` (under the original topic) and ``errors`` (failed operations, a rejected
publish among them); ``last_error`` is the text of the latest error.

The two per-message counts cost the message path no hook call: ``published`` is the broker's
own per-topic count (``Broker.count_published``); a subscription's ``dropped`` and an exact
subscription's ``delivered`` are read from its counters (``Subscription.delivered``, derived
from what entered and left its buffer) under its key. A pattern subscription (and a gateway's,
keyed by its filter) hands out many topics: a tap counts each hand-out under the message's
topic (a call per message in its consumer's thread; its drops, on the publisher's side, stay
under its key, at no cost). A cancelled subscription's counts are kept as they were at the
cancel; what its consumer drains afterwards is not counted.

Latency is the time from publish (the message's ``time``) to the hand-out, *sampled*: every
hand-out of a subscription's first ``SAMPLE_EVERY`` (64), then one in 64, each sample weighted
by the hand-outs it stands for. The mean is the weighted mean of the samples and the
percentiles are taken over the last ``LATENCY_WINDOW`` samples: on a steady stream they stay
within a few percent of the exact figures; ``max_latency`` is the largest *sampled* latency.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from types import MappingProxyType

from mqkit.core.broker import Broker
from mqkit.core.config import Config
from mqkit.core.errors import MQError
from mqkit.core.features import MetricsFeature
from mqkit.core.hookspecs import for_messages, hookimpl
from mqkit.core.message import Message, posix_time
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.shards import ThreadShards
from mqkit.core.status import MetricsSnapshot, TopicMetrics
from mqkit.core.subscription import Backpressure, Subscription, Taps

__all__ = ["LATENCY_WINDOW", "MetricsPlugin"]

LATENCY_WINDOW = 10_000
"""Latency samples (of each consumer thread, and of the finished threads together) the
percentiles are computed over."""

_FIELDS = (
    "published", "delivered", "dropped", "expired", "acked",
    "nacked", "redelivered", "dead_lettered", "errors",
)  # fmt: skip
(_PUBLISHED, _DELIVERED, _DROPPED, _EXPIRED, _ACKED,
 _NACKED, _REDELIVERED, _DEAD_LETTERED, _ERRORS) = range(len(_FIELDS))  # fmt: skip
_POLICIES = frozenset(p.value for p in Backpressure)
_COUNTED_DROPS = _POLICIES | {"unsendable"}  # and what a gateway could not send a client


def _no_class(cls: type[Message], config: Config) -> bool:
    """No class: a subscription counts its own drops (read from it, not reported per drop).

    Drops without a subscription reach ``mqkit_drop`` whatever the class.
    """
    return False


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


class MetricsPlugin(MetricsFeature, Plugin):
    """Counts what happens to messages; ``broker.metrics()`` reads it.

    Counting takes no lock: each thread counts into its own shard, and a snapshot adds the
    shards up (a snapshot taken while messages flow is a consistent-enough sum of each
    counter, as with any live metrics source). A thread's shard is folded into one total when
    the thread ends, so a snapshot adds up the live threads' shards and that total.
    """

    plugin_info = PluginInfo(
        name="metrics", description="counters and delivery latency", flag="enable_metrics"
    )

    def __init__(self, broker: Broker) -> None:
        self._lock = threading.Lock()
        self._shards = ThreadShards(_Shard, _fold)
        self._local = self._shards.local
        self._last_error = ""
        self._broker = broker
        self._taps = Taps(sample=self._sample)
        self._pattern_taps = Taps(sample=self._sample, taken=self._taken)
        # Live subscriptions and the (delivered, dropped) each had when counting began; the
        # counts of cancelled ones, by key.
        self._subs: dict[Subscription, tuple[int, int]] = {}
        self._retired: dict[str, list[int]] = {}

    @property
    def shards(self) -> ThreadShards[_Shard]:
        """The per-thread counters (for tests and tooling: ``len(shards)``)."""
        return self._shards

    def _count(self, topic: str, field: int, n: int = 1) -> None:
        try:
            rows = self._local.shard.rows
        except AttributeError:
            rows = self._shards.get().rows
        row = rows.get(topic)
        if row is None:
            row = rows[topic] = [0] * len(_FIELDS)
        row[field] += n

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Ask the broker to count publishes per topic; count the live subscriptions from now."""
        broker.count_published()
        with self._lock:
            for sub in broker.subscriptions():
                self._subs.setdefault(sub, (sub.delivered, sub.dropped))

    @hookimpl
    def mqkit_broker_close(self, broker: Broker) -> None:
        """Forget the subscriptions (the broker is closing or the plugin was switched off)."""
        with self._lock:
            self._subs.clear()

    @hookimpl
    def mqkit_subscription_taps(self, broker: Broker, subscription: Subscription) -> Taps:
        """Sample every subscription's hand-outs for latency; count a pattern's per topic."""
        return self._pattern_taps if subscription.is_pattern else self._taps

    @hookimpl
    def mqkit_subscribe(self, broker: Broker, subscription: Subscription) -> None:
        """Read a new subscription's counts (a pattern's hand-outs are counted per topic)."""
        with self._lock:
            self._subs.setdefault(subscription, (0, 0))

    def _taken(self, subscription: Subscription, message: Message) -> None:
        """A pattern subscription handed ``message`` out: count it under its own topic."""
        self._count(message.topic, _DELIVERED)

    @hookimpl
    def mqkit_unsubscribe(self, broker: Broker, subscription: Subscription) -> None:
        """Keep a cancelled subscription's count of hand-outs under its key."""
        with self._lock:
            start = self._subs.pop(subscription, None)
            if start is not None:
                row = self._retired.setdefault(subscription.topic, [0, 0])
                if not subscription.is_pattern:
                    row[0] += subscription.delivered - start[0]
                row[1] += subscription.dropped - start[1]

    def _sample(self, subscription: Subscription, message: Message, weight: int) -> None:
        """A latency sample (``Taps.sample``) standing for ``weight`` hand-outs."""
        broker = self._broker
        published_at = posix_time(message)  # the stamped float: no datetime made or read
        if published_at is None:
            return
        latency = broker.clock.time() - published_at
        if latency < 0.0:  # a clock stepped back
            latency = 0.0
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shards.get()
        shard.latencies.append(latency)
        shard.latency_sum += latency * weight
        shard.latency_count += weight
        if latency > shard.latency_max:
            shard.latency_max = latency

    @hookimpl
    @for_messages(_no_class)
    def mqkit_drop(
        self, broker: Broker, subscription: Subscription | None, message: Message, reason: str
    ) -> None:
        """Count a message a gateway could not send.

        A subscription's own drops are read from its counters: narrowed away from every class,
        only drops without a subscription come here.
        """
        if subscription is None and reason in _COUNTED_DROPS:
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
    def mqkit_dead_letter(
        self,
        broker: Broker,
        topic: str,
        message: Message,
        reason: str,
        subscription: Subscription | None,
    ) -> None:
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
        for sub in broker.subscriptions():
            subscribers[sub.topic] = subscribers.get(sub.topic, 0) + 1
        for topic, routed in broker.published_counts().items():
            rows.setdefault(topic, [0] * len(_FIELDS))[_PUBLISHED] += routed
        with self._lock:
            counted = {key: list(row) for key, row in self._retired.items()}
            for sub, (delivered, dropped) in self._subs.items():
                row = counted.setdefault(sub.topic, [0, 0])
                if not sub.is_pattern:  # a pattern's hand-outs were counted per topic (taps)
                    row[0] += sub.delivered - delivered
                row[1] += sub.dropped - dropped
        for topic, (handed, lost) in counted.items():
            if handed or lost:
                row = rows.setdefault(topic, [0] * len(_FIELDS))
                row[_DELIVERED] += handed
                row[_DROPPED] += lost
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
