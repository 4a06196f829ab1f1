"""Features: the broker API that plugins provide, as abstract base classes.

A plugin that backs part of the public API (``publish_with_transaction``, ``ack``,
``dead_letters``, ...) subclasses one of these; the broker finds it among the registered plugins
by its ``feature`` key and forwards to it. With no such plugin the broker method raises the
feature's :class:`~mqkit.FeatureNotEnabledError` subclass. The core never imports a plugin;
plugins meet each other only through hooks and these interfaces.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from mqkit.core.message import Message
from mqkit.core.shards import ByteShard
from mqkit.core.status import ClusterStatus, DeadLetter, DeadLetterStats, MetricsSnapshot

if TYPE_CHECKING:
    from mqkit.core.subscription import SubOptions, Subscription

__all__ = [
    "AckFeature",
    "ClusterFeature",
    "DeadLetterFeature",
    "Feature",
    "MemoryFeature",
    "MetricsFeature",
    "PersistenceFeature",
    "ProtocolFeature",
    "TransactionFeature",
]


class Feature(abc.ABC):
    """Base of every feature interface. ``feature`` names the slot it fills (one per broker)."""

    feature: ClassVar[str]

    held_shard: ByteShard | None = None
    """Where a feature that holds messages outside the buffers may keep their bytes (what
    :meth:`held_bytes` says; ``shard.bytes``, changed under the feature's own lock): the broker
    adds it to its byte count while the feature is registered, and a memory limit then reads
    that one count instead of calling :meth:`held_bytes` on every publish."""

    def held_bytes(self) -> int:
        """Estimated bytes of messages this feature holds (for the memory limit)."""
        return 0


class AckFeature(Feature):
    """Per-subscription acknowledgement (the ``ack`` plugin)."""

    feature = "ack"

    @abc.abstractmethod
    def ack(self, topic: str, ack_id: str) -> None:
        """Acknowledge ``ack_id`` on every subscription of ``topic`` that holds it."""

    @abc.abstractmethod
    def nack(self, topic: str, ack_id: str, requeue: bool = True) -> None:
        """Reject ``ack_id`` on every subscription of ``topic`` that holds it."""

    @abc.abstractmethod
    def ack_subscription(self, subscription: Subscription, ack_id: str) -> None:
        """Acknowledge ``ack_id`` on ``subscription`` only."""

    @abc.abstractmethod
    def nack_subscription(self, subscription: Subscription, ack_id: str, requeue: bool) -> None:
        """Reject ``ack_id`` on ``subscription`` only."""


class TransactionFeature(Feature):
    """Transactions (the ``transactions`` plugin)."""

    feature = "transactions"

    @abc.abstractmethod
    def add(self, tx_id: str, message: Message, token: object | None = None) -> object:
        """Hold ``message`` (stamped and checked) in transaction ``tx_id``, beginning it.

        Returns a token for the transaction the message joined. Given ``token``, hold it in
        that transaction only: if it has ended (even if ``tx_id`` was begun again since), raise
        how it ended (``TransactionTimeoutError`` after a timeout). A timed-out id is never
        begun again implicitly.
        """

    @abc.abstractmethod
    def commit(self, tx_id: str, token: object | None = None) -> None:
        """Deliver every held message of ``tx_id`` (of transaction ``token``) at once, or none."""

    @abc.abstractmethod
    def rollback(self, tx_id: str, token: object | None = None) -> None:
        """Discard ``tx_id`` (transaction ``token``, when given) and its messages."""

    @abc.abstractmethod
    def is_open(self, tx_id: str) -> bool:
        """Whether ``tx_id`` is begun and neither committed, rolled back nor timed out."""


class DeadLetterFeature(Feature):
    """The dead letter queue (the ``deadletter`` plugin)."""

    feature = "deadletter"

    @abc.abstractmethod
    def add(self, original_topic: str, message: Message, reason: str, attempts: int) -> None:
        """Take ``message`` into the dead letter queue."""

    @abc.abstractmethod
    def stats(self) -> DeadLetterStats:
        """Statistics of the queue."""

    @abc.abstractmethod
    def dead_letters(self, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` records (all when ``limit <= 0``), left in place."""

    @abc.abstractmethod
    def take(self, limit: int) -> list[DeadLetter]:
        """Remove and return the oldest ``limit`` records (all when ``limit <= 0``)."""


class PersistenceFeature(Feature):
    """The message store (the ``persistence`` plugin)."""

    feature = "persistence"

    @abc.abstractmethod
    def recover(self, topic: str, limit: int) -> list[Message]:
        """The oldest ``limit`` stored messages of ``topic`` (all when ``limit <= 0``)."""


class MetricsFeature(Feature):
    """Counters and latency (the ``metrics`` plugin)."""

    feature = "metrics"

    @abc.abstractmethod
    def snapshot(self) -> MetricsSnapshot:
        """The counters now (the broker fills in the subscription gauges)."""


class MemoryFeature(Feature):
    """Memory accounting (the ``memory`` plugin)."""

    feature = "memory"

    @abc.abstractmethod
    def usage(self) -> int:
        """Estimated bytes the broker holds now."""

    def check(self, messages: Sequence[Message]) -> None:
        """Refuse (``MemoryLimitExceededError``) messages that would not fit under the limit.

        The broker asks before a transaction holds a message (publish calls are checked in
        the plugin's own hooks). Without a limit, nothing is refused.
        """


class ClusterFeature(Feature):
    """Cluster mode (the ``cluster`` plugin)."""

    feature = "cluster"

    @abc.abstractmethod
    def publish(self, topic: str, message: Message) -> None:
        """Publish to every node of the cluster; return once the cluster holds the message."""

    @abc.abstractmethod
    def publish_batch(self, topic: str, messages: Sequence[Message]) -> None:
        """Publish ``messages`` to ``topic`` across the cluster in one round trip, in order."""

    @abc.abstractmethod
    def subscribe(self, topic: str, options: SubOptions | None, start: str = "now") -> Subscription:
        """Subscribe to ``topic`` across the cluster, from ``start`` on.

        ``start``: ``"now"`` (what is published from now on), ``"earliest"`` (everything the
        cluster retains), a stream id ``"<ms>-<seq>"`` (what came after it) or a Unix time in
        milliseconds ``"<ms>"`` (what came at or after it); anything else is a ``ClusterError``.
        """

    @abc.abstractmethod
    def subscribe_matching(
        self, key: str, matches: Callable[[str], bool], options: SubOptions | None
    ) -> Subscription:
        """Subscribe to every cluster topic ``matches`` accepts, now and as they appear.

        ``key`` is the checked filter or pattern (it names the subscription); each message
        keeps its own concrete ``topic``.
        """

    @abc.abstractmethod
    def status(self) -> ClusterStatus:
        """The cluster's state."""


class ProtocolFeature(Feature):
    """A wire-protocol gateway (``mqtt``, ``amqp``); ``feature`` is the protocol name."""

    @abc.abstractmethod
    def start(self) -> tuple[str, int]:
        """Start serving (idempotent) and return the bound ``(host, port)``."""
