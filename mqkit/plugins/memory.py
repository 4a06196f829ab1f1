"""The ``memory`` plugin: a limit on the bytes the broker holds (on when ``max_memory_usage > 0``).

"Memory" is what the broker itself holds, estimated per message with
:func:`mqkit.core.message.estimate_size` when it is published: messages in subscription buffers
(each buffered copy counts, plus a slot per buffer: conservative for a message shared by several
buffers), plus what features hold - open transactions, unacknowledged deliveries kept for
redelivery, dead letters (``Feature.held_bytes()``). It is not the process's heap.

A publish (any path: ``publish``, batches, typed entry points, transactions, dead letters) that
would take the total past ``max_memory_usage`` is refused with ``MemoryLimitExceededError``:
nothing is delivered or stored. ``health_check()`` reports ``degraded`` at 90 % of the limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from mqkit.core.broker import Broker
from mqkit.core.errors import MemoryLimitExceededError, MQError
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


class _Shard:
    """One thread's accounting; only that thread writes it, so it takes no lock.

    ``bytes`` is the thread's net change of buffered bytes; ``pending`` what the thread's
    current publish call has checked so far.
    """

    __slots__ = ("bytes", "pending")

    def __init__(self) -> None:
        self.bytes = 0
        self.pending = 0


def _fold(total: _Shard, shard: _Shard) -> None:
    total.bytes += shard.bytes  # a finished thread's checks ended with its calls


class MemoryPlugin(MemoryFeature):
    """Accounts buffered bytes through the message-path hooks; enforces the limit.

    Each buffered copy counts the message's estimated size plus ``SLOT_BYTES``: a message
    shared by several buffers is counted once per buffer, which errs on the safe side for a
    limit. Counting takes no lock: each thread adds what it buffers and subtracts what it
    takes out in a shard of its own, and the usage is the sum of the shards.
    """

    plugin_info = PluginInfo(
        name="memory",
        description="memory accounting and max_memory_usage",
        enabled=lambda config: config.max_memory_usage > 0,
    )

    def __init__(self) -> None:
        self._shards = ThreadShards(_Shard, _fold)
        self._local = self._shards.local
        self._features_seen: tuple[Feature, ...] = ()
        self._holders: tuple[Feature, ...] = ()
        self._broker: Broker | None = None

    @property
    def shards(self) -> ThreadShards[_Shard]:
        """The per-thread counters (for tests and tooling: ``len(shards)``)."""
        return self._shards

    # -- accounting (flat on purpose: these run for every message) --------------------------------

    def usage(self) -> int:
        """Estimated bytes held now: buffers plus what features hold."""
        total = 0
        shards = self._shards
        folds = shards.folds
        for shard in shards.all:
            total += shard.bytes
        if folds != shards.folds or folds & 1:  # a fold ran meanwhile: add up under its lock
            with shards.lock:
                total = sum(shard.bytes for shard in shards.all)
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

    def _leave(self, message: Message) -> None:
        self._shards.get().bytes -= estimate_size(message) + SLOT_BYTES

    # -- hooks ---------------------------------------------------------------------------------

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Start accounting, counting what buffers already hold (switched on at run time)."""
        self._broker = broker
        shard = self._shards.get()
        for sub in broker.subscriptions():
            for message in sub.buffered():
                shard.bytes += estimate_size(message) + SLOT_BYTES

    @hookimpl
    def mqkit_broker_close(self) -> None:
        """Forget everything."""
        for shard in self._shards:
            shard.bytes = 0
        self._broker = None

    @hookimpl(tryfirst=True)
    def mqkit_publish(self, broker: Broker, topic: str, message: Message) -> None:
        """Refuse a message that would take the broker past its limit (one copy per buffer).

        Within one publish call (a batch), the messages already checked count too: the
        thread's ``pending`` sum is reset once the call was routed (or failed).
        """
        size = estimate_size(message)  # measured here once; remembered on the message
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shards.get()
        subs = len(broker.routes(topic))
        incoming = shard.pending + (size + SLOT_BYTES) * (subs if subs > 1 else 1)
        limit = broker.config.max_memory_usage
        if limit > 0:
            used = self.usage()
            if used + incoming > limit:
                raise MemoryLimitExceededError.because(
                    f"memory usage {used} + {incoming} bytes would exceed limit {limit} bytes"
                )
        shard.pending = incoming

    @hookimpl
    def mqkit_published(
        self, broker: Broker, messages: Sequence[Message], copies: Sequence[int]
    ) -> None:
        """Count the buffered copies (each message's size was measured at publish)."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shards.get()
        shard.pending = 0
        # By index: the hook's contract says the sequences have the same length, and
        # zip(..., strict=False) costs a keyword-argument call (0.2 us) per message.
        for i, n in enumerate(copies):
            if n > 0:
                shard.bytes += n * (estimate_size(messages[i]) + SLOT_BYTES)

    @hookimpl
    def mqkit_delivered(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """A copy left its buffer (a cancelled subscription's were un-counted at the cancel)."""
        if not subscription.closed:  # _leave, inlined: this runs for every message
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
        if subscription is not None and reason in _LEFT_BUFFER and not subscription.closed:
            self._leave(message)

    @hookimpl
    def mqkit_error(self, broker: Broker, operation: str, topic: str, error: MQError) -> None:
        """A publish call failed: what it had checked in this thread is not coming."""
        self._shards.get().pending = 0

    @hookimpl
    def mqkit_redeliver(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """A redelivered copy entered a buffer."""
        self._shards.get().bytes += estimate_size(message) + SLOT_BYTES

    @hookimpl
    def mqkit_unsubscribe(self, subscription: Subscription) -> None:
        """A cancelled subscription's buffer is no longer the broker's: un-count it."""
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
