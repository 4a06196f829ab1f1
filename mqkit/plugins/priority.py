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

import itertools
from collections import deque
from collections.abc import Callable, Iterator

from mqkit.core.broker import Broker
from mqkit.core.config import Config
from mqkit.core.hookspecs import for_messages, hookimpl
from mqkit.core.message import Message, Priority, has_field, message_priority
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import Subscription

__all__ = ["PriorityBuffer", "PriorityPlugin"]

_NORMAL = Priority.NORMAL
_PRUNE_AT = 8
"""Empty levels are kept (a level that empties and refills costs nothing) until this many."""


def _by_priority(item: tuple[int, deque[Message]]) -> int:
    return item[0]


class PriorityBuffer:
    """A subscription buffer: one FIFO ``deque`` per priority level, highest level first.

    ``append``, ``appendleft`` and ``popleft`` cost one dict look-up and one deque operation
    (plus a look at each empty level above the message's); ``evict`` looks at the levels
    from the lowest up: no cost grows with the number of buffered messages, and a buffered
    message costs one deque slot (8 bytes).

    Consumers call ``popleft`` without the subscription's lock, while publishers append and
    evict under it. So the levels are published to consumers as a tuple that is only ever
    replaced, never changed (a consumer iterates the one it read), a level's deque leaves
    that tuple only when it is empty, and every removal is one ``deque.popleft``: each message
    goes to exactly one taker. A level found non-empty and then empty (a consumer took its
    last message) is simply passed.
    """

    __slots__ = ("_ascending", "_levels", "_prune_at", "_queues")

    def __init__(self) -> None:
        self._levels: dict[int, deque[Message]] = {}
        self._queues: tuple[deque[Message], ...] = ()  # the levels' deques, highest first
        # (priority, deque) of each level, lowest first: what evict looks through.
        self._ascending: tuple[tuple[int, deque[Message]], ...] = ()
        self._prune_at = _PRUNE_AT

    def append(self, message: Message, /) -> None:
        """Add a message behind the others of its priority."""
        # message_priority, inlined: this runs for every buffered message.
        priority: int = getattr(message, "priority", _NORMAL)
        try:
            self._levels[priority].append(message)
        except KeyError:
            self._new_level(priority).append(message)

    def appendleft(self, message: Message, /) -> None:
        """Put a message back ahead of the others of its priority (redelivery)."""
        priority = message_priority(message)
        level = self._levels.get(priority)
        if level is None:
            level = self._new_level(priority)
        level.appendleft(message)

    def popleft(self) -> Message:
        """Remove and return the oldest message of the highest priority present.

        ``IndexError`` when every level is empty. Safe without the lock (see the class).
        """
        for level in self._queues:
            if level:
                try:
                    return level.popleft()
                except IndexError:
                    pass  # another consumer took its last message: look further down
        raise IndexError("pop from an empty priority buffer")

    def evict(self, incoming: Message, /) -> Message:
        """Drop the oldest message of the lowest priority present, ``incoming`` included.

        Returns ``incoming`` itself when it ranks below everything buffered (it is not
        buffered). Raises ``IndexError`` when there is nothing to evict because lock-free
        consumers emptied the lowest level meanwhile: they made room.
        """
        for priority, level in self._ascending:
            if level:
                # message_priority, inlined (evicting is the hot path of a full buffer).
                if getattr(incoming, "priority", _NORMAL) < priority:
                    return incoming  # lower than everything buffered: the new message goes
                try:
                    return level.popleft()
                except IndexError:
                    break  # a consumer took the last message of this level: there is room
        raise IndexError("nothing to evict: consumers emptied the buffer")

    def take_front(self, predicate: Callable[[Message], bool]) -> list[Message]:
        """Remove and return, level by level, the leading messages ``predicate`` selects.

        Each level gives up messages from its front while ``predicate`` is true of them and
        stops at the first it is false of (which stays). The cost is the messages removed plus
        the number of levels. Called under the subscription's lock while consumers pop: a
        message is only removed by ``popleft``, and one a consumer's pop made the front meanwhile
        is judged too and put back if it stays. If ``predicate`` raises, the messages removed
        so far are put back and nothing is removed.
        """
        taken: list[Message] = []
        starts: list[tuple[deque[Message], int]] = []  # (level, index in taken of its first)
        try:
            for level in self._queues:
                starts.append((level, len(taken)))
                while True:
                    try:
                        head = level[0]
                    except IndexError:
                        break
                    if not predicate(head):
                        break
                    try:
                        got = level.popleft()
                    except IndexError:
                        break
                    if got is not head:  # a consumer took ``head``: judge the new front
                        try:
                            stays = not predicate(got)
                        except BaseException:
                            level.appendleft(got)
                            raise
                        if stays:
                            level.appendleft(got)
                            break
                    taken.append(got)
        except BaseException:
            end = len(taken)
            for level, start in reversed(starts):
                level.extendleft(reversed(taken[start:end]))
                end = start
            raise
        return taken

    def clear(self) -> None:
        """Remove every message."""
        for level in self._queues:
            level.clear()
        self._levels = {}
        self._queues = ()
        self._ascending = ()
        self._prune_at = _PRUNE_AT

    def __len__(self) -> int:
        queues = self._queues
        if len(queues) == 1:  # plain messages only: one level
            return len(queues[0])
        return sum(map(len, queues))

    def __bool__(self) -> bool:
        return any(self._queues)

    def __iter__(self) -> Iterator[Message]:
        """The messages in delivery order (a snapshot)."""
        # One C-level pass (no bytecode runs, so no consumer pops during it).
        return iter(list(itertools.chain.from_iterable(self._queues)))

    def _new_level(self, priority: int) -> deque[Message]:
        """Under the lock: add an empty level for ``priority`` and publish the new levels."""
        levels = self._levels
        if len(levels) >= self._prune_at:
            # Forget the empty levels (only publishers fill a level, and they hold the lock).
            levels = {p: level for p, level in levels.items() if level}
            self._levels = levels
            self._prune_at = max(_PRUNE_AT, 2 * (len(levels) + 1))
        level: deque[Message] = deque()
        levels[priority] = level
        ascending = sorted(levels.items(), key=_by_priority)
        self._ascending = tuple(ascending)
        self._queues = tuple(level for _, level in reversed(ascending))
        return level


def _ranked(cls: type[Message], config: Config) -> bool:
    """The message classes that need a priority buffer: those with a ``priority`` field."""
    return has_field(cls, "priority")


class PriorityPlugin(Plugin):
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
