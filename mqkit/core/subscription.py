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
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Final, Protocol, Self, TypeVar

import attrs

from mqkit.core.checks import as_finite, describe, finite_seconds
from mqkit.core.errors import AckNotSupportedError, InvalidConfigError, SubscriptionClosedError
from mqkit.core.message import Message
from mqkit.core.status import SubscriptionStats

if TYPE_CHECKING:
    from mqkit.core.broker import Broker

__all__ = ["Backpressure", "Buffer", "FifoBuffer", "SubOptions", "Subscription", "check_options"]


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
    silently for this subscriber. Subscribing checks the options (:func:`check_options`).
    """

    buffer_size: int = 0
    policy: Backpressure = Backpressure.DROP_OLDEST
    block_timeout: float = 0.05
    filter: Callable[[Message], bool] | None = None


def check_options(opts: SubOptions) -> None:
    """Raise :class:`~mqkit.InvalidConfigError` naming the option a subscription cannot use.

    ``buffer_size`` must be an ``int`` of at least 0, ``policy`` a :class:`Backpressure`,
    ``block_timeout`` a finite number of seconds (NaN or infinity is refused), ``filter`` None or
    a callable. A ``bool`` is no number here.
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


_DROP_NEWEST: Final = Backpressure.DROP_NEWEST.value
"""The drop reason of a new message that never entered a full buffer (see ``mqkit_drop``)."""

_NO_MESSAGES: Final[Buffer] = FifoBuffer()
"""Stands in for a subscription's buffer while ``remove`` works on it; always empty."""


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
        self._received = 0
        self._dropped = 0

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
        try:
            message = self._buf.popleft()
        except IndexError:
            return self._get_slow(timeout)
        # Without a blocked publisher or a consumer-side hook, nothing else is due: no call.
        if (self._space_waiters or self._broker._hooks.on_take) and not self._after_pop(message):
            return self._get_slow(timeout)
        return message

    def get_nowait(self) -> Message:
        """Return a buffered message at once: ``get(timeout=0)`` (without its argument check)."""
        try:
            message = self._buf.popleft()
        except IndexError:
            return self._get_slow(0.0)
        if (self._space_waiters or self._broker._hooks.on_take) and not self._after_pop(message):
            return self._get_slow(0.0)
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
        try:
            message = self._buf.popleft()
        except IndexError:
            return await self._aget_slow(timeout)
        if (self._space_waiters or self._broker._hooks.on_take) and not self._after_pop(message):
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
        try:
            message: Message | None = self._buf.popleft()
        except IndexError:
            message = None
        if message is None or (
            (self._space_waiters or self._broker._hooks.on_take) and not self._after_pop(message)
        ):
            try:
                return await self._aget_slow(None)
            except SubscriptionClosedError:
                raise StopAsyncIteration from None
        return message

    def _get_slow(self, timeout: float | None) -> Message:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._pop_or_wait(deadline)
            if self._after_pop(message):
                return message

    def _after_pop(self, message: Message) -> bool:
        """Wake a blocked publisher, then hand ``message`` out unless a plugin withholds it.

        Every consumer path calls this for each message it pops; a withheld message is
        reported as dropped (``withheld``) and the caller looks for the next one.
        """
        if self._space_waiters:
            self._wake_space()
        hooks = self._broker._hooks
        cls = message.__class__
        if (
            hooks.deliver_on
            and cls not in hooks.deliver_idle
            and not hooks.deliver(self._broker, self, message)
        ):
            if hooks.drop_on:
                hooks.drop(self._broker, self, message, "withheld")
            return False
        if hooks.delivered_on and cls not in hooks.delivered_idle:
            hooks.delivered(self._broker, self, message)
        return True

    def _pop_or_enlist(self, remaining: float | None, waiter: _W) -> Message | _W:
        """Under the lock: pop a message, raise (closed, or out of time), or enlist ``waiter``."""
        with self._lock:
            if self._buf:
                return self._buf.popleft()
            if self._closed:
                raise SubscriptionClosedError.because(f"subscription to {self.topic!r}")
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no message on {self.topic!r} in time")
            self._waiters.append(waiter)
            return waiter

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
        filt = self._filter
        if filt is not None and not self._broker._run_filter(self, filt, message):
            return False
        # acquire/try/finally rather than ``with``: half the cost on the hottest line.
        lock = self._lock
        lock.acquire()
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
        finally:
            lock.release()
        return self._overflow(message)

    def _overflow(self, message: Message) -> bool:
        policy = self._policy
        dropped: Message | None = None
        close = False
        with self._lock:
            if self._closed:
                return False
            buf = self._buf
            if len(buf) < self._cap:  # a consumer made room meanwhile
                dropped = None
            elif policy is Backpressure.DROP_OLDEST:
                try:
                    dropped = buf.evict(message)
                except IndexError:  # lock-free consumers emptied it since the check: room
                    dropped = None
            elif policy is Backpressure.BLOCK_WITH_TIMEOUT:
                if not self._wait_for_space():
                    dropped = message
            else:
                dropped = message
                close = policy is Backpressure.CLOSE_SUBSCRIBER
            if dropped is not None:
                self._dropped += 1
            entered = dropped is not message and not self._closed
            if entered:
                buf.append(message)
                self._received += 1
                if self._waiters:
                    self._wake_one()
        if dropped is not None:
            hooks = self._broker._hooks
            if hooks.drop_on:
                # A buffer that drops the new message under DROP_OLDEST (a priority buffer whose
                # new message ranks lowest) did not evict anything: the new message never entered.
                rejected = dropped is message and policy is Backpressure.DROP_OLDEST
                reason = _DROP_NEWEST if rejected else policy.value
                hooks.drop(self._broker, self, dropped, reason)
        if close:
            self.cancel()
        return entered

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
        self._buf = buffer

    # -- plugin API --------------------------------------------------------------------------------

    def redeliver(self, message: Message) -> bool:
        """Put ``message`` back at the front for redelivery (plugin API; ignores the bound).

        Returns False when the subscription is closed (the message was not put back).
        """
        with self._lock:
            if self._closed:
                return False
            self._buf.appendleft(message)
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
            self._buf = _NO_MESSAGES
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
            finally:
                self._buf = buf
            for _ in range(min(len(gone), len(self._space_waiters))):
                self._space_waiters.popleft().wake()  # room for blocked publishers
        return gone

    @property
    def broker(self) -> Broker:
        """The broker this subscription belongs to."""
        return self._broker

    # -- acknowledgement -------------------------------------------------------------------------

    def ack(self, ack_id: str) -> None:
        """Acknowledge a message this subscription delivered (``AckNotFoundError`` if unknown)."""
        self._broker._check_open()
        feature = self._broker._ack_feature()
        if feature is None:
            raise AckNotSupportedError.because("acknowledgment support is disabled")
        feature.ack_subscription(self, ack_id)

    def nack(self, ack_id: str, requeue: bool = True) -> None:
        """Reject a delivered message: redeliver it (``requeue``) or dead-letter it."""
        self._broker._check_open()
        feature = self._broker._ack_feature()
        if feature is None:
            raise AckNotSupportedError.because("acknowledgment support is disabled")
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
        """Counters: messages enqueued, dropped by policy; buffer length and capacity."""
        with self._lock:
            return SubscriptionStats(
                received=self._received,
                dropped=self._dropped,
                queue_len=len(self._buf),
                queue_cap=self._cap,
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Subscription #{self.id} {self.topic!r} {state} {len(self._buf)}/{self._cap}>"
