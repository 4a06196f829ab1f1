"""Status records: health, metrics, subscription, dead letter and cluster statistics.

All are frozen attrs classes; ``mqkit.core.convert.unstructure`` turns them into JSON-ready dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

import attrs

from mqkit.core.message import Message

__all__ = [
    "ClusterStatus",
    "DeadLetter",
    "DeadLetterStats",
    "HealthStatus",
    "MetricsSnapshot",
    "SubscriptionStats",
    "TopicMetrics",
]


@attrs.frozen(slots=True)
class SubscriptionStats:
    """Counters of one subscription: messages enqueued, dropped by policy, and its buffer."""

    received: int
    dropped: int
    queue_len: int
    queue_cap: int
    delivered: int = 0
    """Messages handed out to a consumer (withheld and evicted ones are not)."""
    buffered_bytes: int = 0
    """Estimated bytes of the buffered messages (0 unless the ``memory`` plugin meters them)."""


@attrs.frozen(slots=True, kw_only=True)
class TopicMetrics:
    """Counters of one topic (see :class:`MetricsSnapshot` for their meaning)."""

    published: int = 0
    delivered: int = 0
    dropped: int = 0
    expired: int = 0
    acked: int = 0
    nacked: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    errors: int = 0
    subscribers: int = 0


@attrs.frozen(slots=True, kw_only=True)
class MetricsSnapshot:
    """The broker's counters in total and per topic, and publish-to-delivery latency (seconds).

    Counters are kept by the ``metrics`` plugin (``enable_metrics``); with it off they stay 0
    and only the gauges ``active_topics`` and ``active_subscribers`` are filled in.
    """

    total_published: int = 0
    total_delivered: int = 0
    total_dropped: int = 0
    total_expired: int = 0
    total_acked: int = 0
    total_nacked: int = 0
    total_redelivered: int = 0
    total_dead_lettered: int = 0
    total_errors: int = 0
    active_topics: int = 0
    active_subscribers: int = 0
    average_latency: float = 0.0
    p50_latency: float = 0.0
    p99_latency: float = 0.0
    max_latency: float = 0.0
    last_error: str = ""
    topics: Mapping[str, TopicMetrics] = attrs.field(factory=lambda: MappingProxyType({}))


@attrs.frozen(slots=True, kw_only=True)
class HealthStatus:
    """The broker's health: ``healthy``, ``degraded`` (see ``problems``) or ``closed``."""

    status: str
    timestamp: datetime
    uptime: float
    total_topics: int
    total_subscribers: int
    memory_usage: int
    memory_limit: int
    metrics: MetricsSnapshot | None
    problems: tuple[str, ...] = ()


@attrs.frozen(slots=True, kw_only=True)
class DeadLetterStats:
    """Statistics of the dead letter queue."""

    enabled: bool
    topic: str = ""
    total_messages: int = 0
    current_count: int = 0
    dropped: int = 0
    last_message_time: datetime | None = None


@attrs.frozen(slots=True, kw_only=True)
class DeadLetter:
    """One dead-lettered message, with why and after how many deliveries it was given up."""

    message: Message
    original_topic: str
    reason: str
    attempts: int
    time: datetime


@attrs.frozen(slots=True, kw_only=True)
class ClusterStatus:
    """The state of cluster mode: ``disabled`` unless the cluster plugin is on.

    With the plugin: ``active``, ``degraded`` (Redis answers but a replica or a configured
    node is missing) or ``disconnected`` (Redis cannot be reached). ``peers`` are the live
    nodes besides this one; ``missing_nodes`` the configured ``cluster_nodes`` not alive.
    """

    status: str
    node_id: str = ""
    peers: tuple[str, ...] = ()
    replication_factor: int = 0
    sync_interval: float = 0.0
    total_nodes: int = 0
    healthy_nodes: int = 0
    last_sync_time: datetime | None = None
    missing_nodes: tuple[str, ...] = ()
