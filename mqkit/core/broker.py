"""The broker: topics, subscriptions, the publish path, and the plugins it hosts.

Follow a message from :meth:`Broker.publish`: the topic is looked up in the route cache (a
valid topic's subscriptions, exact and pattern, computed once per subscription change; see
:mod:`mqkit.core.routing`); the message is checked and copied with ``topic``/``time``
stamped; ``mqkit_publish`` may reject it or take it over; ``mqkit_accept`` may store it; it is
appended to each subscription's buffer under that subscription's backpressure policy; a
consumer's ``Subscription.get`` pops it and ``mqkit_deliver``/``mqkit_delivered`` see it handed
out. With no plugin, none of those hooks costs more than a flag test.

The operations that hand over to a feature plugin (ack, transactions, dead letters,
persistence, gateways, cluster, health) are the broker's too, from its base class
:class:`~mqkit.core.operations.FeatureOperations`. A failed operation reports itself through
``mqkit_error`` once (``@reported``, :mod:`mqkit.core.reporting`).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, Self

from mqkit.core.checks import describe
from mqkit.core.config import Config
from mqkit.core.errors import (
    BrokerClosedError,
    InvalidConfigError,
    InvalidMessageError,
    MQError,
)
from mqkit.core.features import AckFeature, Feature
from mqkit.core.hooks import Hooks
from mqkit.core.message import (
    Message,
    Stamper,
    _stampers,
    estimate_size,
    stamper,
)
from mqkit.core.operations import FeatureOperations, Transaction
from mqkit.core.plugins import (
    PluginManager,
    info_of,
    instantiate,
    plan_plugins,
    settings_owners,
)
from mqkit.core.reporting import already_reported, reported
from mqkit.core.routing import Route, Routing
from mqkit.core.settings import build_sections
from mqkit.core.shards import ByteCounter, ByteShard
from mqkit.core.subscription import SLOT_BYTES, SubOptions, Subscription, check_options
from mqkit.core.timers import Clock, TimerService
from mqkit.core.topics import compile_pattern, filter_matcher, is_pattern, normalize_topic

__all__ = ["Broker", "Transaction"]

log = logging.getLogger("mqkit")

_DEFAULT_OPTIONS: Final = SubOptions()


class Broker(FeatureOperations):
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
        self._routing = Routing(self._lock, self._check_open)
        self._routes = self._routing.routes  # the route cache, read on every publish
        self._route = self._routing.route  # computes a route the cache lacks
        self._bytes = ByteCounter()  # bytes the broker holds (see counted_bytes)
        self._bytes_local = self._bytes.local
        self._add_bytes = self._bytes.add
        self._bytes_total = self._bytes.total
        self._held_shards: list[ByteShard] = []  # the features' (Feature.held_shard), counted
        self._admissions: tuple[Callable[[int, int], None], ...] = ()
        self._limits: tuple[Callable[[], int] | None, ...] = ()  # one per admission
        # Admissions run only for a call that would take counted_bytes() past this (a
        # publish under a memory limit: one comparison); -1 while an admission has no limit.
        self._admit_above = sys.maxsize
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
        sections = build_sections(config.settings, settings_owners(plan))
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
        self._sections = {type(s): s for s in sections.values()}
        pm = self._pm
        registered: list[str] = []
        try:
            for name in added_names:
                pm.register_checked(instantiate(plan[name], self), name)
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
        self._count_held(self._feature_list)
        self._ack = self._feature(AckFeature)  # Subscription.ack asks on every ack
        self._hooks = Hooks(pm, self._report_plugin_error, config)
        return added_names

    def _report_plugin_error(self, plugin: str, hook: str, exc: BaseException) -> None:
        with self._lock:
            self._plugin_errors[plugin] = self._plugin_errors.get(plugin, 0) + 1
        log.error("plugin %r failed in %s: %r", plugin, hook, exc, exc_info=exc)

    # -- checks ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError()

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
            if cls in hooks.quiet:  # no hook or buffer concerns the class
                if self._sized:  # an admission: the copy is built with its size
                    stamped = stamp.full(
                        message, route.topic, self._stamp_time(), message.attempt, True, -1
                    )
                    copies = len(route.subs)
                    incoming = (stamped._size + SLOT_BYTES) * (copies if copies > 1 else 1)
                    counted = incoming
                    for shard in self._bytes.all:  # counted_bytes(), inlined: see _admit
                        counted += shard.bytes
                    if counted > self._admit_above:
                        self._admit(incoming)
                else:
                    stamped = stamp(message, route.topic, self._stamp_time(), message.attempt)
                for put in route.puts:
                    put(stamped)
                if route.published is not None:
                    next(route.published)
                return
            # From here on: _dispatch for one message, inlined (no lists on the hot path). Under a
            # memory limit (admissions) the copy is built with its size (estimate_size).
            if self._sized:
                stamped = stamp.full(
                    message, route.topic, self._stamp_time(), message.attempt, True, -1
                )
            else:
                stamped = stamp(message, route.topic, self._stamp_time(), message.attempt)
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
                incoming = (size + SLOT_BYTES) * (copies if copies > 1 else 1)
                counted = incoming
                for shard in self._bytes.all:  # counted_bytes(), inlined: see _admit
                    counted += shard.bytes
                if counted > self._admit_above:
                    self._admit(incoming)
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
        except MQError as exc:  # @reported, inlined: the hot path makes no call more
            self._failed("publish", topic, exc)
            raise

    @reported()
    def publish_batch(self, topic: str, messages: Sequence[Message]) -> None:
        """Publish several messages to ``topic``: all of them or, on any error, none."""
        route = self._route(topic)
        now = self._stamp_time()  # one instant shared by the batch
        sized = self._sized
        stamped = [
            self._check_message(m).full(m, route.topic, now, m.attempt, sized, -1)
            for m in list(messages)
        ]
        self._dispatch(stamped, check=True)

    def _check_message(self, message: object, kind: type[Message] = Message) -> Any:
        """Validate a message's type and id; return the stamper for its class."""
        if not isinstance(message, kind):
            raise InvalidMessageError.because(
                f"expected {kind.__name__}, got {type(message).__name__}"
            )
        if not isinstance(message.id, str):
            raise InvalidMessageError.because(
                f"message id must be a str, not {describe(message.id)}"
            )
        if not message.id:
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
            incoming = self.incoming_bytes(messages)
            if self._bytes_total() + incoming > self._admit_above:
                self._admit(incoming)
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

        A class no ``mqkit_publish``/``mqkit_accept``/``mqkit_published`` implementation and
        no lazy buffer concerns goes into ``hooks.quiet``: its publishes skip every other test
        but the admission's one comparison. The per-class hook narrowing is computed here, not
        on the path.
        """
        hooks = self._hooks
        quiet = (
            not hooks.published_on
            and (not hooks.publish_on or not hooks.publish_wanted(cls))
            and (not hooks.accept_on or not hooks.accept_wanted(cls))
            and (not hooks.buffer_lazy or not hooks.buffer_wanted(cls))
        )
        (hooks.quiet if quiet else hooks.loud).add(cls)

    def _rank(self, route: Route, cls: type) -> None:
        """Give the route's subscriptions their plugin buffers if ``cls`` wants one (lazily)."""
        if self._hooks.buffer_wanted(cls):
            for sub in route.subs:
                if not sub._ranked:
                    sub._rank()
            route.ranked = True

    # -- admission (plugin API) --------------------------------------------------------------------

    def add_admission(
        self, admit: Callable[[int, int], None], limit: Callable[[], int] | None = None
    ) -> None:
        """Have ``admit(incoming, counted)`` check publish calls first (plugin API).

        ``incoming`` is the bytes the call would add to the buffers (``incoming_bytes``),
        ``counted`` the bytes the broker holds now (``counted_bytes()``); raise an ``MQError``
        to refuse the whole call (nothing is stored or delivered). Before any ``mqkit_accept``
        implementation (persistence) runs.

        With ``limit``, ``admit`` is called only for a call that would take the count past
        ``limit()``: a publish under the limit costs one comparison. The broker asks
        ``limit()`` now and again whenever the configuration or the plugin set changes
        (``update_config``); without it, ``admit`` sees every call. The ``memory`` plugin
        enforces ``max_memory_usage`` this way.
        """
        with self._lock:
            self._admissions = (*self._admissions, admit)
            self._limits = (*self._limits, limit)
            self._sized = True
            self._set_admit_above()

    def remove_admission(self, admit: Callable[[int, int], None]) -> None:
        """Stop calling ``admit`` (plugin API; nothing happens if it is not there)."""
        with self._lock:
            kept = [
                (a, lim)
                for a, lim in zip(self._admissions, self._limits, strict=True)
                if a != admit
            ]
            self._admissions = tuple(a for a, _ in kept)
            self._limits = tuple(lim for _, lim in kept)
            self._sized = bool(self._admissions)
            self._set_admit_above()

    def _set_admit_above(self) -> None:
        """Under the lock: the count past which admissions run (the lowest of their limits)."""
        above = sys.maxsize
        for limit in self._limits:
            above = min(above, -1 if limit is None else limit())
        self._admit_above = above

    def _count_held(self, features: Sequence[Feature]) -> None:
        """Count the ``held_shard`` of exactly these features in the byte count (all or none)."""
        shards = [f.held_shard for f in features if f.held_shard is not None]
        for shard in self._held_shards:
            if all(shard is not s for s in shards):
                self._bytes.detach(shard)
        for shard in shards:
            self._bytes.attach(shard)
        self._held_shards = shards

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
        """Call the admissions: the publish's lock-free sum of the shards passed their limit.

        That sum (``publish`` adds up ``_bytes.all`` itself, without a call) is never below
        ``counted_bytes()``: while a finished thread's share is being folded it may count that
        share twice, never miss it. So a publish it finds under the limit is under it, and one
        it finds over is decided here, on the exact count.
        """
        counted = self._bytes_total()
        for admit in self._admissions:
            admit(incoming, counted)

    def counted_bytes(self) -> int:
        """Estimated bytes the broker holds, as counted (plugin API; never below 0).

        Subscriptions whose ``Taps.meter`` a plugin asked for (the ``memory`` plugin) count
        each copy's estimated size plus ``SLOT_BYTES`` as it enters and leaves their buffer,
        in the acting thread's share; features add what they hold (``Feature.held_shard``).
        This adds the shares up.
        """
        return self._bytes_total()

    # -- stamped and typed publishes ---------------------------------------------------------------

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
        """Report a failed operation through ``mqkit_error``, once per error (see reporting)."""
        if already_reported(error):
            return
        hooks = self._hooks
        if hooks.error_on:
            hooks.error(self, operation, topic if isinstance(topic, str) else "", error)

    # -- subscribing -------------------------------------------------------------------------------

    @reported()
    def subscribe(self, topic: str, opts: SubOptions | None = None) -> Subscription:
        """Subscribe to an exact topic. Raises ``InvalidTopicError``, ``LimitExceededError``."""
        return self._subscribe(normalize_topic(topic), opts, pattern=False)

    @reported(topic="pattern")
    def subscribe_pattern(self, pattern: str, opts: SubOptions | None = None) -> Subscription:
        """Subscribe to every topic a glob pattern matches (``orders.*``)."""
        return self._subscribe(normalize_topic(pattern), opts, pattern=True)

    @reported(topic="topic_filter")
    def subscribe_filter(self, topic_filter: str, opts: SubOptions | None = None) -> Subscription:
        """Subscribe to every topic an MQTT-style filter matches (``sensors/+/temperature``).

        Levels are split on ``/``: ``+`` matches one level, a last ``#`` any number of them
        (the parent included), as for MQTT clients; a filter without ``+``/``#`` is an exact
        topic. Glob characters (``*?[\\``) are refused: a filter is not a glob pattern.
        """
        text, matches = filter_matcher(topic_filter)
        if matches is None:
            return self._subscribe(text, opts, pattern=False)
        return self._subscribe(text, opts, pattern=True, matches=matches)

    @reported(topic="key")
    def subscribe_matching(
        self, key: str, matches: Callable[[str], bool], opts: SubOptions | None = None
    ) -> Subscription:
        """Subscribe to every topic ``matches`` accepts (plugin API).

        For plugins with their own topic syntax (the MQTT gateway's ``+``/``#`` filters):
        ``key`` names the filter (subscriptions with the same key share one entry in the
        routing table and count as one topic), ``matches(topic)`` decides.
        """
        return self._subscribe(
            normalize_topic(key), opts, pattern=True, matches=matches, grouped=True
        )

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

    @reported()
    def subscribe_with_ack(self, topic: str, opts: SubOptions | None = None) -> Subscription:
        """``subscribe`` after checking that ack support is on (``AckNotSupportedError``)."""
        self._check_open()
        self._need("ack")
        return self.subscribe(topic, opts)

    def _subscribe(
        self,
        key: str,
        opts: SubOptions | None,
        *,
        pattern: bool,
        matches: Callable[[str], bool] | None = None,
        grouped: bool = False,
    ) -> Subscription:
        opts = _DEFAULT_OPTIONS if opts is None else opts
        if not isinstance(opts, SubOptions):
            raise InvalidConfigError.because(f"expected SubOptions, got {type(opts).__name__}")
        cfg = self._config
        check_options(opts)
        if opts.group is not None and not grouped:
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: group {opts.group!r} is for cluster "
                "subscriptions (subscribe_from_cluster); handlers in one broker share a local "
                "subscription with @broker.subscriber(topic, group=...)",
                field="group",
            )
        capacity = opts.buffer_size or cfg.default_buffer_size
        if matches is None and pattern and is_pattern(key):
            matches = compile_pattern(key)
        hooks = self._hooks

        def make(sub_id: int) -> Subscription:  # under the lock, once the limits allow it
            sub = Subscription(self, sub_id, key, opts, capacity)
            sub.is_pattern = matches is not None
            if hooks.buffer_lazy:
                sub._ranked = False  # a FIFO until a message needs the plugin's buffer
            else:
                buffer = hooks.subscription_buffer(self, sub)
                if buffer is not None:
                    sub._set_buffer(buffer)
            sub._configure(hooks.subscription_taps(self, sub))
            return sub

        sub = self._routing.add(key, matches, make, cfg.max_topics, cfg.max_subscribers)
        hooks.subscribe(self, sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._routing.remove(sub)
        if sub._close():
            self._hooks.unsubscribe(self, sub)

    def subscriptions(self, topic: str | None = None) -> list[Subscription]:
        """The live subscriptions (of ``topic``, exact or pattern key, when given) (plugin API)."""
        found = self._routing.subscriptions()
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
            return sorted(self._routing.exact)

    # -- configuration -----------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config

    @reported()
    def update_config(self, cfg: Config) -> None:
        """Replace the configuration; plugins its flags switch on or off start or stop.

        Either the whole change applies or nothing does (``InvalidConfigError``,
        ``PluginError``).
        """
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

    def _reconfigure(self) -> None:
        """Re-apply buffers and taps to every live subscription after the plugin set changed."""
        hooks = self._hooks
        with self._lock:
            for sub in self.subscriptions():
                if not sub._ranked and not hooks.buffer_lazy:
                    sub._rank()
                sub._configure(hooks.subscription_taps(self, sub))
            self._routes.clear()
            self._set_admit_above()  # the limits may follow the config and the plugin set

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
            self._count_held(())  # what the features hold is the broker's no more
            for sub in self._routing.clear():
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
