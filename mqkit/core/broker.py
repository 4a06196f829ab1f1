"""The broker: topics, subscriptions, the publish path, and the plugins it hosts.

Follow a message from :meth:`Broker.publish`: the topic is looked up in the route cache (a
valid topic's subscriptions, exact and pattern, computed once per subscription change); the
message is checked and copied with ``topic``/``time`` stamped; ``mqkit_publish`` may reject it
or take it over; ``mqkit_accept`` may store it; it is appended to each subscription's buffer
under that subscription's backpressure policy; a consumer's ``Subscription.get`` pops it and
``mqkit_deliver``/``mqkit_delivered`` see it handed out. With no plugin, none of those hooks
costs more than a flag test.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Self, TypeVar

import attrs

from mqkit.core.checks import int_limit
from mqkit.core.config import Config
from mqkit.core.errors import (
    AckNotSupportedError,
    BrokerClosedError,
    ClusterDisabledError,
    DeadLetterNotSupportedError,
    FeatureNotEnabledError,
    InvalidConfigError,
    InvalidMessageError,
    LimitExceededError,
    MessageExpiredError,
    MQError,
    PersistenceDisabledError,
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
from mqkit.core.hooks import Hooks
from mqkit.core.message import (
    AckMessage,
    AckTTLMessage,
    Message,
    PriorityMessage,
    PriorityTTLMessage,
    Stamper,
    TTLMessage,
    _stampers,
    check_message,
    estimate_size,
    stamper,
)
from mqkit.core.plugins import PluginManager, info_of, instantiate, plan_plugins
from mqkit.core.shards import ThreadShards
from mqkit.core.status import (
    ClusterStatus,
    DeadLetter,
    DeadLetterStats,
    HealthStatus,
    MetricsSnapshot,
)
from mqkit.core.subscription import SLOT_BYTES, SubOptions, Subscription, check_options
from mqkit.core.timers import Clock, TimerService
from mqkit.core.topics import compile_pattern, is_pattern, normalize_topic

__all__ = ["Broker", "Transaction"]

log = logging.getLogger("mqkit")

F = TypeVar("F", bound=Feature)
_ROUTE_CACHE_MAX: Final = 4096
_DEFAULT_OPTIONS: Final = SubOptions()
_REPORTED: Final = "_mqkit_reported"  # set on an MQError once mqkit_error has seen it


class _Route:
    """A valid topic and the subscriptions (exact, then pattern) a publish to it reaches.

    ``ranked``: every subscription of the route has its plugin-supplied buffer (or none is
    supplied): routing a message that wants one needs no look. ``published`` counts the
    messages routed here, when a plugin asked for topic counts (``count_published``).
    """

    __slots__ = ("published", "puts", "ranked", "subs", "topic")

    def __init__(
        self,
        topic: str,
        subs: tuple[Subscription, ...],
        published: itertools.count[int] | None,
        ranked: bool,
    ) -> None:
        self.topic = topic
        self.subs = subs
        self.puts = tuple(sub._put for sub in subs)
        """Each subscription's ``_put``, bound once: the publish loop calls them directly."""
        self.published = published
        self.ranked = ranked


class _ByteShard:
    """One thread's share of the buffered bytes (see ``Broker.buffered_bytes``)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


def _fold_bytes(total: _ByteShard, shard: _ByteShard) -> None:
    total.bytes += shard.bytes


class Transaction:
    """What ``Broker.transaction()`` yields: publish into the open transaction."""

    def __init__(self, broker: Broker, tx_id: str) -> None:
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


class Broker:
    """An in-process message broker. Thread-safe; ``with Broker() as broker: ...``.

    ``config`` defaults to ``Config()`` (the seed's defaults) and is validated here;
    ``plugins`` adds plugin objects to those the config selects. ``clock`` replaces the real
    clock (tests pass :class:`~mqkit.testing.FakeClock`). Construction never half-works: on any
    error, whatever was started is stopped again before the error propagates.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        plugins: Sequence[object] = (),
        clock: Clock | None = None,
    ) -> None:
        config = Config() if config is None else config
        if not isinstance(config, Config):
            raise InvalidConfigError.because(f"expected a Config, got {type(config).__name__}")
        config.validate()
        self._config = config
        self.clock: Clock = clock if clock is not None else Clock()
        """The broker's clock (plugin API)."""
        self.timers = TimerService(self.clock)
        """The broker's timer service: one thread for every timed action (plugin API)."""
        self._now = self.clock.now
        self._stamp_time = self.clock.time  # POSIX seconds: see Message.time
        self._lock = threading.RLock()
        self._closed = False
        self._closing = False
        self._started_at = self.clock.monotonic()
        self._sub_ids = itertools.count(1)
        self._exact: dict[str, list[Subscription]] = {}
        self._patterns: dict[str, tuple[Callable[[str], bool], list[Subscription]]] = {}
        self._routes: dict[str, _Route] = {}
        self._published: dict[str, itertools.count[int]] | None = None
        self._bytes = ThreadShards(_ByteShard, _fold_bytes)
        self._bytes_local = self._bytes.local
        self._admissions: tuple[Callable[[int, int], None], ...] = ()
        self._sized = False  # admissions: copies are built with their size (estimate_size)
        self._plugin_errors: dict[str, int] = {}
        self._dead_letters_dropped = 0  # given up while the DLQ was off
        self._dead_letters_refused = 0  # given up, and the DLQ refused them (memory limit)
        self._extra_plugins = tuple(plugins)
        self._pm = PluginManager()
        self._features: dict[str, Feature] = {}
        self._feature_list: tuple[Feature, ...] = ()
        self._ack: AckFeature | None = None
        self._hooks = Hooks(None, self._report_plugin_error)
        try:
            added = self._apply_plugins(config)
            self._hooks.broker_start(self, frozenset(added))
        except BaseException:
            self._hooks.broker_close(self)
            self.timers.close()
            raise

    # -- plugins -----------------------------------------------------------------------------------

    def _apply_plugins(self, config: Config, *, running: bool = False) -> list[str]:
        """Register and unregister plugins so that the set matches ``config``; return added.

        ``running`` (an ``update_config``) refuses to toggle a plugin that cannot be switched
        on or off at run time.
        """
        plan = plan_plugins(config, self._extra_plugins)
        current = dict(self._pm.list_name_plugin())
        removed = [n for n in current if n not in plan]
        added_names = [n for n in plan if n not in current]
        for name in removed + added_names:
            target = plan.get(name, current.get(name))
            info = info_of(target)
            if running and info is not None and not info.runtime_toggle:
                what = info.flag or name
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: {what} cannot be changed while the broker "
                    "runs (close it and build a new one)",
                    field=info.flag,
                )
        pm = self._pm
        registered: list[str] = []
        try:
            for name in added_names:
                pm.register_checked(instantiate(plan[name]), name)
                registered.append(name)
            features = pm.features()
        except BaseException:
            for name in registered:
                pm.unregister(name=name)
            raise
        if removed:
            self._hooks.broker_close(self, frozenset(removed))
            for name in removed:
                pm.unregister(name=name)
            features = pm.features()
        self._features = features
        self._feature_list = tuple(features.values())
        self._ack = self._feature(AckFeature)  # Subscription.ack asks on every ack
        self._hooks = Hooks(pm, self._report_plugin_error, config)
        return added_names

    def _report_plugin_error(self, plugin: str, hook: str, exc: BaseException) -> None:
        with self._lock:
            self._plugin_errors[plugin] = self._plugin_errors.get(plugin, 0) + 1
        log.error("plugin %r failed in %s: %r", plugin, hook, exc, exc_info=exc)

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

    def _require(self, kind: type[F], error: type[FeatureNotEnabledError], why: str) -> F:
        self._check_open()
        found = self._feature(kind)
        if found is None:
            raise error.because(why)
        return found

    # -- topics and routing ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError()

    def _route(self, topic: str) -> _Route:
        """Return the route for a raw topic, computing (and caching) it; validates the topic."""
        self._check_open()
        stripped = normalize_topic(topic)
        with self._lock:
            self._check_open()
            route = self._routes.get(topic)
            if route is not None:
                return route
            subs = list(self._exact.get(stripped, ()))
            for matches, psubs in self._patterns.values():
                if matches(stripped):
                    subs.extend(psubs)
            counts = self._published
            counter = None
            if counts is not None:
                counter = counts.get(stripped)
                if counter is None:
                    counter = counts[stripped] = itertools.count()
            route = _Route(stripped, tuple(subs), counter, all(s._ranked for s in subs))
            if len(self._routes) >= _ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[topic] = route
            return route

    def _run_filter(
        self, sub: Subscription, filt: Callable[[Message], bool], message: Message
    ) -> bool:
        try:
            return bool(filt(message))
        except Exception as exc:
            self._report_plugin_error(f"filter of subscription #{sub.id}", "filter", exc)
            return False

    # -- publishing --------------------------------------------------------------------------------

    def publish(self, topic: str, message: Message) -> None:
        """Publish ``message`` to every subscription of ``topic`` (exact and pattern).

        Never blocks, except for subscriptions under ``BLOCK_WITH_TIMEOUT``. Raises
        ``InvalidTopicError``, ``InvalidMessageError``, ``BrokerClosedError``, or the error of a
        plugin that rejects the message; a rejected message is neither delivered nor stored.
        """
        try:
            try:
                route = self._routes.get(topic)
            except TypeError:  # an unhashable "topic": _route() says what is wrong
                route = None
            if route is None:
                route = self._route(topic)
            cls = type(message)
            stamp = _stampers.get(cls)
            if stamp is None or message.id.__class__ is not str or not message.id:
                stamp = self._check_message(message)
            hooks = self._hooks
            if cls in hooks.quiet:  # no hook, buffer or admission concerns the class
                stamped = stamp(message, route.topic, self._stamp_time(), message.attempt)
                for put in route.puts:
                    put(stamped)
                if route.published is not None:
                    next(route.published)
                return
            # From here on: _dispatch for one message, inlined (no lists on the hot path). Under a
            # memory limit (admissions) the copy is built with its size (estimate_size).
            stamped = stamp.full(
                message, route.topic, self._stamp_time(), message.attempt, self._sized, -1
            )
            if cls not in hooks.loud:
                self._learn_quiet(cls)
            if (
                hooks.publish_on
                and cls not in hooks.publish_idle
                and hooks.publish(self, route.topic, stamped)
            ):
                return
            if self._admissions:
                size = stamped._size  # built with it (stamp.full, sized)
                if size < 0:
                    size = estimate_size(stamped)
                copies = len(route.subs)
                self._admit((size + SLOT_BYTES) * (copies if copies > 1 else 1))
            if hooks.accept_on and cls not in hooks.accept_idle:
                hooks.accept(self, (stamped,))
            if not route.ranked and cls not in hooks.buffer_idle:
                self._rank(route, cls)
            if hooks.published_on:
                copies = 0
                for sub in route.subs:
                    copies += sub._put(stamped)
                hooks.published(self, (stamped,), (copies,))
            else:
                for put in route.puts:
                    put(stamped)
            if route.published is not None:
                next(route.published)
        except MQError as exc:
            self._failed("publish", topic, exc)
            raise

    def publish_batch(self, topic: str, messages: Sequence[Message]) -> None:
        """Publish several messages to ``topic``: all of them or, on any error, none."""
        try:
            route = self._route(topic)
            now = self._stamp_time()  # one instant shared by the batch
            sized = self._sized
            stamped = [
                self._check_message(m).full(m, route.topic, now, m.attempt, sized, -1)
                for m in list(messages)
            ]
            self._dispatch(stamped, check=True)
        except MQError as exc:
            self._failed("publish_batch", topic, exc)
            raise

    def _check_message(self, message: object, kind: type[Message] = Message) -> Any:
        """Validate a message's type and id; return the stamper for its class."""
        if not isinstance(message, kind):
            raise InvalidMessageError.because(
                f"expected {kind.__name__}, got {type(message).__name__}"
            )
        if not isinstance(message.id, str) or not message.id:
            raise InvalidMessageError("mq: message cannot be nil: ID is required")
        return stamper(type(message))

    def _dispatch(self, messages: Sequence[Message], *, check: bool) -> None:
        """Check (optionally), accept and route stamped messages, each to its own topic.

        The plugin API for publishing what was already stamped (transaction commit, replays).
        With ``check``, ``mqkit_publish`` runs for every message first; messages a plugin takes
        over are left out. Then ``mqkit_accept`` sees them all before any is buffered.
        """
        self._check_open()
        hooks = self._hooks
        if check and hooks.publish_on:
            messages = [m for m in messages if not hooks.publish(self, m.topic, m)]
        if not messages:
            return
        if self._admissions:
            self._admit(self.incoming_bytes(messages))
        if hooks.accept_on:
            hooks.accept(self, messages)
        routes = self._routes
        copies: list[int] = []
        for message in messages:
            route = routes.get(message.topic) or self._route(message.topic)
            if not route.ranked and message.__class__ not in hooks.buffer_idle:
                self._rank(route, message.__class__)
            copies.append(sum(sub._put(message) for sub in route.subs))
            if route.published is not None:
                next(route.published)
        if hooks.published_on:
            hooks.published(self, messages, copies)

    def _learn_quiet(self, cls: type) -> None:
        """Find out whether publishing ``cls`` concerns anything but routing (once per class).

        A class no ``mqkit_publish``/``mqkit_accept``/``mqkit_published`` implementation, no
        lazy buffer and no admission concerns goes into ``hooks.quiet``: its publishes skip
        every other test. The per-class hook narrowing is computed here, not on the path.
        """
        hooks = self._hooks
        quiet = (
            not self._admissions
            and not hooks.published_on
            and (not hooks.publish_on or not hooks.publish_wanted(cls))
            and (not hooks.accept_on or not hooks.accept_wanted(cls))
            and (not hooks.buffer_lazy or not hooks.buffer_wanted(cls))
        )
        (hooks.quiet if quiet else hooks.loud).add(cls)

    def _rank(self, route: _Route, cls: type) -> None:
        """Give the route's subscriptions their plugin buffers if ``cls`` wants one (lazily)."""
        if self._hooks.buffer_wanted(cls):
            for sub in route.subs:
                if not sub._ranked:
                    sub._rank()
            route.ranked = True

    # -- accounting (plugin API) -------------------------------------------------------------------

    def count_published(self) -> None:
        """Start counting the messages routed to each topic (``published_counts``; plugin API).

        The ``metrics`` plugin asks at start. Counting costs a publish one C-level step.
        """
        with self._lock:
            if self._published is None:
                self._published = {}
                self._routes.clear()

    def published_counts(self) -> dict[str, int]:
        """Messages routed to each topic since ``count_published`` (plugin API)."""
        with self._lock:
            counts = dict(self._published or {})
        # itertools.count is the lock-free counter; its repr is its next value: count(N).
        return {topic: int(repr(counter)[6:-1]) for topic, counter in counts.items()}

    def add_admission(self, admit: Callable[[int, int], None]) -> None:
        """Have ``admit(incoming, buffered)`` check every publish call first (plugin API).

        ``incoming`` is the bytes the call would add to the buffers (``incoming_bytes``),
        ``buffered`` what metered buffers hold now (``buffered_bytes()``); raise
        an ``MQError`` to refuse the whole call (nothing is stored or delivered). The ``memory``
        plugin enforces ``max_memory_usage`` this way: one direct call per publish, before any
        ``mqkit_accept`` implementation (persistence) runs.
        """
        with self._lock:
            self._admissions = (*self._admissions, admit)
            self._sized = True
            self._hooks.quiet.clear()  # every publish is checked from now on

    def remove_admission(self, admit: Callable[[int, int], None]) -> None:
        """Stop calling ``admit`` (plugin API; nothing happens if it is not there)."""
        with self._lock:
            self._admissions = tuple(a for a in self._admissions if a != admit)
            self._sized = bool(self._admissions)
            self._hooks.loud.clear()  # classes may be quiet again

    def incoming_bytes(self, messages: Sequence[Message]) -> int:
        """What routing ``messages`` now would add to the buffers (plugin API).

        Each message's estimated size plus ``SLOT_BYTES``, once per subscription it reaches
        (at least once).
        """
        total = 0
        routes = self._routes
        for message in messages:
            route = routes.get(message.topic) or self._route(message.topic)
            copies = len(route.subs)
            total += (estimate_size(message) + SLOT_BYTES) * (copies if copies > 1 else 1)
        return total

    def _admit(self, incoming: int) -> None:
        buffered = self.buffered_bytes()
        for admit in self._admissions:
            admit(incoming, buffered)

    def _add_bytes(self, n: int) -> None:
        """Add ``n`` to the calling thread's share of the buffered bytes (subscriptions call it)."""
        try:
            self._bytes_local.shard.bytes += n
        except AttributeError:
            self._bytes.get().bytes += n

    def buffered_bytes(self) -> int:
        """Estimated bytes in metered subscription buffers (plugin API; never below 0).

        Subscriptions whose ``Taps.meter`` a plugin asked for (the ``memory`` plugin) count
        each copy's estimated size plus ``SLOT_BYTES`` as it enters and leaves their buffer,
        in the acting thread's share; this adds the shares up.
        """
        shards = self._bytes
        folds = shards.folds
        total = 0
        for shard in shards.all:
            total += shard.bytes
        if folds != shards.folds or folds & 1:  # a thread's share was folded meanwhile
            with shards.lock:
                total = sum(shard.bytes for shard in shards.all)
        return total if total > 0 else 0

    def dispatch(self, messages: Sequence[Message]) -> None:
        """Deliver already stamped and checked messages, all or none (plugin API).

        Used by plugins that hold messages and release them later (transactions on commit,
        replays): ``mqkit_accept`` sees the whole sequence, then each message is routed to
        its own ``topic``.
        """
        self._dispatch(messages, check=False)

    def stamp(self, topic: str, message: Message) -> Message:
        """Validate ``topic`` and ``message`` and return the stamped copy (plugin API)."""
        route = self._route(topic)
        stamp: Stamper[Message] = self._check_message(message)
        return stamp.full(
            message, route.topic, self._stamp_time(), message.attempt, self._sized, -1
        )

    def _failed(self, operation: str, topic: str, error: MQError) -> None:
        # An error may pass through nested operations (publish_to_dead_letter -> publish):
        # it is one failure, reported once, by the operation it happened in.
        if getattr(error, _REPORTED, False):
            return
        setattr(error, _REPORTED, True)
        hooks = self._hooks
        if hooks.error_on:
            hooks.error(self, operation, topic if isinstance(topic, str) else "", error)

    def _typed_publish(
        self, operation: str, topic: str, message: Message, kind: type[Message], *needs: str
    ) -> None:
        try:
            self._check_open()
            self._check_message(message, kind)
            for need in needs:
                self._need(need)
        except MQError as exc:
            self._failed(operation, topic, exc)
            raise
        self.publish(topic, message)

    def _need(self, feature: str) -> None:
        if feature == "ack":
            if self._ack_feature() is None:
                raise AckNotSupportedError.because("acknowledgment support is disabled")
        elif not self._pm.has_plugin(feature):
            flag = {"priority": "enable_priority_queue", "ttl": "the ttl plugin"}[feature]
            raise FeatureNotEnabledError.because(f"{feature} is disabled ({flag})")

    def publish_priority(self, topic: str, message: PriorityMessage) -> None:
        """Publish a :class:`PriorityMessage` (needs the ``priority`` plugin)."""
        self._typed_publish("publish_priority", topic, message, PriorityMessage, "priority")

    def publish_ttl(self, topic: str, message: TTLMessage) -> None:
        """Publish a :class:`TTLMessage` (needs the ``ttl`` plugin)."""
        self._typed_publish("publish_ttl", topic, message, TTLMessage, "ttl")

    def publish_with_ack(self, topic: str, message: AckMessage) -> None:
        """Publish an :class:`AckMessage` (needs ``enable_ack_support``)."""
        self._typed_publish("publish_with_ack", topic, message, AckMessage, "ack")

    def publish_priority_ttl(self, topic: str, message: PriorityTTLMessage) -> None:
        """Publish a :class:`PriorityTTLMessage` (needs ``priority`` and ``ttl``)."""
        self._typed_publish(
            "publish_priority_ttl", topic, message, PriorityTTLMessage, "priority", "ttl"
        )

    def publish_with_ack_ttl(self, topic: str, message: AckTTLMessage) -> None:
        """Publish an :class:`AckTTLMessage` (needs ack support and ``ttl``)."""
        self._typed_publish("publish_with_ack_ttl", topic, message, AckTTLMessage, "ack", "ttl")

    # -- subscribing -------------------------------------------------------------------------------

    def subscribe(self, topic: str, opts: SubOptions | None = None) -> Subscription:
        """Subscribe to an exact topic. Raises ``InvalidTopicError``, ``LimitExceededError``."""
        try:
            return self._subscribe(normalize_topic(topic), opts, pattern=False)
        except MQError as exc:
            self._failed("subscribe", topic, exc)
            raise

    def subscribe_pattern(self, pattern: str, opts: SubOptions | None = None) -> Subscription:
        """Subscribe to every topic a glob pattern matches (``orders.*``)."""
        try:
            return self._subscribe(normalize_topic(pattern), opts, pattern=True)
        except MQError as exc:
            self._failed("subscribe_pattern", pattern, exc)
            raise

    def subscribe_matching(
        self, key: str, matches: Callable[[str], bool], opts: SubOptions | None = None
    ) -> Subscription:
        """Subscribe to every topic ``matches`` accepts (plugin API).

        For plugins with their own topic syntax (the MQTT gateway's ``+``/``#`` filters):
        ``key`` names the filter (subscriptions with the same key share one entry in the
        routing table and count as one topic), ``matches(topic)`` decides.
        """
        try:
            return self._subscribe(normalize_topic(key), opts, pattern=True, matches=matches)
        except MQError as exc:
            self._failed("subscribe_matching", key, exc)
            raise

    def subscribe_batch(
        self, topics: Sequence[str], opts: SubOptions | None = None
    ) -> list[Subscription]:
        """Subscribe to several topics, in order; on any error none of them stays subscribed."""
        subs: list[Subscription] = []
        try:
            for topic in topics:
                subs.append(self.subscribe(topic, opts))
        except BaseException:
            for sub in subs:
                sub.cancel()
            raise
        return subs

    def subscribe_with_ack(self, topic: str, opts: SubOptions | None = None) -> Subscription:
        """``subscribe`` after checking that ack support is on (``AckNotSupportedError``)."""
        try:
            self._check_open()
            self._need("ack")
        except MQError as exc:
            self._failed("subscribe_with_ack", topic, exc)
            raise
        return self.subscribe(topic, opts)

    def _subscribe(
        self,
        key: str,
        opts: SubOptions | None,
        *,
        pattern: bool,
        matches: Callable[[str], bool] | None = None,
    ) -> Subscription:
        opts = _DEFAULT_OPTIONS if opts is None else opts
        if not isinstance(opts, SubOptions):
            raise InvalidConfigError.because(f"expected SubOptions, got {type(opts).__name__}")
        cfg = self._config
        check_options(opts)
        capacity = opts.buffer_size or cfg.default_buffer_size
        if matches is None and pattern and is_pattern(key):
            matches = compile_pattern(key)
        hooks = self._hooks
        with self._lock:
            self._check_open()
            table: dict[str, Any] = self._patterns if matches is not None else self._exact
            existing = table.get(key)
            if existing is None and cfg.max_topics:
                in_use = len(self._exact) + len(self._patterns)
                if in_use >= cfg.max_topics:
                    raise LimitExceededError.because(
                        f"max_topics ({cfg.max_topics}) reached; cannot subscribe to {key!r}"
                    )
            subs: list[Subscription] = (
                [] if existing is None else (existing[1] if matches is not None else existing)
            )
            if cfg.max_subscribers and len(subs) >= cfg.max_subscribers:
                raise LimitExceededError.because(
                    f"max_subscribers ({cfg.max_subscribers}) reached for {key!r}"
                )
            sub = Subscription(self, next(self._sub_ids), key, opts, capacity)
            sub.is_pattern = matches is not None
            if hooks.buffer_lazy:
                sub._ranked = False  # a FIFO until a message needs the plugin's buffer
            else:
                buffer = hooks.subscription_buffer(self, sub)
                if buffer is not None:
                    sub._set_buffer(buffer)
            sub._configure(hooks.subscription_taps(self, sub))
            subs.append(sub)
            if existing is None:
                table[key] = (matches, subs) if matches is not None else subs
            self._routes.clear()
        hooks.subscribe(self, sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub.is_pattern:
                entry = self._patterns.get(sub.topic)
                subs = entry[1] if entry is not None else None
                table: dict[str, Any] = self._patterns
            else:
                subs = self._exact.get(sub.topic)
                table = self._exact
            if subs is not None and sub in subs:
                subs.remove(sub)
                if not subs:
                    del table[sub.topic]
                self._routes.clear()
        if sub._close():
            self._hooks.unsubscribe(self, sub)

    def subscriptions(self, topic: str | None = None) -> list[Subscription]:
        """The live subscriptions (of ``topic``, exact or pattern key, when given) (plugin API)."""
        with self._lock:
            found = [s for subs in self._exact.values() for s in subs]
            found += [s for _, subs in self._patterns.values() for s in subs]
        if topic is not None:
            found = [s for s in found if s.topic == topic]
        return sorted(found, key=lambda s: s.id)

    def routes(self, topic: str) -> tuple[Subscription, ...]:
        """The subscriptions a publish to ``topic`` reaches now (plugin API)."""
        route = self._routes.get(topic)
        return (route if route is not None else self._route(topic)).subs

    def topics(self) -> list[str]:
        """The exact topics with at least one live subscription, sorted."""
        with self._lock:
            return sorted(self._exact)

    # -- acknowledgement ---------------------------------------------------------------------------

    def ack(self, topic: str, ack_id: str) -> None:
        """Acknowledge ``ack_id`` on the subscriptions of ``topic`` that hold it."""
        feature = self._op(
            "ack", topic, AckFeature, AckNotSupportedError, "acknowledgment support is disabled"
        )
        self._guard("ack", topic, lambda: feature.ack(topic, ack_id))

    def nack(self, topic: str, ack_id: str, requeue: bool = True) -> None:
        """Reject ``ack_id``: redeliver it (``requeue``) or dead-letter it at once."""
        feature = self._op(
            "nack", topic, AckFeature, AckNotSupportedError, "acknowledgment support is disabled"
        )
        self._guard("nack", topic, lambda: feature.nack(topic, ack_id, requeue))

    def _op(
        self,
        operation: str,
        topic: str,
        kind: type[F],
        error: type[FeatureNotEnabledError],
        why: str,
    ) -> F:
        try:
            return self._require(kind, error, why)
        except MQError as exc:
            self._failed(operation, topic, exc)
            raise

    def _limit(self, operation: str, topic: str, limit: object) -> int:
        """``limit`` if it is an int (``InvalidArgumentError`` otherwise, reported as failed)."""
        return int(self._guard(operation, topic, lambda: int_limit(limit)))

    def _guard(self, operation: str, topic: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except MQError as exc:
            self._failed(operation, topic, exc)
            raise

    # -- transactions ------------------------------------------------------------------------------

    def publish_with_transaction(self, topic: str, message: Message, tx_id: str) -> None:
        """Hold ``message`` in transaction ``tx_id`` (begun by its first message).

        A timed-out ``tx_id`` is not begun again: ``TransactionTimeoutError`` until its
        commit or rollback has reported the timeout.
        """
        self._hold(topic, message, tx_id, None)

    def _hold(self, topic: str, message: Message, tx_id: str, token: object | None) -> object:
        """``publish_with_transaction`` into transaction ``token`` (any, when None)."""
        feature = self._op(
            "publish_with_transaction",
            topic,
            TransactionFeature,
            TransactionNotSupportedError,
            "transaction support is disabled",
        )

        def hold() -> object:
            stamped = self.stamp(topic, message)
            hooks = self._hooks
            if hooks.publish_on and hooks.publish(self, stamped.topic, stamped):
                return token
            memory = self._feature(MemoryFeature)
            if memory is not None:  # what a transaction holds counts against the limit
                memory.check((stamped,))
            return feature.add(tx_id, stamped, token)

        return self._guard("publish_with_transaction", topic, hold)

    def commit_transaction(self, tx_id: str) -> None:
        """Deliver every message of ``tx_id`` together (``TransactionNotFoundError`` if none)."""
        feature = self._op(
            "commit_transaction",
            "",
            TransactionFeature,
            TransactionNotSupportedError,
            "transaction support is disabled",
        )
        self._guard("commit_transaction", "", lambda: feature.commit(tx_id))

    def rollback_transaction(self, tx_id: str) -> None:
        """Discard ``tx_id`` and its messages (``TransactionNotFoundError`` if none)."""
        feature = self._op(
            "rollback_transaction",
            "",
            TransactionFeature,
            TransactionNotSupportedError,
            "transaction support is disabled",
        )
        self._guard("rollback_transaction", "", lambda: feature.rollback(tx_id))

    @contextlib.contextmanager
    def transaction(self, tx_id: str | None = None) -> Iterator[Transaction]:
        """Open a transaction: commit on normal exit, roll back on an exception.

        ``with broker.transaction() as tx: tx.publish("orders", msg)``. All or nothing: a
        block whose transaction timed out (at any instant, even inside a publish) raises
        ``TransactionTimeoutError`` from its next ``tx.publish`` and from its exit, and
        delivers none of its messages.
        """
        feature = self._op(
            "transaction",
            "",
            TransactionFeature,
            TransactionNotSupportedError,
            "transaction support is disabled",
        )
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
            token = tx._token
            self._guard("commit_transaction", "", lambda: feature.commit(tx.id, token))
        elif feature.is_open(tx.id):
            self.commit_transaction(tx.id)

    # -- dead letters ------------------------------------------------------------------------------

    def publish_to_dead_letter(self, original_topic: str, message: Message, reason: str) -> None:
        """Put ``message`` into the dead letter queue with ``reason``."""
        feature = self._op(
            "publish_to_dead_letter",
            original_topic,
            DeadLetterFeature,
            DeadLetterNotSupportedError,
            "dead letter queue is disabled",
        )

        def add() -> None:
            topic = normalize_topic(original_topic)  # replay publishes to it
            self._check_message(message)
            check_message(message)
            feature.add(topic, message, reason, message.attempt)
            self._hooks.dead_letter(self, topic, message, reason)

        self._guard("publish_to_dead_letter", original_topic, add)

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
                self._hooks.drop(self, None, message, "dead letter refused")
                return False
            self._hooks.dead_letter(self, topic, message, reason, subscription)
            return True
        with self._lock:
            self._dead_letters_dropped += 1
        self._hooks.drop(self, None, message, "dead letter queue off")
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

    def dead_letters(self, limit: int = 0) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters (all when ``limit <= 0``), left in the queue."""
        feature = self._op(
            "dead_letters",
            "",
            DeadLetterFeature,
            DeadLetterNotSupportedError,
            "dead letter queue is disabled",
        )
        limit = self._limit("dead_letters", "", limit)
        return list(feature.dead_letters(limit))

    def replay_dead_letters(self, limit: int = 0) -> int:
        """Remove the oldest ``limit`` dead letters and re-publish each to its original topic.

        Returns how many were re-published. A record whose message has expired meanwhile is
        removed without being re-published (TTL: it must never be delivered). If a re-publish
        fails, that record and the later ones stay in the queue and the error propagates.
        """
        feature = self._op(
            "replay_dead_letters",
            "",
            DeadLetterFeature,
            DeadLetterNotSupportedError,
            "dead letter queue is disabled",
        )
        limit = self._limit("replay_dead_letters", "", limit)
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

    # -- persistence -------------------------------------------------------------------------------

    def recover_messages(self, topic: str, limit: int = 0) -> list[Message]:
        """The oldest ``limit`` stored messages of ``topic`` in publish order (all: ``<= 0``)."""
        feature = self._op(
            "recover_messages",
            topic,
            PersistenceFeature,
            PersistenceDisabledError,
            "persistence is not enabled",
        )
        limit = self._limit("recover_messages", topic, limit)
        return list(self._guard("recover_messages", topic, lambda: feature.recover(topic, limit)))

    def replay_messages(self, topic: str, limit: int = 0) -> int:
        """Re-publish the oldest ``limit`` stored messages of ``topic``; return how many."""
        messages = self.recover_messages(topic, limit)
        self._dispatch(messages, check=False)
        return len(messages)

    # -- protocols and cluster ---------------------------------------------------------------------

    def _protocol(self, name: str) -> tuple[str, int]:
        try:
            self._check_open()
            feature = self._feature(ProtocolFeature, name)
            if feature is None:
                raise ProtocolDisabledError.because(f"{name.upper()} support is disabled")
            return feature.start()
        except MQError as exc:
            self._failed(f"start_{name}_server", "", exc)
            raise

    def start_mqtt_server(self) -> tuple[str, int]:
        """Start the MQTT gateway; return its bound ``(host, port)``."""
        return self._protocol("mqtt")

    def start_amqp_server(self) -> tuple[str, int]:
        """Start the AMQP 0-9-1 gateway; return its bound ``(host, port)``."""
        return self._protocol("amqp")

    def publish_to_cluster(self, topic: str, message: Message) -> None:
        """Publish to every node of the cluster (``ClusterDisabledError`` when off)."""
        feature = self._op(
            "publish_to_cluster",
            topic,
            ClusterFeature,
            ClusterDisabledError,
            "cluster mode is disabled",
        )
        self._guard("publish_to_cluster", topic, lambda: feature.publish(topic, message))

    def subscribe_from_cluster(self, topic: str, opts: SubOptions | None = None) -> Subscription:
        """Subscribe to ``topic`` across the cluster (``ClusterDisabledError`` when off)."""
        feature = self._op(
            "subscribe_from_cluster",
            topic,
            ClusterFeature,
            ClusterDisabledError,
            "cluster mode is disabled",
        )
        sub: Subscription = self._guard(
            "subscribe_from_cluster", topic, lambda: feature.subscribe(topic, opts)
        )
        return sub

    def cluster_status(self) -> ClusterStatus:
        """The cluster's state (``status="disabled"`` when cluster mode is off)."""
        feature = self._feature(ClusterFeature)
        return ClusterStatus(status="disabled") if feature is None else feature.status()

    # -- observability -----------------------------------------------------------------------------

    def memory_usage(self) -> int:
        """Estimated bytes the broker holds (0 when the ``memory`` plugin is off)."""
        feature = self._feature(MemoryFeature)
        return 0 if feature is None else feature.usage()

    def metrics(self) -> MetricsSnapshot:
        """Counters and latency; the gauges are always filled in."""
        feature = self._feature(MetricsFeature)
        snap = MetricsSnapshot() if feature is None else feature.snapshot()
        with self._lock:
            topics = len(self._exact) + len(self._patterns)
            subs = sum(len(s) for s in self._exact.values())
            subs += sum(len(s) for _, s in self._patterns.values())
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
            problems += self._hooks.health(self)
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

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config

    def update_config(self, cfg: Config) -> None:
        """Replace the configuration; plugins its flags switch on or off start or stop.

        Either the whole change applies or nothing does (``InvalidConfigError``,
        ``PluginError``).
        """
        try:
            self._check_open()
            if not isinstance(cfg, Config):
                raise InvalidConfigError.because(f"expected a Config, got {type(cfg).__name__}")
            cfg.validate()
            with self._lock:
                old = self._config
                self._config = cfg
                try:
                    added = self._apply_plugins(cfg, running=True)
                    self._hooks.broker_start(self, frozenset(added))
                except BaseException:
                    self._config = old
                    self._apply_plugins(old)
                    self._reconfigure()
                    raise
                self._reconfigure()
        except MQError as exc:
            self._failed("update_config", "", exc)
            raise

    def _reconfigure(self) -> None:
        """Re-apply buffers and taps to every live subscription after the plugin set changed."""
        hooks = self._hooks
        with self._lock:
            for sub in self.subscriptions():
                if not sub._ranked and not hooks.buffer_lazy:
                    sub._rank()
                sub._configure(hooks.subscription_taps(self, sub))
            self._routes.clear()

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def close(self) -> None:
        """Close the broker (idempotent).

        Plugins stop first; then every subscription is closed (consumers drain what is
        buffered, then get ``SubscriptionClosedError``), and the timer thread is joined: no
        mqkit thread is alive when this returns.
        """
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True
        self._hooks.broker_closing(self)  # the broker still publishes (gateways: wills)
        with self._lock:
            self._closed = True
            self._routes.clear()
        try:
            self._hooks.broker_close(self)
        finally:
            with self._lock:
                subs = [s for subs in self._exact.values() for s in subs]
                subs += [s for _, subs in self._patterns.values() for s in subs]
                self._exact.clear()
                self._patterns.clear()
            for sub in subs:
                if sub._close():
                    self._hooks.unsubscribe(self, sub)
            self.timers.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<mqkit.Broker {state} plugins={self.plugin_names()}>"
