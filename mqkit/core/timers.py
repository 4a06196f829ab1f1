"""Time for the broker: a clock, a fake clock for tests, and the timer service plugins share.

One :class:`TimerService` per broker runs every timed action (ack deadlines, transaction
timeouts, TTL sweeps) on **one** thread, started lazily on the first ``call_later`` and joined by
``close()``. On a :class:`FakeClock` no thread is started at all: ``FakeClock.advance()`` runs
the due timers synchronously in the caller's thread, so tests never sleep to wait for a timeout.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mqkit.core.checks import finite_seconds

__all__ = ["Clock", "FakeClock", "TimerHandle", "TimerService"]

log = logging.getLogger("mqkit.timers")

_SLACK = 1e-9
"""Float rounding slack of :meth:`FakeClock.advance`: a timer due within a nanosecond of the
target fires (three ``advance(0.1)`` calls reach a deadline set at 0.2 + 0.1)."""


class Clock:
    """The real clock: ``monotonic()`` for deadlines, ``now()`` for timestamps (UTC, aware).

    ``time()`` is ``now()`` as POSIX seconds (a float), for work on every message: the broker
    stamps published messages with it (``Message.time`` turns it into a ``datetime`` when read),
    and float arithmetic (a latency) costs a fraction of ``datetime`` arithmetic.
    """

    manual: bool = False
    """True for clocks that drive their timer services themselves (see :class:`FakeClock`)."""

    def __init__(self) -> None:
        if type(self) is Clock:
            # Bind the C functions themselves: every message is stamped with ``now()``, and
            # the Python-level method around them would double the cost of the call.
            self.monotonic = time.monotonic  # type: ignore[method-assign]
            self.now = functools.partial(datetime.now, UTC)  # type: ignore[method-assign]
            self.time = time.time  # type: ignore[method-assign]

    def monotonic(self) -> float:
        """Seconds on a monotonic clock, for deadlines and latencies."""
        return time.monotonic()

    def now(self) -> datetime:
        """The current instant as a timezone-aware UTC ``datetime``."""
        return datetime.now(UTC)

    def time(self) -> float:
        """The current instant as POSIX seconds: ``now().timestamp()``, but cheaper."""
        return self.now().timestamp()

    def attach(self, service: TimerService) -> None:
        """Called by a timer service built on this clock; the real clock ignores it."""


class FakeClock(Clock):
    """A clock that moves only when told to; ``advance()`` fires the timers that fall due.

    Timers scheduled on a broker built with this clock never run on a thread: each
    ``advance(seconds)`` steps through the due deadlines in order, setting the clock to each
    deadline before running its callbacks, in the calling thread.
    """

    manual = True

    def __init__(self, start: datetime | None = None) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self._start = start if start is not None else datetime(2026, 1, 1, tzinfo=UTC)
        self._offset = 0.0
        self._services: weakref.WeakSet[TimerService] = weakref.WeakSet()

    def monotonic(self) -> float:
        """Seconds since the fake clock was made, plus 1000 (never zero)."""
        return 1000.0 + self._offset

    def now(self) -> datetime:
        """The fake current instant."""
        return self._start + timedelta(seconds=self._offset)

    def time(self) -> float:
        """The fake current instant as POSIX seconds."""
        return self._start.timestamp() + self._offset

    def attach(self, service: TimerService) -> None:
        """Remember a timer service so ``advance`` can run its due timers."""
        self._services.add(service)

    def advance(self, seconds: float | timedelta) -> None:
        """Move the clock forward, running every timer that falls due on the way, in order."""
        if isinstance(seconds, timedelta):
            step = seconds.total_seconds()
        else:  # NaN would run every timer, infinity end the clock: InvalidArgumentError
            step = finite_seconds(seconds, "seconds")
        if step < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            target = self._offset + step
            while True:
                due = [d for s in list(self._services) if (d := s.next_deadline()) is not None]
                nxt = min(due, default=None)
                if nxt is None or nxt - 1000.0 > target + _SLACK:
                    break
                self._offset = max(self._offset, nxt - 1000.0)
                for service in list(self._services):
                    service.run_due()
            self._offset = max(self._offset, target)
            for service in list(self._services):
                service.run_due()


class TimerHandle:
    """A scheduled callback; ``cancel()`` stops it if it has not run yet."""

    __slots__ = ("_callback", "_service", "cancelled", "deadline")

    def __init__(self, service: TimerService, deadline: float, callback: Callable[[], None]):
        self._service = service
        self._callback = callback
        self.deadline = deadline
        self.cancelled = False

    def cancel(self) -> None:
        """Cancel the timer (idempotent; harmless after it ran)."""
        if not self.cancelled:
            self._service._cancel(self)


class TimerService:
    """Runs callbacks at deadlines on one lazily started thread (or on a fake clock)."""

    def __init__(self, clock: Clock, name: str = "mqkit-timers") -> None:
        self.clock = clock
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._ncancelled = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        clock.attach(self)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback()`` after ``delay`` seconds; exceptions are logged, not raised.

        ``delay`` must be finite (``InvalidArgumentError``); 0 or less runs it at once.
        """
        deadline = self.clock.monotonic() + max(0.0, finite_seconds(delay, "delay"))
        handle = TimerHandle(self, deadline, callback)
        with self._cond:
            if self._closed:
                handle.cancelled = True
                return handle
            heapq.heappush(self._heap, (deadline, next(self._seq), handle))
            if not self.clock.manual:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
                elif self._heap[0][2] is handle:
                    self._cond.notify()
        return handle

    @property
    def pending(self) -> int:
        """Timers scheduled and not yet run or cancelled."""
        with self._cond:
            return len(self._heap) - self._ncancelled

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None."""
        with self._cond:
            self._drop_cancelled_head()
            return self._heap[0][0] if self._heap else None

    def run_due(self) -> None:
        """Run every timer whose deadline has passed (used by fake clocks and the thread)."""
        while True:
            with self._cond:
                handle = self._pop_due()
            if handle is None:
                return
            self._fire(handle)

    def close(self) -> None:
        """Cancel every pending timer and join the thread (idempotent)."""
        with self._cond:
            self._closed = True
            for _, _, handle in self._heap:
                handle.cancelled = True
            self._heap.clear()
            self._ncancelled = 0
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- internals ----------------------------------------------------------------------------

    def _cancel(self, handle: TimerHandle) -> None:
        with self._cond:  # the timer thread may pop (and mark) the handle meanwhile
            if handle.cancelled:
                return
            handle.cancelled = True
            self._ncancelled += 1
            if self._ncancelled > 1024 and self._ncancelled * 2 > len(self._heap):
                self._heap = [e for e in self._heap if not e[2].cancelled]
                heapq.heapify(self._heap)
                self._ncancelled = 0

    def _drop_cancelled_head(self) -> None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
            self._ncancelled = max(0, self._ncancelled - 1)

    def _pop_due(self) -> TimerHandle | None:
        self._drop_cancelled_head()
        if self._heap and self._heap[0][0] <= self.clock.monotonic():
            handle = heapq.heappop(self._heap)[2]
            handle.cancelled = True  # it runs now; a later cancel() is a no-op
            return handle
        return None

    def _fire(self, handle: TimerHandle) -> None:
        try:
            handle._callback()
        except Exception:
            log.exception("timer callback %r failed", handle._callback)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    self._drop_cancelled_head()
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - self.clock.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    return
                handle = self._pop_due()
            if handle is not None:
                self._fire(handle)
