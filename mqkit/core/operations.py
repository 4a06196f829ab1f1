"""The broker's operations that feature plugins serve, beside the message path.

:class:`~mqkit.core.broker.Broker` holds the message path (publish, route, buffer, subscribe)
and the plugins; its base class :class:`FeatureOperations`, here, holds its public operations
that hand over to a plugin's feature: acknowledgement, transactions, dead letters, persistence,
the protocol gateways and the cluster, and the observability that reads them (with the plugin
API that asks for plugins, features and topic counts). Each operation checks that its plugin
is there (``_require``: ``BrokerClosedError``, then the feature's ``FeatureNotEnabledError``)
and calls the feature; ``@reported`` (:mod:`mqkit.core.reporting`) reports its failure through
``mqkit_error``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs

from mqkit.core.checks import int_limit
from mqkit.core.config import Config
from mqkit.core.errors import (
    AckNotSupportedError,
    ClusterDisabledError,
    DeadLetterNotSupportedError,
    FeatureNotEnabledError,
    MessageExpiredError,
    MQError,
    PersistenceDisabledError,
    PluginError,
    ProtocolDisabledError,
    TransactionNotFoundError,
    TransactionNotSupportedError,
)
from mqkit.core.features import (
    AckFeature,
    ClusterFeature,
    DeadLetterFeature,
    Feature,
    MemoryFeature,
    MetricsFeature,
    PersistenceFeature,
    ProtocolFeature,
    TransactionFeature,
)
from mqkit.core.handlers import Handlers, HandlerT
from mqkit.core.hooks import Hooks
from mqkit.core.message import (
    AckMessage,
    AckTTLMessage,
    Message,
    PriorityMessage,
    PriorityTTLMessage,
    TTLMessage,
    check_message,
)
from mqkit.core.plugins import PluginManager, enable_hint
from mqkit.core.reporting import reported
from mqkit.core.routing import Routing
from mqkit.core.settings import Settings
from mqkit.core.status import (
    ClusterStatus,
    DeadLetter,
    DeadLetterStats,
    HealthStatus,
    MetricsSnapshot,
)
from mqkit.core.subscription import SubOptions, Subscription
from mqkit.core.timers import Clock
from mqkit.core.topics import filter_matcher, normalize_topic, pattern_matcher

if TYPE_CHECKING:
    from mqkit.core.broker import Broker

__all__ = ["FeatureOperations", "Transaction"]

log = logging.getLogger("mqkit")

F = TypeVar("F", bound=Feature)
S = TypeVar("S", bound=Settings)


class Transaction:
    """What ``Broker.transaction()`` yields: publish into the open transaction."""

    def __init__(self, broker: FeatureOperations, tx_id: str) -> None:
        self._broker = broker
        self.id = tx_id
        """The transaction id."""
        self._token: object | None = None  # the transaction the first publish joined

    def publish(self, topic: str, message: Message) -> None:
        """Hold ``message`` for ``topic`` until the transaction commits.

        Raises ``TransactionTimeoutError`` when the transaction this object began has timed
        out (``TransactionNotFoundError`` when it ended otherwise): a new one never silently
        takes its place, even under the same id.
        """
        self._token = self._broker._hold(topic, message, self.id, self._token)


class FeatureOperations:
    """The operations that feature plugins serve: the base of the broker, its one subclass.

    ``self`` is always a :class:`~mqkit.core.broker.Broker`; the annotations below name what
    these methods use of it.
    """

    clock: Clock
    _config: Config
    _lock: threading.RLock
    _closed: bool
    _pm: PluginManager
    _hooks: Hooks
    _routing: Routing
    _features: dict[str, Feature]
    _sections: dict[type[Settings], Settings]
    _feature_list: tuple[Feature, ...]
    _ack: AckFeature | None
    _plugin_errors: dict[str, int]
    _dead_letters_dropped: int
    _dead_letters_refused: int
    _started_at: float
    _now: Callable[[], datetime]
    _check_open: Callable[[], None]
    _check_message: Callable[..., Any]
    _failed: Callable[[str, str, MQError], None]
    _dispatch: Callable[..., None]
    publish: Callable[[str, Message], None]
    stamp: Callable[[str, Message], Message]
    topics: Callable[[], list[str]]

    @property
    def _broker(self) -> Broker:
        """``self``, as the broker it is (for the hooks, which take the broker)."""
        return cast("Broker", self)

    # -- plugins and features (plugin API) ---------------------------------------------------------

    def settings(self, kind: type[S]) -> S:
        """The settings section of class ``kind`` this broker runs with (plugin API).

        ``broker.settings(MQTTSettings)`` is the ``[mqtt]`` section: what the config gives,
        the class's defaults otherwise. ``PluginError`` when no plugin declares ``kind``.
        """
        found = self._sections.get(kind)
        if not isinstance(found, kind):
            raise PluginError.because(
                f"no plugin of this broker declares the settings class {kind.__name__}"
            )
        return found

    def plugin_names(self) -> list[str]:
        """Names of the plugins this broker runs, in registration order."""
        return [name for name, _ in self._pm.list_name_plugin()]

    def has_plugin(self, name: str) -> bool:
        """Whether a plugin of this name is registered."""
        return self._pm.has_plugin(name)

    def get_plugin(self, name: str) -> object | None:
        """The registered plugin object of this name, or None."""
        return self._pm.get_plugin(name)

    @property
    def hooks(self) -> Hooks:
        """The typed hook facade, for plugins that fire hooks themselves (plugin API)."""
        return self._hooks

    def has_feature(self, key: str) -> bool:
        """Whether a plugin provides the feature ``key`` (``"deadletter"``, ...) (plugin API)."""
        return key in self._features

    def features(self) -> tuple[Feature, ...]:
        """The feature objects the plugins provide (plugin API)."""
        return self._feature_list

    def _feature(self, kind: type[F], key: str | None = None) -> F | None:
        found = self._features.get(key or kind.feature)
        return found if isinstance(found, kind) else None

    def _ack_feature(self) -> AckFeature | None:
        return self._ack

    def _require(self, kind: type[F], error: type[FeatureNotEnabledError]) -> F:
        self._check_open()
        found = self._feature(kind)
        if found is None:
            raise error.because(enable_hint(kind.feature))
        return found

    # -- acknowledgement ---------------------------------------------------------------------------

    @reported()
    def ack(self, topic: str, ack_id: str) -> None:
        """Acknowledge ``ack_id`` on the subscriptions of ``topic`` that hold it."""
        self._require(AckFeature, AckNotSupportedError).ack(topic, ack_id)

    @reported()
    def nack(self, topic: str, ack_id: str, requeue: bool = True) -> None:
        """Reject ``ack_id``: redeliver it (``requeue``) or dead-letter it at once."""
        self._require(AckFeature, AckNotSupportedError).nack(topic, ack_id, requeue)

    # -- transactions ------------------------------------------------------------------------------

    def publish_with_transaction(self, topic: str, message: Message, tx_id: str) -> None:
        """Hold ``message`` in transaction ``tx_id`` (begun by its first message).

        A timed-out ``tx_id`` is not begun again: ``TransactionTimeoutError`` until its
        commit or rollback has reported the timeout.
        """
        self._hold(topic, message, tx_id, None)

    @reported("publish_with_transaction")
    def _hold(self, topic: str, message: Message, tx_id: str, token: object | None) -> object:
        """``publish_with_transaction`` into transaction ``token`` (any, when None)."""
        feature = self._transactions()
        stamped = self.stamp(topic, message)
        hooks = self._hooks
        if hooks.publish_on and hooks.publish(self._broker, stamped.topic, stamped):
            return token
        memory = self._feature(MemoryFeature)
        if memory is not None:  # what a transaction holds counts against the limit
            memory.check((stamped,))
        return feature.add(tx_id, stamped, token)

    @reported()
    def commit_transaction(self, tx_id: str) -> None:
        """Deliver every message of ``tx_id`` together (``TransactionNotFoundError`` if none)."""
        self._transactions().commit(tx_id)

    @reported()
    def rollback_transaction(self, tx_id: str) -> None:
        """Discard ``tx_id`` and its messages (``TransactionNotFoundError`` if none)."""
        self._transactions().rollback(tx_id)

    def _transactions(self) -> TransactionFeature:
        return self._require(TransactionFeature, TransactionNotSupportedError)

    @reported("transaction")
    def _begin(self) -> TransactionFeature:
        """``transaction()``'s check (``@reported`` wraps functions, not a generator's steps)."""
        return self._transactions()

    @reported("commit_transaction")
    def _commit(self, feature: TransactionFeature, tx_id: str, token: object) -> None:
        """``transaction()``'s commit of the very transaction its block joined."""
        feature.commit(tx_id, token)

    @contextlib.contextmanager
    def transaction(self, tx_id: str | None = None) -> Iterator[Transaction]:
        """Open a transaction: commit on normal exit, roll back on an exception.

        ``with broker.transaction() as tx: tx.publish("orders", msg)``. All or nothing: a
        block whose transaction timed out (at any instant, even inside a publish) raises
        ``TransactionTimeoutError`` from its next ``tx.publish`` and from its exit, and
        delivers none of its messages.
        """
        feature = self._begin()
        tx = Transaction(self, tx_id if tx_id is not None else uuid.uuid4().hex)
        try:
            yield tx
        except BaseException:
            if tx._token is not None:
                # Its own transaction only; one that ended meanwhile has nothing to undo.
                with contextlib.suppress(TransactionNotFoundError):
                    feature.rollback(tx.id, tx._token)
            elif feature.is_open(tx.id):
                self.rollback_transaction(tx.id)
            raise
        # A block that published nothing has nothing to commit; one whose transaction ended
        # (timed out) gets the error instead of a silent loss.
        if tx._token is not None:
            self._commit(feature, tx.id, tx._token)
        elif feature.is_open(tx.id):
            self.commit_transaction(tx.id)

    # -- dead letters ------------------------------------------------------------------------------

    @reported(topic="original_topic")
    def publish_to_dead_letter(self, original_topic: str, message: Message, reason: str) -> None:
        """Put ``message`` into the dead letter queue with ``reason``."""
        feature = self._dead_letter_queue()
        topic = normalize_topic(original_topic)  # replay publishes to it
        self._check_message(message)
        check_message(message)
        feature.add(topic, message, reason, message.attempt)
        self._hooks.dead_letter(self._broker, topic, message, reason)

    def dead_letter(
        self,
        topic: str,
        message: Message,
        reason: str,
        attempts: int,
        subscription: Subscription | None = None,
    ) -> bool:
        """Hand a given-up message to the dead letter queue (plugin API: the ack/ttl sink).

        ``subscription`` is the subscription whose delivered copy is given up, if any (passed on
        to ``mqkit_dead_letter``). Returns True when the DLQ took it. With the DLQ off, or when
        it refuses the message (``max_memory_usage``), the message is dropped, counted in
        ``dead_letter_stats()``, reported through ``mqkit_drop`` and by ``health_check()``.
        """
        feature = self._feature(DeadLetterFeature)
        if feature is not None and not self._closed:
            try:
                feature.add(topic, message, reason, attempts)
            except MQError as exc:
                log.error("dead letter of %r from %r failed: %s", message.id, topic, exc)
                with self._lock:
                    self._dead_letters_refused += 1
                self._hooks.drop(self._broker, None, message, "dead letter refused")
                return False
            self._hooks.dead_letter(self._broker, topic, message, reason, subscription)
            return True
        with self._lock:
            self._dead_letters_dropped += 1
        self._hooks.drop(self._broker, None, message, "dead letter queue off")
        return False

    def dead_letter_stats(self) -> DeadLetterStats:
        """Statistics of the dead letter queue (``enabled=False`` when it is off).

        ``dropped`` counts every dead letter lost: evicted by ``max_dead_letters``, given up
        while the queue was off, or refused by it.
        """
        feature = self._feature(DeadLetterFeature)
        lost = self._dead_letters_dropped + self._dead_letters_refused
        if feature is None:
            return DeadLetterStats(enabled=False, dropped=lost)
        stats = feature.stats()
        return attrs.evolve(stats, dropped=stats.dropped + lost) if lost else stats

    @reported()
    def dead_letters(self, limit: int = 0) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters (all when ``limit <= 0``), left in the queue."""
        feature = self._dead_letter_queue()
        return list(feature.dead_letters(int_limit(limit)))

    @reported()
    def replay_dead_letters(self, limit: int = 0) -> int:
        """Remove the oldest ``limit`` dead letters and re-publish each to its original topic.

        Returns how many were re-published. A record whose message has expired meanwhile is
        removed without being re-published (TTL: it must never be delivered). If a re-publish
        fails, that record and the later ones stay in the queue and the error propagates.
        """
        feature = self._dead_letter_queue()
        limit = int_limit(limit)
        done = republished = 0
        try:
            for record in feature.dead_letters(limit):
                try:
                    self.publish(record.original_topic, attrs.evolve(record.message, attempt=1))
                except MessageExpiredError:
                    pass
                else:
                    republished += 1
                done += 1
        finally:
            if done:  # only what was handled leaves the queue (take(0) would take all)
                feature.take(done)
        return republished

    def _dead_letter_queue(self) -> DeadLetterFeature:
        return self._require(DeadLetterFeature, DeadLetterNotSupportedError)

    # -- persistence -------------------------------------------------------------------------------

    @reported()
    def recover_messages(self, topic: str, limit: int = 0) -> list[Message]:
        """The oldest ``limit`` stored messages of ``topic`` in publish order (all: ``<= 0``)."""
        feature = self._require(PersistenceFeature, PersistenceDisabledError)
        limit = int_limit(limit)
        return list(feature.recover(topic, limit))

    def replay_messages(self, topic: str, limit: int = 0) -> int:
        """Re-publish the oldest ``limit`` stored messages of ``topic``; return how many."""
        messages = self.recover_messages(topic, limit)
        self._dispatch(messages, check=False)
        return len(messages)

    # -- protocols and cluster ---------------------------------------------------------------------

    def _protocol(self, name: str) -> tuple[str, int]:
        self._check_open()
        feature = self._feature(ProtocolFeature, name)
        if feature is None:
            raise ProtocolDisabledError.because(f"{name.upper()}: {enable_hint(name)}")
        return feature.start()

    @reported()
    def start_mqtt_server(self) -> tuple[str, int]:
        """Start the MQTT gateway; return its bound ``(host, port)``."""
        return self._protocol("mqtt")

    @reported()
    def start_amqp_server(self) -> tuple[str, int]:
        """Start the AMQP 0-9-1 gateway; return its bound ``(host, port)``."""
        return self._protocol("amqp")

    @reported()
    def publish_to_cluster(self, topic: str, message: Message) -> None:
        """Publish to every node of the cluster (``ClusterDisabledError`` when off)."""
        feature = self._require(ClusterFeature, ClusterDisabledError)
        feature.publish(topic, message)

    @reported()
    def publish_batch_to_cluster(self, topic: str, messages: Sequence[Message]) -> None:
        """Publish several messages to ``topic`` across the cluster, pipelined, in order."""
        feature = self._require(ClusterFeature, ClusterDisabledError)
        feature.publish_batch(topic, messages)

    @reported()
    def subscribe_from_cluster(
        self, topic: str, opts: SubOptions | None = None, *, start: str = "now"
    ) -> Subscription:
        """Subscribe to ``topic`` across the cluster (``ClusterDisabledError`` when off).

        ``start`` is where the subscription begins: ``"now"`` (the default), ``"earliest"``
        (every message the cluster retains), a stream id ``"<ms>-<seq>"`` (the messages after
        it) or a Unix time in milliseconds ``"<ms>"`` (the messages from then on). A ``start``
        that is none of these raises ``ClusterError`` before anything is subscribed.
        """
        feature = self._require(ClusterFeature, ClusterDisabledError)
        return feature.subscribe(topic, opts, start)

    @reported(topic="topic_filter")
    def subscribe_from_cluster_filter(
        self, topic_filter: str, opts: SubOptions | None = None
    ) -> Subscription:
        """Subscribe to every cluster topic an MQTT-style filter matches (``orders/+/paid``).

        The filter is checked as ``subscribe_filter`` checks it (same errors); topics that
        first appear after the call are read from their first message. A filter without
        ``+``/``#`` is ``subscribe_from_cluster`` of that topic.
        """
        feature = self._require(ClusterFeature, ClusterDisabledError)
        text, matches = filter_matcher(topic_filter)
        if matches is None:
            return feature.subscribe(text, opts)
        return feature.subscribe_matching(text, matches, opts)

    @reported(topic="pattern")
    def subscribe_from_cluster_pattern(
        self, pattern: str, opts: SubOptions | None = None
    ) -> Subscription:
        """Subscribe to every cluster topic a glob pattern matches (``orders.*``).

        The pattern is checked as ``subscribe_pattern`` checks it (same errors); a pattern
        without glob syntax is ``subscribe_from_cluster`` of that topic.
        """
        feature = self._require(ClusterFeature, ClusterDisabledError)
        text, matches = pattern_matcher(pattern)
        if matches is None:
            return feature.subscribe(text, opts)
        return feature.subscribe_matching(text, matches, opts)

    def cluster_status(self) -> ClusterStatus:
        """The cluster's state (``status="disabled"`` when cluster mode is off)."""
        feature = self._feature(ClusterFeature)
        return ClusterStatus(status="disabled") if feature is None else feature.status()

    # -- observability -----------------------------------------------------------------------------

    def count_published(self) -> None:
        """Start counting the messages routed to each topic (``published_counts``; plugin API).

        The ``metrics`` plugin asks at start. Counting costs a publish one C-level step.
        """
        self._routing.count_published()

    def published_counts(self) -> dict[str, int]:
        """Messages routed to each topic since ``count_published`` (plugin API)."""
        return self._routing.published_counts()

    def memory_usage(self) -> int:
        """Estimated bytes the broker holds (0 when the ``memory`` plugin is off)."""
        feature = self._feature(MemoryFeature)
        return 0 if feature is None else feature.usage()

    def metrics(self) -> MetricsSnapshot:
        """Counters and latency; the gauges are always filled in."""
        feature = self._feature(MetricsFeature)
        snap = MetricsSnapshot() if feature is None else feature.snapshot()
        topics, subs = self._routing.sizes()
        return attrs.evolve(snap, active_topics=topics, active_subscribers=subs)

    def health_check(self) -> HealthStatus:
        """``healthy``, ``degraded`` (with ``problems``) or ``closed``."""
        problems: list[str] = []
        if not self._closed:
            with self._lock:
                errors = dict(self._plugin_errors)
                dropped = self._dead_letters_dropped
                refused = self._dead_letters_refused
            problems += [f"plugin {p!r} failed {n} time(s)" for p, n in sorted(errors.items())]
            if dropped:
                problems.append(f"{dropped} dead letter(s) dropped: the dead letter queue is off")
            if refused:
                problems.append(
                    f"{refused} dead letter(s) lost: the dead letter queue refused them"
                )
            problems += self._hooks.health(self._broker)
        metrics = self.metrics()
        status = "closed" if self._closed else ("degraded" if problems else "healthy")
        return HealthStatus(
            status=status,
            timestamp=self._now(),
            uptime=self.clock.monotonic() - self._started_at,
            total_topics=len(self.topics()),
            total_subscribers=metrics.active_subscribers,
            memory_usage=self.memory_usage(),
            memory_limit=self._config.max_memory_usage,
            metrics=metrics if self._config.enable_metrics else None,
            problems=tuple(problems),
        )

    # -- typed publishes: check the class and the features it needs, then publish -------------

    def _typed_publish(
        self, topic: str, message: Message, kind: type[Message], *needs: str
    ) -> None:
        self._check_open()
        self._check_message(message, kind)
        for need in needs:
            self._need(need)
        self.publish(topic, message)

    def _need(self, feature: str) -> None:
        if feature == "ack":
            if self._ack_feature() is None:
                raise AckNotSupportedError.because(enable_hint(feature))
        elif not self._pm.has_plugin(feature):
            raise FeatureNotEnabledError.because(f"{feature}: {enable_hint(feature)}")

    @reported()
    def publish_priority(self, topic: str, message: PriorityMessage) -> None:
        """Publish a :class:`PriorityMessage` (needs the ``priority`` plugin)."""
        self._typed_publish(topic, message, PriorityMessage, "priority")

    @reported()
    def publish_ttl(self, topic: str, message: TTLMessage) -> None:
        """Publish a :class:`TTLMessage` (needs the ``ttl`` plugin)."""
        self._typed_publish(topic, message, TTLMessage, "ttl")

    @reported()
    def publish_with_ack(self, topic: str, message: AckMessage) -> None:
        """Publish an :class:`AckMessage` (needs ``enable_ack_support``)."""
        self._typed_publish(topic, message, AckMessage, "ack")

    @reported()
    def publish_priority_ttl(self, topic: str, message: PriorityTTLMessage) -> None:
        """Publish a :class:`PriorityTTLMessage` (needs ``priority`` and ``ttl``)."""
        self._typed_publish(topic, message, PriorityTTLMessage, "priority", "ttl")

    @reported()
    def publish_with_ack_ttl(self, topic: str, message: AckTTLMessage) -> None:
        """Publish an :class:`AckTTLMessage` (needs ack support and ``ttl``)."""
        self._typed_publish(topic, message, AckTTLMessage, "ack", "ttl")

    # -- handlers (mqkit/core/handlers.py) ---------------------------------------------------------

    _app: Handlers | None = None

    def _handlers(self) -> Handlers:
        with self._lock:
            if self._app is None:
                self._app = Handlers(self._broker)
            return self._app

    def subscriber(
        self,
        topic: str,
        *,
        concurrency: int = 1,
        group: str | None = None,
        options: SubOptions | None = None,
        cluster: bool = False,
    ) -> Callable[[HandlerT], HandlerT]:
        """Decorate a sync or async function to be called for each message of ``topic``.

        ``topic`` is a topic, a glob pattern or an MQTT-style filter (``a/+/c``, ``a/#``: see
        :meth:`subscribe_filter`); subscribing happens here, the calls start with
        :meth:`run`/:meth:`serve` (at once if they already run). The first parameter gets the
        payload structured into its annotated type (attrs class, dataclass, TypedDict,
        builtins); a parameter annotated :class:`Message` (or a subclass) gets the message.
        Return = ack, raise = nack (retries, then the dead letter queue), a payload that does
        not structure = dead-lettered at once. ``concurrency`` bounds the messages in flight;
        handlers of one ``group`` on one topic share a subscription (each message goes to one
        of them). ``options`` are the subscription's. ``cluster=True`` consumes the cluster
        topic instead (:meth:`subscribe_from_cluster`): with a ``group``, its handlers on every
        node share the messages (a consumer group); without, each broker gets every message.
        The function is returned unchanged.
        """
        return self._handlers().subscriber(
            topic, concurrency=concurrency, group=group, options=options, cluster=cluster
        )

    def publisher(self, topic: str) -> Callable[[HandlerT], HandlerT]:
        """Decorate a handler to publish its return value (not None) to ``topic`` too."""
        return self._handlers().publisher(topic)

    def request(self, topic: str, payload: object, timeout: float = 5.0) -> Message:
        """Publish ``payload`` to ``topic`` and wait for the reply (``RequestTimeoutError``).

        The request carries ``meta["reply_to"]`` and ``meta["correlation_id"]``; a handler's
        return value goes back as the reply. ``payload`` may be a :class:`Message`.
        """
        return self._handlers().request(topic, payload, timeout)

    def arequest(self, topic: str, payload: object, timeout: float = 5.0) -> Awaitable[Message]:
        """:meth:`request` for asyncio: ``reply = await broker.arequest(topic, payload)``."""
        return self._handlers().arequest(topic, payload, timeout)

    def run(self) -> None:
        """Run the handlers until SIGINT/SIGTERM (from the main thread) or :meth:`close`.

        Blocks. Stops cleanly: stop taking, finish what is in flight, then close the broker.
        """
        self._handlers().run()

    async def serve(self) -> None:
        """Run the handlers inside the running event loop until cancelled or closed.

        Stops as :meth:`run` does, then closes the broker.
        """
        await self._handlers().serve()
