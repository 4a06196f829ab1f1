"""Subscriptions: a bounded buffer per subscriber, its backpressure policy, and its consumers.

Publishers append under the subscription's lock (so the bound, the policy and the counters are
exact under any number of publisher threads). Consumers pop without the lock when a message is
there (``deque.popleft`` is atomic) and take the lock only to wait. Waiting consumers - threads
or asyncio tasks, on any number of event loops - queue up as waiters; each append wakes one
waiter under the same lock that the consumer held while it saw the buffer empty, so no wake-up
is lost. A woken waiter that finds its message taken by a faster consumer simply waits again.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, Protocol, Self, TypeVar

import attrs

from mqkit.core.checks import as_finite, describe, finite_seconds
from mqkit.core.errors import (
    AckNotSupportedError,
    InvalidArgumentError,
    InvalidConfigError,
    SubscriptionClosedError,
)
from mqkit.core.message import Message, _read_time, estimate_size
from mqkit.core.status import SubscriptionStats

if TYPE_CHECKING:
    from mqkit.core.broker import Broker

__all__ = [
    "SAMPLE_EVERY",
    "SLOT_BYTES",
    "Backpressure",
    "Buffer",
    "FifoBuffer",
    "SubOptions",
    "Subscription",
    "Taps",
    "check_options",
]

log = logging.getLogger("mqkit")

SLOT_BYTES: Final = 64
"""Bytes counted for each buffer a message sits in, beyond the message's own estimate."""

SAMPLE_EVERY: Final = 64
"""A subscription calls its ``sample`` taps for one message in this many handed out."""


def _ack_not_enabled() -> AckNotSupportedError:
    from mqkit.core.plugins import enable_hint  # plugins imports this module (via hookspecs)

    return AckNotSupportedError.because(enable_hint("ack"))


class Backpressure(enum.Enum):
    """What a full subscription buffer does with a new message (the seed's four policies)."""

    DROP_OLDEST = "drop_oldest"
    """Drop the oldest buffered message to make room (the default)."""
    DROP_NEWEST = "drop_newest"
    """Drop the new message."""
    BLOCK_WITH_TIMEOUT = "block_with_timeout"
    """Make the publisher wait up to ``block_timeout`` for room, then drop the new message."""
    CLOSE_SUBSCRIBER = "close_subscriber"
    """Drop the new message and cancel the subscription (its buffer can still be drained)."""


@attrs.frozen(slots=True, kw_only=True)
class SubOptions:
    """Options of one subscription.

    ``buffer_size`` 0 means the broker's ``default_buffer_size``. ``block_timeout`` is the
    seconds a ``BLOCK_WITH_TIMEOUT`` publisher waits (finite: 0 or less does not wait).
    ``filter`` runs in the publisher's thread; a message it returns False for is skipped
    silently for this subscriber. ``group`` names a consumer group of a cluster subscription
    (``subscribe_from_cluster``: the group's subscriptions on every node share the messages);
    local subscriptions refuse it. Subscribing checks the options (:func:`check_options`).
    """

    buffer_size: int = 0
    policy: Backpressure = Backpressure.DROP_OLDEST
    block_timeout: float = 0.05
    filter: Callable[[Message], bool] | None = None
    group: str | None = None


def check_options(opts: SubOptions) -> None:
    """Raise :class:`~mqkit.InvalidConfigError` naming the option a subscription cannot use.

    ``buffer_size`` must be an ``int`` of at least 0, ``policy`` a :class:`Backpressure`,
    ``block_timeout`` a finite number of seconds (NaN or infinity is refused), ``filter`` None or
    a callable, ``group`` None or a non-empty str without white space or control characters.
    A ``bool`` is no number here.
    """
    size = opts.buffer_size
    field = problem = ""
    if not isinstance(size, int) or isinstance(size, bool):
        field, problem = "buffer_size", f"must be an int, not {describe(size)}"
    elif size < 0:
        field, problem = "buffer_size", "cannot be negative"
    elif not isinstance(opts.policy, Backpressure):
        field, problem = "policy", f"must be a Backpressure, not {describe(opts.policy)}"
    elif as_finite(opts.block_timeout) is None:
        field = "block_timeout"
        problem = f"must be a finite number of seconds, not {describe(opts.block_timeout)}"
    elif opts.filter is not None and not callable(opts.filter):
        field, problem = "filter", f"must be None or a callable, not {describe(opts.filter)}"
    elif opts.group is not None and (
        not isinstance(opts.group, str)
        or not opts.group
        or any(c.isspace() or not c.isprintable() for c in opts.group)
    ):
        field = "group"
        problem = f"must be None or a non-empty str without white space, not {describe(opts.group)}"
    if problem:
        raise InvalidConfigError(f"{InvalidConfigError.default}: {field} {problem}", field=field)


class Buffer(Protocol):
    """What a subscription buffers messages in. FIFO by default; plugins may supply another.

    ``popleft`` must be atomic under the GIL (a single C-level call), because consumers call
    it without the subscription's lock; every other method is called under the lock.
    """

    def append(self, message: Message, /) -> None:
        """Add a newly published message."""

    def appendleft(self, message: Message, /) -> None:
        """Put a message back for redelivery, ahead of the others of its rank."""

    def popleft(self) -> Message:
        """Remove and return the next message to hand out; ``IndexError`` when empty."""
        ...

    def evict(self, incoming: Message, /) -> Message:
        """Choose what ``DROP_OLDEST`` drops to make room for ``incoming`` in a full buffer.

        Remove and return a buffered message, or return ``incoming`` itself (not buffered) to
        drop the new message instead.
        """
        ...

    def take_front(self, predicate: Callable[[Message], bool], /) -> list[Message]:
        """Remove and return messages from the front of each FIFO run while ``predicate`` holds.

        A FIFO run is a sequence the buffer hands out in arrival order (the whole buffer of a
        FIFO, one priority level of a priority buffer). From each run's front, take messages
        while ``predicate`` is true of them; stop at the first it is false of. The cost is
        proportional to what is removed (plus one look per run), never to what is buffered.
        Consumers keep popping without the lock meanwhile: every message goes to exactly one of
        them or to this call. A buffer without this method is served by ``remove``'s walk
        (:meth:`Subscription.remove_front`).
        """
        ...

    def clear(self) -> None:
        """Remove every message."""

    def __len__(self) -> int:
        """Number of buffered messages."""
        ...

    def __iter__(self) -> Iterator[Message]:
        """The buffered messages (any order)."""
        ...


class FifoBuffer(deque[Message]):
    """The default buffer: first in, first out; ``evict`` drops the oldest."""

    __slots__ = ()

    def evict(self, incoming: Message, /) -> Message:
        """Remove the oldest message."""
        return self.popleft()

    def take_front(self, predicate: Callable[[Message], bool], /) -> list[Message]:
        """Remove and return the oldest messages while ``predicate`` holds (see ``Buffer``).

        Consumers pop without the lock, so the head is looked at (``self[0]``) and then popped;
        a consumer may take it in between. Then the message popped instead is judged too: kept
        if ``predicate`` holds, else put back at the front. In that tiny window a consumer may
        take the message behind it first (an order swap of two neighbours, only when a
        consumer pops at the very instant the head turned out not to be the one looked at);
        nothing is lost or handed out twice. A look at a head that ``predicate`` rejects
        changes nothing.
        """
        taken: list[Message] = []
        try:
            while True:
                try:
                    head = self[0]
                except IndexError:
                    return taken
                if not predicate(head):
                    return taken
                try:
                    popped = self.popleft()
                except IndexError:  # a consumer took the last one
                    return taken
                taken.append(popped)
                if popped is not head and not predicate(popped):
                    self.appendleft(taken.pop())  # a consumer took the head: this one stays
                    return taken
        except BaseException:
            self.extendleft(reversed(taken))  # a predicate that raises removes nothing
            raise


@attrs.frozen(slots=True, kw_only=True)
class Taps:
    """What a plugin asks of one subscription's per-message path, chosen once (plugin API).

    Returned by ``mqkit_subscription_taps`` when a subscription is made (and again when the
    plugin set changes): the subscription then calls these directly, in the consumer's thread,
    with no hook dispatch per message. Every field is optional:

    - ``withhold(subscription, message)``: called for every message a consumer is about to be
      handed (with ``max_age``: only for one published more than ``max_age`` seconds ago, by
      the broker's clock - the subscription tests the age itself, without a call); return
      True to withhold it (the tap reports why itself, e.g. ``mqkit_expire``; the
      subscription reports the drop as ``withheld``).
    - ``sample(subscription, message, weight)``: called for each of the first
      :data:`SAMPLE_EVERY` messages handed out, then for one in :data:`SAMPLE_EVERY` taken
      from the buffer (a message is sampled when it is handed out: a withheld one passes the
      turn to the next); ``weight`` is how many takes the sample stands for (1, then
      :data:`SAMPLE_EVERY`). A latency sampler.
    - ``taken(subscription, message)``: called for every message handed out (a counter of
      what a pattern subscription hands out per topic, say): the costliest tap, one call per
      message.
    - ``dropped(subscription, message, reason)``: called for every message this subscription
      drops (the reasons of ``mqkit_drop``), before the hook - a plugin that cares about the
      drops of its own subscriptions only needs no ``mqkit_drop`` call for everybody's.
    - ``meter``: count the bytes of this subscription's buffer in ``Broker.counted_bytes()``
      (and ``Subscription.buffered_bytes``): a FIFO's consumers then pop without the lock and
      count out in their own thread's share; other buffers' takes pop under the lock.
    - ``weigh(message)``: a plugin's own measure of a message (an AMQP body's length, say):
      the subscription keeps the sum over its buffered messages (``Subscription.weighed``),
      changed under its lock with the buffer on every path (put, take, eviction, removal,
      redelivery), so reading it costs nothing whatever is buffered. It must give the same
      number for a message each time (an exception counts as 0 and is reported as the
      plugin error of "weigh of subscription #N": logged, and in ``health_check()``); takes
      then pop under the subscription's lock. One weigher per subscription: the first
      plugin's that gives one.
    """

    withhold: Callable[[Subscription, Message], bool] | None = None
    max_age: float | None = None
    sample: Callable[[Subscription, Message, int], None] | None = None
    taken: Callable[[Subscription, Message], None] | None = None
    dropped: Callable[[Subscription, Message, str], None] | None = None
    meter: bool = False
    weigh: Callable[[Message], int] | None = None


_NO_TAPS: Final = Taps()


def _weight(sub: Subscription, weigh: Callable[[Message], int], message: Message) -> int:
    """Under ``sub``'s lock: ``weigh(message)``, or 0 when it fails.

    The buffer changes all the same; the failure is reported as a plugin error once no
    subscription's lock is held (``Subscription._weigh_failed``).
    """
    try:
        return int(weigh(message))
    except Exception as exc:
        sub._weigh_failed(exc)
        return 0


_NEVER: Final = 1 << 62
"""The sample countdown of a subscription without a sampler: it never runs out."""

_DROP_NEWEST: Final = Backpressure.DROP_NEWEST.value
_OLDEST: Final = Backpressure.DROP_OLDEST
_OLDEST_REASON: Final = Backpressure.DROP_OLDEST.value
"""The drop reason of a new message that never entered a full buffer (see ``mqkit_drop``)."""

_NO_MESSAGES: Final[Buffer] = FifoBuffer()
"""Stands in for a subscription's buffer while ``remove`` works on it; always empty."""


def _bytes_of(message: Message) -> int:
    """What a buffered copy adds to a metered count: its estimated size plus its slot."""
    size = message._size
    return (size if size >= 0 else estimate_size(message)) + SLOT_BYTES


def _check_max(max_messages: object) -> int:
    """``max_messages`` of ``get_many``: an ``int`` of at least 1 (``InvalidArgumentError``)."""
    if not isinstance(max_messages, int) or isinstance(max_messages, bool) or max_messages < 1:
        raise InvalidArgumentError.because(
            f"max_messages must be an int of at least 1, not {describe(max_messages)}"
        )
    return max_messages


class _ThreadWaiter:
    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> bool:
        self._lock.release()
        return True

    def wait(self, timeout: float | None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _AsyncWaiter:
    __slots__ = ("fut", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()
        self.thread = threading.get_ident()

    def wake(self) -> bool:
        if self.fut.done():
            return False
        if threading.get_ident() == self.thread:
            self.fut.set_result(None)
            return True
        try:
            self.loop.call_soon_threadsafe(_set_result, self.fut)
        except RuntimeError:  # the loop is closed: nobody waits here any more
            return False
        return True


_Waiter = _ThreadWaiter | _AsyncWaiter
_W = TypeVar("_W", _ThreadWaiter, _AsyncWaiter)


class Subscription:
    """A subscriber's end of a topic (or glob pattern): a bounded buffer to ``get`` from.

    Thread-safe; usable from threads (``get``, iteration) and asyncio (``aget``, ``async for``)
    at once. Cancelling it (or closing the broker) stops new messages; what is buffered can
    still be drained, after which ``get`` raises :class:`~mqkit.SubscriptionClosedError`.
    """

    def __init__(
        self, broker: Broker, sub_id: int, topic: str, options: SubOptions, capacity: int
    ) -> None:
        self._broker = broker
        self.id = sub_id
        """Broker-unique id, counting from 1."""
        self.topic = topic
        """The topic or glob pattern subscribed to (stripped)."""
        self.options = options
        """The options the subscription was made with."""
        self.is_pattern = False
        """Whether ``topic`` is a glob pattern."""
        self._cap = capacity
        self._policy = options.policy
        self._filter = options.filter
        self._buf: Buffer = FifoBuffer()
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._space_waiters: deque[_ThreadWaiter] = deque()
        self._closed = False
        # Counters, written under the lock: copies that entered the buffer, new copies dropped by
        # the policy or evicted, copies put back (redelivery), copies that left other than by
        # being handed out (evicted, withheld, removed). Handed out = the rest (``delivered``).
        self._received = 0
        self._dropped = 0
        self._requeued = 0
        self._left = 0
        self._warn_at = 1  # the drop count at which _warn_drops looks again (rate limit)
        self._warn_after = 0.0  # monotonic time before which no other drop warning is logged
        # The per-message path's strategies (see ``_configure``).
        self._bytes = 0
        self._counted = False  # the bytes are kept (Taps.meter)
        self._weigh: Callable[[Message], int] | None = None  # Taps.weigh
        self._weighed = 0
        self._metered = False  # either: takes pop under the lock and call _meter
        self._bytes_local = broker._bytes_local  # the broker's per-thread byte shards
        self._take: tuple[Callable[[], Message], bool] = (self._buf.popleft, False)
        """What consumers read, in one load: how to take the next message, and whether they
        count its bytes out themselves, after it (changed under the lock with ``_buf``):

        - unmetered: the buffer's ``popleft``, without the lock; nothing to count (False);
        - a FIFO whose bytes are counted, without a weigher: its ``popleft`` without the
          lock, then the copy's bytes out of the broker's count in the consumer's own shard
          (True): the subscription keeps no byte count of its own then (``buffered_bytes``
          adds the buffer up);
        - metered otherwise (a weigher, a plugin's buffer): ``_take_metered``, which pops
          and counts out under the lock (False).
        """
        self._withhold: tuple[tuple[float | None, Callable[[Subscription, Message], bool]], ...]
        self._withhold = ()
        self._clock_time = broker.clock.time
        self._samplers: tuple[Callable[[Subscription, Message, int], None], ...] = ()
        self._drop_taps: tuple[Callable[[Subscription, Message, str], None], ...] = ()
        self._taken: tuple[Callable[[Subscription, Message], None], ...] = ()
        self._countdown = _NEVER
        self._sampled = 0
        self._take_on = False
        self._take_idle: set[type] | frozenset[type] = frozenset()
        self._young = 0.0  # the age limit when it is the only take-side tap (else 0)
        self._hooks_idle: set[type] = broker._hooks.take_idle  # classes no take hook concerns
        self._ranked = True
        self._ring = options.policy is _OLDEST and options.filter is None
        """A FIFO under DROP_OLDEST, unfiltered, unmetered and without drop taps: ``_put``'s
        shortest way (the full buffer evicts its oldest message under the same lock)."""

    # -- consumers -------------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Message:
        """Return the next message, waiting up to ``timeout`` seconds (None: for ever).

        Raises ``TimeoutError`` when the time runs out (a timeout of 0 or less: unless a message
        is buffered), :class:`~mqkit.SubscriptionClosedError` once the subscription is closed
        and drained, and :class:`~mqkit.InvalidArgumentError` (a ``ValueError``) for a timeout
        that is NaN, infinite or no number, before taking anything: wait for ever with ``None``.
        """
        # A finite float passes with two tests; anything else is checked (or refused) by a call.
        if timeout is not None and not (timeout.__class__ is float and timeout - timeout == 0.0):
            timeout = finite_seconds(timeout, "timeout")
        pop, count_out = self._take
        try:
            message = pop()
        except IndexError:
            return self._get_slow(timeout)
        if count_out:  # _count_out, inlined
            size = message._size
            size = -SLOT_BYTES - (size if size >= 0 else estimate_size(message))
            try:
                self._bytes_local.shard.bytes += size
            except AttributeError:
                self._broker._bytes.get().bytes += size
        # Nothing else is due unless a sample is, a publisher is blocked or the message's class
        # has consumer-side work (hooks or taps): one countdown and three tests, no call.
        self._countdown = left = self._countdown - 1
        if (
            left <= 0
            or self._space_waiters
            or (self._take_on and message.__class__ not in self._take_idle)
        ) and not self._after_pop(message):
            return self._get_slow(timeout)
        return message

    def get_nowait(self) -> Message:
        """Return a buffered message at once: ``get(timeout=0)`` (without its argument check)."""
        pop, count_out = self._take
        try:
            message = pop()
        except IndexError:
            return self._get_slow(0.0)
        if count_out:
            self._count_out(message)
        self._countdown = left = self._countdown - 1
        if (
            left <= 0
            or self._space_waiters
            or (self._take_on and message.__class__ not in self._take_idle)
        ) and not self._after_pop(message):
            return self._get_slow(0.0)
        return message

    def get_many(self, max_messages: int, timeout: float | None = None) -> list[Message]:
        """Return up to ``max_messages`` messages (a list of at least one).

        Waits (as ``get``) for the first, then takes what else is buffered without waiting.
        Raises as ``get`` (``TimeoutError`` when not even one message came in time), and
        :class:`~mqkit.InvalidArgumentError` for a ``max_messages`` that is not an ``int`` of
        at least 1.
        """
        limit = _check_max(max_messages)
        taken = [self.get(timeout)]
        self._take_more(taken, limit)
        return taken

    async def aget_many(self, max_messages: int, timeout: float | None = None) -> list[Message]:
        """Await up to ``max_messages`` messages (as ``get_many``, without blocking the loop)."""
        limit = _check_max(max_messages)
        taken = [await self.aget(timeout)]
        self._take_more(taken, limit)
        return taken

    def _take_more(self, taken: list[Message], limit: int) -> None:
        """Append buffered messages to ``taken`` until it holds ``limit`` or none is left."""
        while len(taken) < limit:
            message = self._take_buffered()
            if message is None:
                return
            taken.append(message)

    def _take_buffered(self) -> Message | None:
        """A buffered message to hand out now, or None when none is (never waits)."""
        while True:
            pop, count_out = self._take
            try:
                message = pop()
            except IndexError:
                return None
            if count_out:
                self._count_out(message)
            self._countdown -= 1
            if self._after_pop(message):
                return message

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until the subscription is closed and drained."""
        while True:
            try:
                yield self.get()
            except SubscriptionClosedError:
                return

    async def aget(self, timeout: float | None = None) -> Message:
        """Await the next message (as ``get``, without blocking the event loop)."""
        if timeout is not None and not (timeout.__class__ is float and timeout - timeout == 0.0):
            timeout = finite_seconds(timeout, "timeout")
        pop, count_out = self._take
        try:
            message = pop()
        except IndexError:
            return await self._aget_slow(timeout)
        if count_out:
            self._count_out(message)
        self._countdown = left = self._countdown - 1
        if (
            left <= 0
            or self._space_waiters
            or (self._take_on and message.__class__ not in self._take_idle)
        ) and not self._after_pop(message):
            return await self._aget_slow(timeout)
        return message

    def __aiter__(self) -> AsyncIterator[Message]:
        """``async for message in subscription``: until closed and drained."""
        return self

    async def __anext__(self) -> Message:
        """The next message for ``async for`` (``aget``; closed and drained: the loop ends).

        One coroutine per message: ``aget``'s fast path is repeated here rather than wrapped
        in an async generator, which would cost a second frame and object per message.
        """
        message: Message | None = None
        pop, count_out = self._take
        # Not contextlib.suppress: a context manager per message costs 0.3 us.
        try:  # noqa: SIM105
            message = pop()
        except IndexError:
            pass
        if message is not None:
            if count_out:
                self._count_out(message)
            self._countdown = left = self._countdown - 1
            if (
                left <= 0
                or self._space_waiters
                or (self._take_on and message.__class__ not in self._take_idle)
            ) and not self._after_pop(message):
                message = None
        if message is None:
            try:
                return await self._aget_slow(None)
            except SubscriptionClosedError:
                raise StopAsyncIteration from None
        return message

    def _get_slow(self, timeout: float | None) -> Message:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._pop_or_wait(deadline)
            self._countdown -= 1
            if self._after_pop(message):
                return message

    def _after_pop(self, message: Message) -> bool:
        """Wake a blocked publisher, then hand ``message`` out unless a tap or plugin withholds it.

        Every consumer path calls this for a message it popped when anything is due (a sample,
        a blocked publisher, consumer-side work for the message's class); a withheld message is
        reported as dropped (``withheld``) and the caller looks for the next one.
        """
        young = self._young
        if (
            young
            and self._countdown > 0
            and not self._space_waiters
            and message.__class__ in self._hooks_idle
        ):  # the only take-side work is an age limit (message_ttl): a young message passes
            published = _read_time(message)
            if published is None or published + young > self._clock_time():
                return True
        if self._space_waiters:
            self._wake_space()
        for max_age, withhold in self._withhold:
            if max_age is not None:  # only what is old enough is asked about: no call
                published = _read_time(message)  # POSIX seconds
                if published is None:
                    continue
                if published + max_age > self._clock_time():
                    continue
            if withhold(self, message):
                self._withheld(message)
                return False
        hooks = self._broker._hooks
        cls = message.__class__
        deliver = hooks.deliver_on and cls not in hooks.deliver_idle
        if deliver and not hooks.deliver(self._broker, self, message):
            self._withheld(message)
            return False
        if hooks.delivered_on and cls not in hooks.delivered_idle:
            hooks.delivered(self._broker, self, message)
        elif (not deliver or cls in hooks.deliver_idle) and (
            not hooks.delivered_on or cls in hooks.delivered_idle
        ):
            hooks.take_idle.add(cls)  # no hook for this class: the fast path skips the call
        for taken in self._taken:
            taken(self, message)
        if self._countdown <= 0:
            samplers = self._samplers
            if samplers:
                self._sampled = sampled = self._sampled + 1
                weight = 1 if sampled <= SAMPLE_EVERY else SAMPLE_EVERY
                self._countdown = 1 if sampled < SAMPLE_EVERY else SAMPLE_EVERY
                for sample in samplers:
                    sample(self, message, weight)
            else:
                self._countdown = _NEVER
        return True

    def _withheld(self, message: Message) -> None:
        """A popped message is not handed out: count it and report the drop."""
        with self._lock:
            self._left += 1
        hooks = self._broker._hooks
        if hooks.drop_on or self._drop_taps:
            hooks.drop(self._broker, self, message, "withheld")

    def _pop_or_enlist(self, remaining: float | None, waiter: _W) -> Message | _W:
        """Under the lock: pop a message, raise (closed, or out of time), or enlist ``waiter``."""
        with self._lock:
            if self._buf:
                try:
                    return self._pop_locked()
                except IndexError:  # a lock-free consumer took the last one since the look
                    pass
            if self._closed:
                raise SubscriptionClosedError.because(f"subscription to {self.topic!r}")
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no message on {self.topic!r} in time")
            self._waiters.append(waiter)
            return waiter

    def _take_metered(self) -> Message:
        """Pop under the lock, un-counting the bytes (``IndexError`` when empty).

        How a metered subscription's consumers take when they cannot count out without the
        lock (``_take``: a weigher, a plugin's buffer): the counts and the buffer change
        together.
        """
        lock = self._lock
        lock.acquire()
        try:
            message = self._buf.popleft()
            if self._metered:
                self._meter(message, -1)
        finally:
            lock.release()
        return message

    def _pop_locked(self) -> Message:
        """Under the lock: pop the next message, un-counting its bytes when metered."""
        message = self._buf.popleft()
        if self._metered:
            self._meter(message, -1)
        return message

    def _meter(self, message: Message, sign: int) -> None:
        """Under the lock, while metered: count a copy in (``sign`` 1) or out (-1) of the buffer."""
        weigh = self._weigh
        if weigh is not None:
            self._weighed += sign * _weight(self, weigh, message)
            if not self._counted:
                return
        size = message._size
        if size < 0:
            size = estimate_size(message)
        size = sign * (size + SLOT_BYTES)
        self._bytes += size
        broker = self._broker
        try:  # Broker._add_bytes, inlined
            broker._bytes_local.shard.bytes += size
        except AttributeError:
            broker._bytes.get().bytes += size

    def _count_out(self, message: Message) -> None:
        """A consumer popped ``message`` without the lock; out of the broker's count (``_take``).

        Each copy leaves the buffer once - popped by one consumer, or by a change of how the
        buffer is metered (``_remeter``), which moves what it pops to a new buffer - so it is
        counted out once, in the shard of the thread that took it.
        """
        size = -_bytes_of(message)
        try:
            self._bytes_local.shard.bytes += size
        except AttributeError:
            self._broker._bytes.get().bytes += size

    def _retake(self) -> None:
        """Under the lock: publish how consumers take from ``_buf`` now (``_take``)."""
        if not self._metered:
            self._take = (self._buf.popleft, False)
        elif self._weigh is None and type(self._buf) is FifoBuffer:
            self._take = (self._buf.popleft, True)
        else:
            self._take = (self._take_metered, False)

    def _remeter(self, counted: bool, weigh: Callable[[Message], int] | None) -> None:
        """Under the lock: count the buffer's bytes (``counted``) and weigh it with ``weigh``.

        Consumers may pop without the lock (``_take``): one that read ``_take`` before
        this change may pop after it, and counts what it took the old way. So every message is
        moved to a new, empty buffer of the same kind, and counted the new way as it moves:
        each is popped once, by that consumer or by the move, and counted out once. A buffer
        whose class cannot make an empty one (a plugin's, with arguments) changes in place.
        """
        old = self._buf
        try:
            new: Buffer | None = type(old)()
        except Exception:
            new = None
        was_counted = self._counted
        self._counted, self._weigh = counted, weigh
        self._metered = counted or weigh is not None
        self._bytes = self._weighed = 0
        if new is None:  # in place: what is buffered now is counted the new way
            for message in list(old):
                self._recount(message, was_counted)
            self._retake()
            return
        self._buf = new
        self._retake()  # from now on consumers find the moved messages in the new buffer
        while True:
            try:
                message = old.popleft()
            except IndexError:
                break
            self._recount(message, was_counted)
            new.append(message)

    def _recount(self, message: Message, was_counted: bool) -> None:
        """Under the lock (``_remeter``): count a buffered copy the new way."""
        size = _bytes_of(message)
        if self._counted:
            self._bytes += size
            if not was_counted:
                self._broker._add_bytes(size)
        elif was_counted:
            self._broker._add_bytes(-size)
        if self._weigh is not None:
            self._weighed += _weight(self, self._weigh, message)

    def _weigh_failed(self, exc: Exception) -> None:
        """Under the lock: a ``Taps.weigh`` raised; have the broker's timer thread report it.

        Reported as a plugin error (logged, counted by ``health_check()``), from a thread that
        holds no subscription's lock: the report takes the broker's lock, which is taken
        before a subscription's, never after.
        """
        broker = self._broker
        who = f"weigh of subscription #{self.id}"
        broker.timers.call_later(0.0, lambda: broker._report_plugin_error(who, "Taps.weigh", exc))

    def _discard(self, waiter: _Waiter) -> bool:
        """Under the lock: withdraw ``waiter``; False if a publisher already woke it."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            return True
        return False

    def _pop_or_wait(self, deadline: float | None) -> Message:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            got = self._pop_or_enlist(remaining, _ThreadWaiter())
            if not isinstance(got, _ThreadWaiter):
                return got
            if not got.wait(remaining):
                with self._lock:
                    self._discard(got)
            # Woken, timed out or both: the next round decides.

    async def _aget_slow(self, timeout: float | None) -> Message:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            message = await self._apop_or_wait(loop, deadline)
            self._countdown -= 1
            if self._after_pop(message):
                return message

    async def _apop_or_wait(
        self, loop: asyncio.AbstractEventLoop, deadline: float | None
    ) -> Message:
        while True:
            remaining = None if deadline is None else deadline - loop.time()
            got = self._pop_or_enlist(remaining, _AsyncWaiter(loop))
            if not isinstance(got, _AsyncWaiter):
                return got
            try:
                if remaining is None:
                    await got.fut
                else:
                    async with asyncio.timeout(remaining):
                        await got.fut
            except TimeoutError:
                with self._lock:
                    self._discard(got)
            except BaseException:
                # Cancelled: if we were already woken, hand the wake-up on so it is not lost.
                with self._lock:
                    if not self._discard(got) and self._buf:
                        self._wake_one()
                raise

    # -- publishers (called by the broker) --------------------------------------------------------

    def _put(self, message: Message) -> bool:
        """Buffer ``message`` under the backpressure policy (publisher side).

        Returns whether the message entered the buffer.
        """
        if not self._ring:  # a ring has no filter (options are fixed): no look needed
            filt = self._filter
            if filt is not None and not self._broker._run_filter(self, filt, message):
                return False
        # acquire/try/finally rather than ``with``: half the cost on the hottest line.
        lock = self._lock
        lock.acquire()
        if self._ring:  # the shortest way (read under the lock: _configure may change it)
            try:
                if self._closed:
                    return False
                buf = self._buf
                if len(buf) < self._cap:
                    buf.append(message)
                    self._received += 1
                    if self._waiters:
                        self._wake_one()
                    return True
                try:  # full: the common overflow, evicting the oldest
                    dropped = buf.popleft()
                except IndexError:  # consumers emptied the buffer since the length was read
                    dropped = None
                buf.append(message)
                self._received += 1
                if self._waiters:
                    self._wake_one()
                if dropped is None:
                    return True
                self._left += 1
                self._dropped = drops = self._dropped + 1
            finally:
                lock.release()
            if drops >= self._warn_at:
                self._warn_drops()
            hooks = self._broker._hooks
            if hooks.drop_on and dropped.__class__ not in hooks.drop_idle:
                hooks.drop(self._broker, self, dropped, _OLDEST_REASON)
            return True
        try:
            buf = self._buf
            if len(buf) < self._cap and not self._closed:
                buf.append(message)
                self._received += 1
                if self._metered:
                    if self._weigh is None:  # _meter(message, 1) for bytes alone, inlined
                        size = message._size
                        if size < 0:
                            size = estimate_size(message)
                        size += SLOT_BYTES
                        self._bytes += size
                        broker = self._broker
                        try:  # Broker._add_bytes, inlined
                            broker._bytes_local.shard.bytes += size
                        except AttributeError:
                            broker._bytes.get().bytes += size
                    else:
                        self._meter(message, 1)
                if self._waiters:
                    self._wake_one()
                return True
            if self._closed:
                return False
            if self._policy is not _OLDEST:
                dropped = None  # the other policies: below, without the lock held
            else:  # full, DROP_OLDEST: make room under the same lock (the common overflow)
                try:  # FifoBuffer.evict, inlined
                    dropped = buf.popleft() if buf.__class__ is FifoBuffer else buf.evict(message)
                except IndexError:  # consumers emptied the buffer since the length was read
                    dropped = None
                if dropped is not message:
                    if dropped is not None:
                        self._dropped += 1
                        self._left += 1
                        if self._metered:
                            self._meter(dropped, -1)
                    buf.append(message)
                    self._received += 1
                    if self._metered:
                        self._meter(message, 1)
                    if self._waiters:
                        self._wake_one()
                else:
                    self._dropped += 1
        finally:
            lock.release()
        if self._policy is not _OLDEST:
            return self._overflow(message)
        if dropped is not None:
            if self._dropped >= self._warn_at:
                self._warn_drops()
            hooks = self._broker._hooks
            if self._drop_taps or (hooks.drop_on and dropped.__class__ not in hooks.drop_idle):
                # A buffer that drops the new message under DROP_OLDEST (a priority buffer whose
                # new message ranks lowest) did not evict anything: it never entered.
                reason = _DROP_NEWEST if dropped is message else _OLDEST_REASON
                hooks.drop(self._broker, self, dropped, reason)
        return dropped is not message

    def _overflow(self, message: Message) -> bool:
        """The policies other than ``DROP_OLDEST`` on a full buffer."""
        policy = self._policy
        dropped: Message | None = None
        close = False
        with self._lock:
            if self._closed:
                return False
            buf = self._buf
            if len(buf) < self._cap:  # a consumer made room meanwhile
                dropped = None
            elif policy is Backpressure.BLOCK_WITH_TIMEOUT:
                if not self._wait_for_space():
                    dropped = message
            else:
                dropped = message
                close = policy is Backpressure.CLOSE_SUBSCRIBER
            if dropped is not None:
                self._dropped += 1
                if dropped is not message:  # evicted: it was buffered
                    self._left += 1
                    if self._metered:
                        self._meter(dropped, -1)
            entered = dropped is not message and not self._closed
            if entered:
                buf.append(message)
                self._received += 1
                if self._metered:
                    self._meter(message, 1)
                if self._waiters:
                    self._wake_one()
        if dropped is not None and self._dropped >= self._warn_at:
            self._warn_drops()
        if dropped is not None and (self._drop_taps or self._broker._hooks.drop_on):
            self._broker._hooks.drop(self._broker, self, dropped, policy.value)
        if close:
            self.cancel()
        return entered

    def _warn_drops(self) -> None:
        """Log a WARNING that the policy dropped messages (the first drop, then once a minute).

        Between two warnings the clock is read once per 1,024 drops.
        """
        now = time.monotonic()
        if now < self._warn_after:
            self._warn_at = self._dropped + 1024
            return
        self._warn_at = self._dropped + 1
        self._warn_after = now + 60.0
        log.warning(
            "subscription %d to %r dropped %d message(s) so far: its buffer of %d is full "
            "(backpressure %s); consume faster, or subscribe with a larger buffer_size or "
            "another policy",
            self.id,
            self.topic,
            self._dropped,
            self._cap,
            self._policy.value,
        )

    def _wait_for_space(self) -> bool:
        """Under the lock: wait up to ``block_timeout`` for room. True when there is room."""
        deadline = time.monotonic() + max(0.0, self.options.block_timeout)
        while True:
            waiter = _ThreadWaiter()
            self._space_waiters.append(waiter)  # register first, then look (no lost wake-up)
            if len(self._buf) < self._cap or self._closed:
                self._space_waiters.remove(waiter)
                return not self._closed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._space_waiters.remove(waiter)
                return False
            self._lock.release()
            try:
                waiter.wait(remaining)
            finally:
                self._lock.acquire()
            if waiter in self._space_waiters:
                self._space_waiters.remove(waiter)

    def _wake_one(self) -> None:
        """Under the lock: wake the first live waiter."""
        waiters = self._waiters
        while waiters:
            if waiters.popleft().wake():
                return

    def _wake_space(self) -> None:
        with self._lock:
            if self._space_waiters:
                self._space_waiters.popleft().wake()

    def _set_buffer(self, buffer: Buffer) -> None:
        """At subscribe, before the taps: the plugin's buffer instead of the FIFO."""
        with self._lock:
            self._buf = buffer
            self._ring = self._ring and type(buffer) is FifoBuffer
            self._retake()

    def _rank(self) -> None:
        """Move to the buffer a plugin supplies, now that a message needs it (``_ranked``).

        A subscription whose buffer plugin declared the message classes it is for starts with
        a FIFO and moves here, under the lock, on the first such message routed to it: the
        buffered messages move in order (each ``popleft`` gives a message to exactly one taker,
        so a consumer popping meanwhile takes it from the old buffer or finds it in the new).
        """
        with self._lock:
            if self._ranked:
                return
            buffer = self._broker._hooks.subscription_buffer(self._broker, self)
            self._ranked = True
            if buffer is None:
                return
            old = self._buf
            self._buf = buffer
            self._ring = False
            self._retake()  # a counted FIFO's consumers pop under the lock from here on
            moved = 0
            while True:
                try:
                    message = old.popleft()
                except IndexError:
                    break
                if self._counted:  # _FREE kept no byte count: the new buffer keeps one
                    moved += _bytes_of(message)
                buffer.append(message)
            if self._counted:
                self._bytes = moved

    def _configure(self, taps: Sequence[Taps]) -> None:
        """Apply the taps plugins asked for and the broker's current hooks.

        At subscribe, and whenever the plugin set changes.
        """
        hooks = self._broker._hooks
        withhold = tuple((t.max_age, t.withhold) for t in taps if t.withhold is not None)
        samplers = tuple(t.sample for t in taps if t.sample is not None)
        self._drop_taps = tuple(t.dropped for t in taps if t.dropped is not None)
        taken = tuple(t.taken for t in taps if t.taken is not None)
        meter = any(t.meter for t in taps)
        weigh = next((t.weigh for t in taps if t.weigh is not None), None)
        with self._lock:
            self._withhold = withhold
            self._samplers = samplers
            self._taken = taken
            if not samplers:
                self._countdown = _NEVER
            elif self._countdown > SAMPLE_EVERY:  # sampling starts: the next hand-out is sampled
                self._countdown = 1
            self._take_on = bool(withhold or taken) or hooks.on_take
            self._take_idle = frozenset() if withhold or taken else hooks.take_idle
            # Age limits alone (no other tap): _after_pop tests the age first, without a call.
            ages = [age for age, _ in withhold]
            aged = bool(ages) and not taken and None not in ages
            self._young = min(a for a in ages if a is not None) if aged else 0.0
            self._hooks_idle = hooks.take_idle
            if self._closed:
                meter, weigh = False, None
            if meter != self._counted or weigh is not self._weigh:
                self._remeter(meter, weigh)
            self._ring = (
                self._policy is _OLDEST
                and self._filter is None
                and type(self._buf) is FifoBuffer
                and not self._metered
                and not self._drop_taps
            )

    # -- plugin API --------------------------------------------------------------------------------

    def offer(self, message: Message) -> bool:
        """Buffer a stamped ``message`` under the backpressure policy, as a publish (plugin API).

        For plugins that feed one subscription from elsewhere (the cluster's stream readers).
        A message whose class a buffer plugin ranks (``priority``) moves the subscription to
        that buffer first, as a publish would. Returns whether the message entered the buffer.
        """
        if not self._ranked:
            hooks = self._broker._hooks
            cls = message.__class__
            if cls not in hooks.buffer_idle and hooks.buffer_wanted(cls):
                self._rank()
        return self._put(message)

    def redeliver(self, message: Message) -> bool:
        """Put ``message`` back at the front for redelivery (plugin API; ignores the bound).

        Returns False when the subscription is closed (the message was not put back).
        """
        with self._lock:
            if self._closed:
                return False
            self._buf.appendleft(message)
            self._requeued += 1
            if self._metered:
                self._meter(message, 1)
            if self._waiters:
                self._wake_one()
        hooks = self._broker._hooks
        hooks.redeliver(self._broker, self, message)
        return True

    def buffered(self) -> list[Message]:
        """A snapshot of the buffered messages (plugin API)."""
        with self._lock:
            return list(self._buf)

    def remove(self, predicate: Callable[[Message], bool]) -> list[Message]:
        """Remove and return the buffered messages ``predicate`` selects (plugin API)."""
        # Consumers pop without the lock, and iterating a buffer they pop from fails (or
        # re-inserts what they took). So hide the buffer behind an empty one first (a
        # consumer then finds nothing and waits for the lock), take every message out
        # (``popleft`` hands each to exactly one taker), and put back the kept ones in order.
        with self._lock:
            buf = self._buf
            take = self._take
            self._buf = _NO_MESSAGES
            self._take = (_NO_MESSAGES.popleft, False)
            try:
                taken: list[Message] = []
                while True:
                    try:
                        taken.append(buf.popleft())
                    except IndexError:
                        break
                verdicts = [False] * len(taken)  # a predicate that raises removes nothing
                try:
                    verdicts = [bool(predicate(m)) for m in taken]
                finally:
                    gone = [m for m, drop in zip(taken, verdicts, strict=True) if drop]
                    for m, drop in zip(taken, verdicts, strict=True):
                        if not drop:
                            buf.append(m)
                    self._left += len(gone)
                    if self._metered:
                        for m in gone:
                            self._meter(m, -1)
            finally:
                self._buf = buf
                self._take = take
            for _ in range(min(len(gone), len(self._space_waiters))):
                self._space_waiters.popleft().wake()  # room for blocked publishers
        return gone

    def remove_front(self, predicate: Callable[[Message], bool]) -> list[Message]:
        """Remove and return the messages at the front that ``predicate`` selects (plugin API).

        From the front of each FIFO run of the buffer (the whole FIFO; each priority level),
        messages are taken while ``predicate`` holds (``Buffer.take_front``): the work is
        proportional to what is removed, whatever is buffered. Consumers keep taking
        messages meanwhile. A buffer without ``take_front`` gets ``remove``'s walk instead.
        """
        with self._lock:
            take_front = getattr(self._buf, "take_front", None)
            if take_front is not None:
                gone: list[Message] = take_front(predicate)
                self._left += len(gone)
                if self._metered:
                    for message in gone:
                        self._meter(message, -1)
                for _ in range(min(len(gone), len(self._space_waiters))):
                    self._space_waiters.popleft().wake()  # room for blocked publishers
                return gone
        return self.remove(predicate)  # a third-party buffer without take_front

    @property
    def broker(self) -> Broker:
        """The broker this subscription belongs to."""
        return self._broker

    # -- acknowledgement -------------------------------------------------------------------------

    def ack(self, ack_id: str) -> None:
        """Acknowledge a message this subscription delivered (``AckNotFoundError`` if unknown)."""
        broker = self._broker
        feature = broker._ack
        if feature is None or broker._closed:
            broker._check_open()
            raise _ack_not_enabled()
        feature.ack_subscription(self, ack_id)

    def nack(self, ack_id: str, requeue: bool = True) -> None:
        """Reject a delivered message: redeliver it (``requeue``) or dead-letter it."""
        self._broker._check_open()
        feature = self._broker._ack_feature()
        if feature is None:
            raise _ack_not_enabled()
        feature.nack_subscription(self, ack_id, requeue)

    # -- lifecycle ---------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop receiving (idempotent); buffered messages can still be drained."""
        self._broker._unsubscribe(self)

    def _close(self) -> bool:
        """Mark closed and wake every waiter; False if it was already closed."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            if self._take[1]:  # consumers pop without the lock: move, and count out
                self._remeter(False, None)
            elif self._metered:  # no longer the broker's: out of its total (drained uncounted)
                self._broker._add_bytes(-self._bytes)
                self._bytes = self._weighed = 0
                self._counted = self._metered = False
                self._weigh = None
                self._retake()
            while self._waiters:
                self._waiters.popleft().wake()
            while self._space_waiters:
                self._space_waiters.popleft().wake()
            return True

    @property
    def closed(self) -> bool:
        """Whether the subscription was cancelled or its broker closed."""
        return self._closed

    def stats(self) -> SubscriptionStats:
        """Counters: messages enqueued, dropped by policy, handed out; the buffer's state.

        O(1), but for ``buffered_bytes`` of a metered FIFO (see the property): per message,
        read the properties (``queue_len``, ``delivered``, ``dropped``) instead.
        """
        with self._lock:
            length = len(self._buf)
            return SubscriptionStats(
                received=self._received,
                dropped=self._dropped,
                queue_len=length,
                queue_cap=self._cap,
                delivered=max(0, self._received + self._requeued - self._left - length),
                buffered_bytes=self._buffered_bytes(),
            )

    @property
    def delivered(self) -> int:
        """Messages handed out to consumers so far (plugin API).

        Derived from the counters, so counting costs the consumers nothing; exact once
        consumers are quiet.
        """
        return max(0, self._received + self._requeued - self._left - len(self._buf))

    @property
    def queue_len(self) -> int:
        """Messages buffered now (``stats().queue_len``, without adding anything up)."""
        return len(self._buf)

    @property
    def queue_cap(self) -> int:
        """The buffer's bound (``stats().queue_cap``)."""
        return self._cap

    @property
    def dropped(self) -> int:
        """Messages this subscription dropped under its backpressure policy (plugin API)."""
        return self._dropped

    @property
    def buffered_bytes(self) -> int:
        """Estimated bytes of the buffered messages, when a plugin meters them (else 0).

        A metered FIFO whose consumers pop without the lock keeps no count of its own: its
        buffer is added up (O(buffered)); other metered buffers keep the count as they change.
        """
        with self._lock:
            return self._buffered_bytes()

    def _buffered_bytes(self) -> int:
        """Under the lock: ``buffered_bytes``."""
        if self._take[1]:  # consumers count out without the lock: no count of its own
            return sum(_bytes_of(m) for m in list(self._buf))
        return self._bytes

    @property
    def weighed(self) -> int:
        """The sum of ``Taps.weigh`` over the buffered messages (0 without one; plugin API)."""
        return self._weighed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Subscription #{self.id} {self.topic!r} {state} {len(self._buf)}/{self._cap}>"
