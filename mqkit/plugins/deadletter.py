"""The ``deadletter`` plugin: a bounded, readable dead letter queue (``enable_dead_letter_queue``).

A dead letter is kept as a :class:`~mqkit.DeadLetter` record (the original message, its
original topic, the reason and the number of deliveries made) and published to
``dead_letter_topic`` as a copy whose ``meta`` carries ``x-original-topic``,
``x-dead-letter-reason`` and ``x-attempts`` (a plain :class:`~mqkit.Message`: expiry, priority
and ack requirements are not carried over, as RabbitMQ drops ``expiration`` when it
dead-letters). At most ``max_dead_letters`` records are kept;
the oldest go first (counted as ``dropped`` in ``dead_letter_stats()``).
``dead_letters(limit)`` reads the oldest records; ``replay_dead_letters(limit)`` removes them
and re-publishes each to its original topic.

It is the sink of the ``ack`` and ``ttl`` plugins, which reach it through
``Broker.dead_letter`` - never by importing this module.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime

from mqkit.core.broker import Broker
from mqkit.core.errors import BrokerClosedError
from mqkit.core.features import DeadLetterFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import Message, estimate_size
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.shards import ByteShard
from mqkit.core.status import DeadLetter, DeadLetterStats

__all__ = ["DeadLetterPlugin"]


class DeadLetterPlugin(DeadLetterFeature, Plugin):
    """Keeps dead letters and publishes them to the dead letter topic."""

    plugin_info = PluginInfo(
        name="deadletter",
        description="bounded, readable dead letter queue",
        flag="enable_dead_letter_queue",
    )

    def __init__(self, broker: Broker) -> None:
        self._lock = threading.Lock()
        self._records: deque[tuple[DeadLetter, int]] = deque()
        self._total = 0
        self._dropped = 0
        # bytes of the kept records: the broker counts them (Feature.held_shard)
        self._held = self.held_shard = ByteShard()
        self._last: datetime | None = None
        self._topic = ""  # the DLQ topic, kept for stats() after close
        self._broker: Broker | None = broker  # None once stopped

    @hookimpl
    def mqkit_broker_close(self, broker: Broker) -> None:
        """Stop taking dead letters; the records and the topic stay readable in the stats."""
        self._topic = broker.config.dead_letter_topic
        self._broker = None

    def add(self, original_topic: str, message: Message, reason: str, attempts: int) -> None:
        """Publish a dead-letter copy to the DLQ topic, then keep the record."""
        broker = self._broker
        if broker is None:
            raise BrokerClosedError()
        config = broker.config
        meta = dict(message.meta)
        meta.update(
            {
                "x-original-topic": original_topic,
                "x-dead-letter-reason": reason,
                "x-attempts": str(attempts),
            }
        )
        # A plain Message: like RabbitMQ's dead-lettering, the copy drops expiry and ack
        # requirements (an expired message must still reach the DLQ topic).
        copy = Message(message.id, message.data, type=message.type, meta=meta)
        broker.publish(config.dead_letter_topic, copy)  # may raise (memory): nothing kept
        now = broker.clock.now()
        record = DeadLetter(
            message=message,
            original_topic=original_topic,
            reason=reason,
            attempts=attempts,
            time=now,
        )
        size = estimate_size(message)
        with self._lock:
            self._records.append((record, size))
            self._held.bytes += size
            self._total += 1
            self._last = now
            while len(self._records) > config.max_dead_letters:
                _, old = self._records.popleft()
                self._held.bytes -= old
                self._dropped += 1

    def stats(self) -> DeadLetterStats:
        """Totals, what is kept now, and what the bound dropped."""
        broker = self._broker
        with self._lock:
            return DeadLetterStats(
                enabled=True,
                topic=broker.config.dead_letter_topic if broker is not None else self._topic,
                total_messages=self._total,
                current_count=len(self._records),
                dropped=self._dropped,
                last_message_time=self._last,
            )

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` records (all when ``limit <= 0``)."""
        with self._lock:
            records = [r for r, _ in self._records]
        return records if limit <= 0 else records[:limit]

    def take(self, limit: int) -> list[DeadLetter]:
        """Remove and return the oldest ``limit`` records (all when ``limit <= 0``)."""
        with self._lock:
            count = len(self._records) if limit <= 0 else min(limit, len(self._records))
            taken = [self._records.popleft() for _ in range(count)]
            self._held.bytes -= sum(size for _, size in taken)
        return [r for r, _ in taken]

    def held_bytes(self) -> int:
        """Bytes of the kept records."""
        return self._held.bytes
