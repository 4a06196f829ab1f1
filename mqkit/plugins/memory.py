"""The ``memory`` plugin: a limit on the bytes the broker holds (on when ``max_memory_usage > 0``).

"Memory" is what the broker itself holds, estimated per message with
:func:`mqkit.core.message.estimate_size` when it is published: messages in subscription buffers
(a message shared by several buffers counts once, plus a slot per buffer), plus what features
hold - open transactions, unacknowledged deliveries kept for redelivery, dead letters
(``Feature.held_bytes()``). It is not the process's heap.

A publish (any path: ``publish``, batches, typed entry points, transactions, dead letters) that
would take the total past ``max_memory_usage`` is refused with ``MemoryLimitExceededError``:
nothing is delivered or stored. ``health_check()`` reports ``degraded`` at 90 % of the limit.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

from mqkit.core.broker import Broker
from mqkit.core.errors import MemoryLimitExceededError
from mqkit.core.features import Feature, MemoryFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import Message, estimate_size
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import Subscription

__all__ = ["SLOT_BYTES", "MemoryPlugin"]

SLOT_BYTES = 64
"""Bytes counted for each buffer a message sits in (beyond the message itself)."""

_LEFT_BUFFER = frozenset({"drop_oldest", "withheld", "unsubscribed"})


class MemoryPlugin(MemoryFeature):
    """Accounts buffered bytes exactly through the message-path hooks; enforces the limit."""

    plugin_info = PluginInfo(
        name="memory",
        description="memory accounting and max_memory_usage",
        enabled=lambda config: config.max_memory_usage > 0,
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, list[int]] = {}  # id(message) -> [size, copies in buffers]
        self._buffered = 0
        self._released: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._sizes = threading.local()
        self._features_seen: tuple[Feature, ...] = ()
        self._holders: tuple[Feature, ...] = ()
        self._broker: Broker | None = None

    # -- accounting ----------------------------------------------------------------------------

    def _enter(self, message: Message, copies: int) -> None:
        if copies <= 0:
            return
        lock = self._lock  # acquire/finally, not ``with``: this runs for every message
        lock.acquire()
        try:
            entry = self._held.get(id(message))
            if entry is None:
                last = getattr(self._sizes, "last", None)
                size = (
                    last[1] if last is not None and last[0] is message else estimate_size(message)
                )
                self._held[id(message)] = [size, copies]
                self._buffered += size + copies * SLOT_BYTES
            else:
                entry[1] += copies
                self._buffered += copies * SLOT_BYTES
        finally:
            lock.release()

    def _leave(self, message: Message) -> None:
        lock = self._lock
        lock.acquire()
        try:
            entry = self._held.get(id(message))
            if entry is None:
                return
            entry[1] -= 1
            self._buffered -= SLOT_BYTES
            if entry[1] <= 0:
                del self._held[id(message)]
                self._buffered -= entry[0]
        finally:
            lock.release()

    def usage(self) -> int:
        """Estimated bytes held now: buffers plus what features hold."""
        total = self._buffered
        broker = self._broker
        if broker is not None:
            features = broker.features()
            if features is not self._features_seen:  # the plugin set changed: look again
                self._holders = tuple(
                    f for f in features if type(f).held_bytes is not Feature.held_bytes
                )
                self._features_seen = features
            for feature in self._holders:
                total += feature.held_bytes()
        return total

    def _check(self, broker: Broker, incoming: int) -> None:
        limit = broker.config.max_memory_usage
        if limit <= 0:
            return
        used = self.usage()
        if used + incoming > limit:
            raise MemoryLimitExceededError.because(
                f"memory usage {used} + {incoming} bytes would exceed limit {limit} bytes"
            )

    # -- hooks ---------------------------------------------------------------------------------

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Start accounting, counting what buffers already hold (switched on at run time)."""
        self._broker = broker
        for sub in broker.subscriptions():
            for message in sub.buffered():
                self._enter(message, 1)

    @hookimpl
    def mqkit_broker_close(self) -> None:
        """Forget everything."""
        with self._lock:
            self._held.clear()
            self._buffered = 0
        self._broker = None

    @hookimpl(tryfirst=True)
    def mqkit_publish(self, broker: Broker, message: Message) -> None:
        """Refuse a message that would take the broker past its limit."""
        size = estimate_size(message)
        self._check(broker, size + SLOT_BYTES)
        self._sizes.last = (message, size)  # published() reuses it in this thread

    @hookimpl(tryfirst=True)
    def mqkit_accept(self, broker: Broker, messages: Sequence[Message]) -> None:
        """Refuse a batch whose total would take the broker past its limit."""
        if len(messages) > 1:
            self._check(broker, sum(estimate_size(m) + SLOT_BYTES for m in messages))

    @hookimpl
    def mqkit_published(self, messages: Sequence[Message], copies: Sequence[int]) -> None:
        """Count the buffered copies."""
        for message, n in zip(messages, copies, strict=True):
            self._enter(message, n)

    @hookimpl
    def mqkit_delivered(self, subscription: Subscription, message: Message) -> None:
        """A copy left its buffer."""
        if subscription not in self._released:
            self._leave(message)

    @hookimpl
    def mqkit_drop(self, subscription: Subscription | None, message: Message, reason: str) -> None:
        """A buffered copy was evicted or withheld (other drops never entered a buffer)."""
        if (
            subscription is not None
            and reason in _LEFT_BUFFER
            and subscription not in self._released
        ):
            self._leave(message)

    @hookimpl
    def mqkit_redeliver(self, message: Message) -> None:
        """A redelivered copy entered a buffer."""
        self._enter(message, 1)

    @hookimpl
    def mqkit_unsubscribe(self, subscription: Subscription) -> None:
        """A cancelled subscription's buffer is no longer the broker's."""
        self._released.add(subscription)
        for message in subscription.buffered():
            self._leave(message)

    @hookimpl
    def mqkit_health(self, broker: Broker) -> list[str] | None:
        """Report a broker at 90 % of its limit or more."""
        limit = broker.config.max_memory_usage
        used = self.usage()
        if limit > 0 and used >= 0.9 * limit:
            return [f"memory usage {used} bytes is at {used * 100 // limit}% of the limit"]
        return None
