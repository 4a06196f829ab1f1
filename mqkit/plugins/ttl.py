"""The ``ttl`` plugin: messages that expire are never handed out (loads by default).

A message's own ``expires_at`` is always honoured; ``Config.message_ttl > 0`` gives every
message without one a default expiry of ``time + message_ttl``. Expiry is checked:

- at publish: an already expired message is refused with ``MessageExpiredError``;
- at delivery: a consumer is never handed an expired message - a message with its own
  ``expires_at`` is checked by ``mqkit_deliver``; under ``message_ttl`` every subscription
  checks the default expiry itself, through the plugin's ``Taps.withhold`` (no hook call per
  message);
- by a sweep every ``TTL_SWEEP_INTERVAL`` seconds on the broker's timer service, which removes
  expired messages from the front of buffers nobody reads, so they do not hold memory. Its work
  is proportional to what expired, not to what is buffered: it stops at the first message of
  each FIFO run (each priority level) that is still alive. Under ``message_ttl`` expiries follow
  publish order, so every expired message is at a front; a message with its own ``expires_at``
  that expires behind a live one stays buffered (never handed out) until it reaches the front,
  as with RabbitMQ's per-message TTL.

Each expired message is reported through ``mqkit_expire`` and, when the dead letter queue is
on, dead-lettered with reason ``expired``.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from mqkit.core.broker import Broker
from mqkit.core.config import Config
from mqkit.core.errors import InvalidMessageError, MessageExpiredError
from mqkit.core.hookspecs import for_messages, hookimpl
from mqkit.core.message import Message, has_field
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import Subscription, Taps
from mqkit.core.timers import TimerHandle

__all__ = ["TTL_SWEEP_INTERVAL", "TTLPlugin", "expiry_of"]

TTL_SWEEP_INTERVAL = 1.0
"""Seconds between sweeps of expired messages out of subscription buffers."""


def expiry_of(message: Message, default_ttl: float) -> datetime | None:
    """When ``message`` expires: its ``expires_at``, else ``time + default_ttl`` (if > 0)."""
    expires: datetime | None = getattr(message, "expires_at", None)
    if expires is not None:
        return expires
    if default_ttl > 0 and message.time is not None:
        return message.time + timedelta(seconds=default_ttl)
    return None


def _may_expire(cls: type[Message], config: Config) -> bool:
    """The classes ``mqkit_publish`` concerns: with ``expires_at``, or all under a default TTL."""
    return config.message_ttl > 0 or has_field(cls, "expires_at")


def _own_expiry(cls: type[Message], config: Config) -> bool:
    """The classes ``mqkit_deliver`` checks: those with their own ``expires_at``."""
    return has_field(cls, "expires_at")


class TTLPlugin(Plugin):
    """Refuses expired messages at publish, withholds them at delivery, sweeps buffers."""

    plugin_info = PluginInfo(
        name="ttl",
        description="message expiry at publish, at delivery and in buffers",
        enabled=lambda config: config.message_ttl > 0,
        default=True,
    )

    def __init__(self, broker: Broker) -> None:
        self._lock = threading.Lock()
        self._sweep: TimerHandle | None = None
        self._broker: Broker | None = broker  # None once stopped

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Start sweeping when a default TTL is configured."""
        if broker.config.message_ttl > 0:
            self._schedule_sweep(broker)

    @hookimpl
    def mqkit_broker_close(self, broker: Broker) -> None:
        """Stop the sweep."""
        with self._lock:
            if self._sweep is not None:
                self._sweep.cancel()
                self._sweep = None
            self._broker = None

    @hookimpl
    @for_messages(_own_expiry)
    def mqkit_publish(self, broker: Broker, topic: str, message: Message) -> None:
        """Refuse a message whose ``expires_at`` is not timezone-aware or has passed."""
        expires: datetime | None = getattr(message, "expires_at", None)
        if expires is None:
            return
        if not isinstance(expires, datetime) or expires.tzinfo is None:
            raise InvalidMessageError.because(
                f"expires_at of message {message.id!r} must be a timezone-aware datetime"
            )
        if expires <= broker.clock.now():
            raise MessageExpiredError.because(f"message expired at {expires.isoformat()}")
        if self._sweep is None:
            self._schedule_sweep(broker)

    @hookimpl(tryfirst=True)
    @for_messages(_own_expiry)
    def mqkit_deliver(
        self, broker: Broker, subscription: Subscription, message: Message
    ) -> bool | None:
        """Withhold a message whose own ``expires_at`` has passed (and report it)."""
        expires: datetime | None = getattr(message, "expires_at", None)
        if expires is None or expires > broker.clock.now():
            return None
        self._expired(broker, message)
        return False

    @hookimpl
    def mqkit_subscription_taps(self, broker: Broker, subscription: Subscription) -> Taps | None:
        """Under ``message_ttl``, have every subscription check the default expiry itself.

        The subscription asks ``withhold`` only about a message older than ``message_ttl``
        (``Taps.max_age``): the per-message check is an age test, no call. Also starts the
        sweep when ``message_ttl`` was switched on at run time.
        """
        ttl = broker.config.message_ttl
        if ttl <= 0:
            return None
        if self._sweep is None:
            self._schedule_sweep(broker)

        def withhold(subscription: Subscription, message: Message) -> bool:
            if getattr(message, "expires_at", None) is not None:
                return False  # its own expiry wins: mqkit_deliver checks it
            self._expired(broker, message)
            return True

        return Taps(withhold=withhold, max_age=ttl)

    def _expired(self, broker: Broker, message: Message) -> None:
        broker.hooks.expire(broker, message.topic, message)
        if broker.has_feature("deadletter"):
            broker.dead_letter(message.topic, message, "expired", message.attempt)

    def _schedule_sweep(self, broker: Broker) -> None:
        with self._lock:
            if self._sweep is None and self._broker is broker:
                self._sweep = broker.timers.call_later(TTL_SWEEP_INTERVAL, self._run_sweep)

    def _run_sweep(self) -> None:
        broker = self._broker
        if broker is None:
            return
        with self._lock:
            self._sweep = None
        self.sweep(broker)
        self._schedule_sweep(broker)

    def sweep(self, broker: Broker) -> int:
        """Remove the expired messages at the front of every buffer now; return how many.

        Each subscription gives up the expired messages at the front of each of its FIFO runs
        (``Subscription.remove_front``): the work is what expired plus one look per run, not
        what is buffered. Under ``message_ttl`` alone expiries follow publish order, so that
        is every expired message; one with its own ``expires_at`` that expired behind a
        message still alive waits for the front (it is never handed out meanwhile).
        """
        now = broker.clock.now()
        default_ttl = broker.config.message_ttl

        def expired(m: Message) -> bool:
            expires = expiry_of(m, default_ttl)
            return expires is not None and expires <= now

        count = 0
        for sub in broker.subscriptions():
            for message in sub.remove_front(expired):
                broker.hooks.drop(broker, sub, message, "withheld")
                self._expired(broker, message)
                count += 1
        return count
