"""The ``memory`` plugin: a limit on the bytes the broker holds (on when ``max_memory_usage > 0``).

"Memory" is what the broker itself holds, estimated per message with
:func:`mqkit.core.message.estimate_size` when it is published: messages in subscription buffers
(each buffered copy counts, plus a slot per buffer: conservative for a message shared by several
buffers), plus what features hold - open transactions, unacknowledged deliveries kept for
redelivery, dead letters (``Feature.held_bytes()``). It is not the process's heap.

A publish (any path: ``publish``, batches, typed entry points, transactions, dead letters) that
would take the total past ``max_memory_usage`` is refused with ``MemoryLimitExceededError``:
nothing is delivered or stored. ``health_check()`` reports ``degraded`` at 90 % of the limit.

The usage is exact: every copy that enters a buffer is counted once, and un-counted once when
it leaves (handed out, evicted, withheld, expired, or its subscription cancelled). The check
and the count are not one atomic step: publishers that pass the check at the same time each
add what they publish, so ``n`` concurrent publishers may overshoot the limit by at most one
publish call's messages each.
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
from mqkit.core.shards import ThreadShards
from mqkit.core.subscription import Subscription

__all__ = ["SLOT_BYTES", "MemoryPlugin"]

SLOT_BYTES = 64
"""Bytes counted for each buffer a message sits in (beyond the message itself)."""

_LEFT_BUFFER = frozenset({"drop_oldest", "withheld", "unsubscribed"})
"""Drop reasons of a copy that was in its buffer (the others never entered one)."""


class _Shard:
    """One thread's net change of buffered bytes; only that thread writes it (no lock)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


def _fold(total: _Shard, shard: _Shard) -> None:
    total.bytes += shard.bytes


class _Cancelled:
    """What the plugin knows of a cancelled subscription's buffer.

    ``released`` counts, by ``id()``, the copies its buffer held when the cancel un-counted it
    (``None`` until then); ``early`` the bytes of copies that left the buffer after it was
    closed but before the cancel was counted (the cancel un-counts those too).
    """

    __slots__ = ("early", "released")

    def __init__(self) -> None:
        self.released: dict[int, int] | None = None
        self.early = 0


class MemoryPlugin(MemoryFeature):
    """Accounts buffered bytes through the message-path hooks; enforces the limit.

    Each buffered copy counts the message's estimated size plus ``SLOT_BYTES``: a message
    shared by several buffers is counted once per buffer, which errs on the safe side for a
    limit. Counting takes no lock: each thread adds what it buffers and subtracts what it
    takes out in a shard of its own, and the usage is the sum of the shards. A cancelled
    subscription's buffer is un-counted at the cancel (it is no longer the broker's).
    """

    plugin_info = PluginInfo(
        name="memory",
        description="memory accounting and max_memory_usage",
        enabled=lambda config: config.max_memory_usage > 0,
    )

    def __init__(self) -> None:
        self._shards = ThreadShards(_Shard, _fold)
        self._local = self._shards.local
        self._lock = threading.Lock()  # cancelled subscriptions
        self._cancelled: weakref.WeakKeyDictionary[Subscription, _Cancelled] = (
            weakref.WeakKeyDictionary()
        )
        self._features_seen: tuple[Feature, ...] = ()
        self._holders: tuple[Feature, ...] = ()
        self._broker: Broker | None = None

    @property
    def shards(self) -> ThreadShards[_Shard]:
        """The per-thread counters (for tests and tooling: ``len(shards)``)."""
        return self._shards

    # -- accounting (flat on purpose: these run for every message) --------------------------------

    def usage(self) -> int:
        """Estimated bytes held now: buffers plus what features hold.

        While messages flow, a copy a consumer took before its publisher counted it makes the
        sum dip for an instant; the reading never goes below 0.
        """
        broker = self._broker
        if broker is None:  # not started, or stopped: nothing is counted
            return 0
        shards = self._shards
        folds = shards.folds
        total = 0
        for shard in shards.all:
            total += shard.bytes
        if folds != shards.folds or folds & 1:  # a thread's shard was folded meanwhile
            with shards.lock:
                total = sum(shard.bytes for shard in shards.all)
        features = broker.features()
        if features is not self._features_seen:  # the plugin set changed: look again
            self._holders = tuple(
                f for f in features if type(f).held_bytes is not Feature.held_bytes
            )
            self._features_seen = features
        for feature in self._holders:
            total += feature.held_bytes()
        return total if total > 0 else 0

    def check(self, messages: Sequence[Message]) -> None:
        """Refuse messages that would take the broker past its limit (as a publish call).

        Each counts a copy per subscription it reaches (at least one). Raises
        ``MemoryLimitExceededError``.
        """
        broker = self._broker
        if broker is not None:
            self.mqkit_accept(broker, messages)

    def _left_closed(self, subscription: Subscription, message: Message) -> None:
        """A copy left the buffer of a closed subscription: un-count it unless the cancel did."""
        size = estimate_size(message) + SLOT_BYTES
        with self._lock:
            if self._broker is None:  # stopped: the broker is closing, nothing is counted
                return
            known = self._cancelled.get(subscription)
            if known is None:
                known = self._cancelled[subscription] = _Cancelled()
            released = known.released
            if released is None:  # the cancel is not counted yet: it will un-count this too
                known.early += size
                return
            left = released.get(id(message), 0)
            if left:  # un-counted by the cancel
                if left > 1:
                    released[id(message)] = left - 1
                else:
                    del released[id(message)]
                return
        self._shards.get().bytes -= size  # taken out before the cancel looked

    # -- hooks ---------------------------------------------------------------------------------

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Start accounting, counting what buffers already hold (switched on at run time)."""
        shard = self._shards.get()
        for sub in broker.subscriptions():
            for message in sub.buffered():
                shard.bytes += estimate_size(message) + SLOT_BYTES
        self._broker = broker

    @hookimpl
    def mqkit_broker_close(self) -> None:
        """Forget everything."""
        with self._lock:
            self._broker = None
            with self._shards.lock:
                for shard in self._shards:
                    shard.bytes = 0
            self._cancelled.clear()

    @hookimpl(tryfirst=True)
    def mqkit_accept(self, broker: Broker, messages: Sequence[Message]) -> None:
        """Refuse a publish call whose messages would not fit: all of them or none.

        One hook for every call that routes messages - ``publish``, a batch, a transaction's
        commit, a replay - before persistence stores them (a transaction's messages were
        checked when it took them too: :meth:`check`).
        """
        incoming = 0
        for message in messages:
            subs = len(broker.routes(message.topic))
            # measured here once: estimate_size remembers the size on the message
            incoming += (estimate_size(message) + SLOT_BYTES) * (subs if subs > 1 else 1)
        limit = broker.config.max_memory_usage
        if limit > 0:
            used = self.usage()
            if used + incoming > limit:
                raise MemoryLimitExceededError.because(
                    f"memory usage {used} + {incoming} bytes would exceed limit {limit} bytes"
                )

    @hookimpl
    def mqkit_published(
        self, broker: Broker, messages: Sequence[Message], copies: Sequence[int]
    ) -> None:
        """Count the buffered copies (each message's size was measured at publish)."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shards.get()
        # By index: the hook's contract says the sequences have the same length, and
        # zip(..., strict=False) costs a keyword-argument call (0.2 us) per message.
        for i, n in enumerate(copies):
            if n > 0:
                shard.bytes += n * (estimate_size(messages[i]) + SLOT_BYTES)

    @hookimpl
    def mqkit_delivered(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """A copy left its buffer."""
        if subscription.closed:
            self._left_closed(subscription, message)
            return
        size = estimate_size(message) + SLOT_BYTES  # the number remembered at publish
        try:
            self._local.shard.bytes -= size
        except AttributeError:
            self._shards.get().bytes -= size

    @hookimpl
    def mqkit_drop(
        self, broker: Broker, subscription: Subscription | None, message: Message, reason: str
    ) -> None:
        """A buffered copy was evicted or withheld (other drops never entered a buffer)."""
        if subscription is None or reason not in _LEFT_BUFFER:
            return
        if subscription.closed:
            self._left_closed(subscription, message)
        else:
            self._shards.get().bytes -= estimate_size(message) + SLOT_BYTES

    @hookimpl
    def mqkit_redeliver(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """A redelivered copy entered a buffer."""
        self._shards.get().bytes += estimate_size(message) + SLOT_BYTES

    @hookimpl
    def mqkit_unsubscribe(self, subscription: Subscription) -> None:
        """A cancelled subscription's buffer is no longer the broker's: un-count it.

        Its consumer may still drain it: what leaves it from now on was un-counted here
        (remembered by identity), except copies taken out before this ran.
        """
        with self._lock:
            if self._broker is None:
                return
            messages = subscription.buffered()
            known = self._cancelled.get(subscription)
            if known is None:
                known = self._cancelled[subscription] = _Cancelled()
            released: dict[int, int] = {}
            total = known.early
            for message in messages:
                released[id(message)] = released.get(id(message), 0) + 1
                total += estimate_size(message) + SLOT_BYTES
            known.released, known.early = released, 0
            self._shards.get().bytes -= total

    @hookimpl
    def mqkit_health(self, broker: Broker) -> list[str] | None:
        """Report a broker at 90 % of its limit or more."""
        limit = broker.config.max_memory_usage
        used = self.usage()
        if limit > 0 and used >= 0.9 * limit:
            return [f"memory usage {used} bytes is at {used * 100 // limit}% of the limit"]
        return None
