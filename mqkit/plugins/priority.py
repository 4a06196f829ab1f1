"""The ``priority`` plugin: subscriber buffers ordered by priority (``enable_priority_queue``).

A subscription's buffered messages come out highest priority first and FIFO within a level;
any ``int`` is a priority, and a message without one (a plain :class:`~mqkit.Message`) counts as
``Priority.NORMAL``. Publishing never waits for a dispatcher: ordering happens in the buffer.

Backpressure with priorities: ``DROP_OLDEST`` drops the oldest message of the *lowest* priority
present (a full buffer of urgent work is not thinned by a flood of low-priority messages;
when the new message itself is the lowest, older messages of its level go first; a new message
below everything buffered is itself dropped, reported as ``drop_newest``: it never entered the
buffer). The other policies act on the new message, as without priorities.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from mqkit.core.broker import Broker
from mqkit.core.config import Config
from mqkit.core.hookspecs import for_messages, hookimpl
from mqkit.core.message import Message, Priority, has_field, message_priority
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import Subscription

__all__ = ["PriorityBuffer", "PriorityPlugin"]

_Entry = tuple[int, int, Message]  # (-priority, sequence, message)
_push = heapq.heappush
_pop = heapq.heappop


class PriorityBuffer:
    """A subscription buffer ordered by (priority descending, arrival ascending).

    ``popleft`` is one ``heapq.heappop`` (a single C call, atomic under the GIL); sequence
    numbers are unique, so messages themselves are never compared.
    """

    __slots__ = ("_front", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._front = itertools.count(-1, -1)

    def append(self, message: Message, /) -> None:
        """Add a message behind the others of its priority."""
        # message_priority, inlined: this runs for every buffered message.
        priority: int = getattr(message, "priority", Priority.NORMAL)
        _push(self._heap, (-priority, next(self._seq), message))

    def appendleft(self, message: Message, /) -> None:
        """Put a message back ahead of the others of its priority (redelivery)."""
        heapq.heappush(self._heap, (-message_priority(message), next(self._front), message))

    def popleft(self) -> Message:
        """Remove and return the highest-priority, oldest message."""
        return _pop(self._heap)[2]

    def evict(self, incoming: Message, /) -> Message:
        """Drop the oldest message of the lowest priority present, ``incoming`` included."""
        heap = self._heap
        if not heap:
            raise IndexError("evict from an empty buffer")
        if -message_priority(incoming) > max(entry[0] for entry in heap):
            return incoming  # lower than everything buffered: the new message goes
        victim = max(range(len(heap)), key=lambda i: (heap[i][0], -heap[i][1]))
        entry = heap[victim]
        heap[victim] = heap[-1]
        heap.pop()
        heapq.heapify(heap)
        return entry[2]

    def clear(self) -> None:
        """Remove every message."""
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __iter__(self) -> Iterator[Message]:
        """The messages in delivery order."""
        return (entry[2] for entry in sorted(self._heap))


def _ranked(cls: type[Message], config: Config) -> bool:
    """The message classes that need a priority buffer: those with a ``priority`` field."""
    return has_field(cls, "priority")


class PriorityPlugin:
    """Supplies priority-ordered buffers while ``enable_priority_queue`` is on."""

    plugin_info = PluginInfo(
        name="priority",
        description="priority-ordered subscriber buffers",
        flag="enable_priority_queue",
    )

    @hookimpl
    @for_messages(_ranked)
    def mqkit_subscription_buffer(
        self, broker: Broker, subscription: Subscription
    ) -> PriorityBuffer | None:
        """Give a subscription a priority buffer once a message with a priority reaches it.

        Until then its buffer is the FIFO (plain messages all rank ``NORMAL``: the same order),
        so a broker that routes no prioritised message pays nothing for the plugin.
        """
        return PriorityBuffer()
