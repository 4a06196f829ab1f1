"""The ``memory`` plugin: a limit on the bytes the broker holds (on when ``max_memory_usage > 0``).

"Memory" is what the broker itself holds, estimated per message with
:func:`mqkit.core.message.estimate_size` (O(1): see there): messages in subscription buffers
(each buffered copy counts, plus ``SLOT_BYTES`` per buffer: conservative for a message shared by
several buffers), plus what features hold - open transactions, unacknowledged deliveries kept
for redelivery, dead letters (``Feature.held_bytes()``). It is not the process's heap.

A publish (any path: ``publish``, batches, typed entry points, transactions, dead letters) that
would take the total past ``max_memory_usage`` is refused with ``MemoryLimitExceededError``:
nothing is delivered or stored. ``health_check()`` reports ``degraded`` at 90 % of the limit.

The plugin counts nothing per message itself: it asks every subscription to *meter* its buffer
(``Taps(meter=True)``) - each copy is counted as it enters and leaves the buffer (handed out,
evicted, withheld, expired, removed; see ``Subscription._take`` for consumers that count out
without the lock) - and reads the broker's total, ``Broker.counted_bytes()``, where the
built-in features count what they hold too (``Feature.held_shard``; another feature's
``held_bytes()`` is asked). A cancelled subscription's buffer is no longer the broker's: it
leaves the total at the cancel. The limit is the admission's (``Broker.add_admission(...,
limit)``): a publish that keeps the total within it costs the broker one comparison, and only
one that would not calls the plugin. The check and the count are not one atomic step:
publishers that pass the check at the same time each add what they publish, so ``n``
concurrent publishers may overshoot the limit by at most one publish call's messages each.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mqkit.core.broker import Broker
from mqkit.core.errors import MemoryLimitExceededError
from mqkit.core.features import Feature, MemoryFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import Message
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import SLOT_BYTES, Subscription, Taps

__all__ = ["SLOT_BYTES", "MemoryPlugin"]

_METER = Taps(meter=True)


class MemoryPlugin(MemoryFeature, Plugin):
    """Enforces ``max_memory_usage`` on the bytes metered subscription buffers and features hold.

    Each buffered copy counts the message's estimated size plus ``SLOT_BYTES``: a message
    shared by several buffers is counted once per buffer, which errs on the safe side for a
    limit.
    """

    plugin_info = PluginInfo(
        name="memory",
        description="memory accounting and max_memory_usage",
        enabled=lambda config: config.max_memory_usage > 0,
    )

    def __init__(self, broker: Broker) -> None:
        self._features_seen: tuple[Feature, ...] = ()
        self._holders: tuple[Feature, ...] = ()
        self._broker = broker
        self._running = False  # from mqkit_broker_start to mqkit_broker_close

    def usage(self) -> int:
        """Estimated bytes held now: metered buffers plus what features hold (never below 0)."""
        if not self._running:  # not started, or stopped: nothing is counted
            return 0
        broker = self._broker
        total = broker.counted_bytes()
        features = broker.features()
        if features is not self._features_seen:  # the plugin set changed: look again
            self._find_holders(features)
        for feature in self._holders:
            total += feature.held_bytes()
        return total if total > 0 else 0

    def _find_holders(self, features: tuple[Feature, ...]) -> None:
        self._holders = tuple(
            f
            for f in features
            if type(f).held_bytes is not Feature.held_bytes and f.held_shard is None
        )
        self._features_seen = features

    def check(self, messages: Sequence[Message]) -> None:
        """Refuse messages that would take the broker past its limit (as a publish call).

        Each counts a copy per subscription it reaches (at least one). Raises
        ``MemoryLimitExceededError``.
        """
        if self._running:
            broker = self._broker
            self._admit(broker.incoming_bytes(messages), broker.counted_bytes())

    def _limit(self) -> int:
        """The count past which a publish must be checked (``Broker.add_admission``'s limit).

        ``max_memory_usage`` when every feature that holds messages counts them in the broker's
        count; -1 (check every publish) while one must be asked (``held_bytes()``); no limit:
        ``sys.maxsize``.
        """
        broker = self._broker
        self._find_holders(broker.features())
        limit = broker.config.max_memory_usage
        if limit <= 0:
            return sys.maxsize
        return -1 if self._holders else limit

    def _admit(self, incoming: int, counted: int) -> None:
        """Refuse a publish call that would add ``incoming`` bytes past the limit (all or none).

        The broker calls it for every call that routes messages - ``publish``, a batch, a
        transaction's commit, a replay - before persistence stores them (a transaction's
        messages were checked when it took them too: :meth:`check`).
        """
        if not self._running:
            return
        broker = self._broker
        limit = broker.config.max_memory_usage  # update_config may change it
        if limit > 0:
            used = counted
            features = broker.features()
            if features is not self._features_seen:  # the plugin set changed: look again
                self._find_holders(features)
            for feature in self._holders:
                used += feature.held_bytes()
            if used + incoming > limit:
                raise MemoryLimitExceededError.because(
                    f"memory usage {used} + {incoming} bytes would exceed limit {limit} bytes"
                )

    # -- hooks ---------------------------------------------------------------------------------

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Start reading the broker's metered bytes and checking its publishes."""
        self._running = True
        broker.add_admission(self._admit, self._limit)

    @hookimpl
    def mqkit_broker_close(self, broker: Broker) -> None:
        """Stop: nothing is counted or checked any more."""
        broker.remove_admission(self._admit)
        self._running = False

    @hookimpl
    def mqkit_subscription_taps(self, broker: Broker, subscription: Subscription) -> Taps:
        """Meter every subscription's buffer."""
        return _METER

    @hookimpl
    def mqkit_health(self, broker: Broker) -> list[str] | None:
        """Report a broker at 90 % of its limit or more."""
        limit = broker.config.max_memory_usage
        used = self.usage()
        if limit > 0 and used >= 0.9 * limit:
            return [f"memory usage {used} bytes is at {used * 100 // limit}% of the limit"]
        return None
