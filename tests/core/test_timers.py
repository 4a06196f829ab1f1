"""The timer service: on a FakeClock (no thread, advance() fires) and on the real clock."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest

import mqkit

WAIT = 10.0


def timer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("mqkit") and t.is_alive()}


# -- FakeClock -----------------------------------------------------------------------------------


def test_fake_clock_moves_only_when_told() -> None:
    start = datetime(2030, 5, 1, tzinfo=UTC)
    clock = mqkit.FakeClock(start)
    t0 = clock.monotonic()
    assert clock.now() == start
    assert clock.now() == start  # no drift
    clock.advance(1.5)
    assert clock.monotonic() == pytest.approx(t0 + 1.5)
    assert clock.now() == start + timedelta(seconds=1.5)
    clock.advance(timedelta(minutes=1))
    assert clock.now() == start + timedelta(seconds=61.5)
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_fake_clock_default_start_is_aware() -> None:
    assert mqkit.FakeClock().now().tzinfo is not None


def test_time_is_now_in_posix_seconds() -> None:
    start = datetime(2030, 5, 1, tzinfo=UTC)
    clock = mqkit.FakeClock(start)
    assert clock.time() == start.timestamp()
    clock.advance(2.25)
    assert clock.time() == clock.now().timestamp() == start.timestamp() + 2.25

    real = mqkit.Clock()
    before = datetime.now(UTC).timestamp()
    now = real.time()
    # datetime keeps whole microseconds; time() does not round them away
    assert before <= now < datetime.now(UTC).timestamp() + 1e-6

    class Shifted(mqkit.Clock):
        """A clock that only says ``now()``: ``time()`` follows it."""

        def now(self) -> datetime:
            return start

    assert Shifted().time() == start.timestamp()


def test_fake_clock_runs_due_callbacks_in_order_without_a_thread() -> None:
    before = timer_threads()
    clock = mqkit.FakeClock()
    service = mqkit.TimerService(clock)
    t0 = clock.monotonic()
    fired: list[tuple[str, float]] = []

    def record(name: str) -> None:
        fired.append((name, clock.monotonic() - t0))

    service.call_later(3, lambda: record("c"))
    service.call_later(1, lambda: record("a"))
    service.call_later(2, lambda: record("b"))
    service.call_later(2, lambda: record("b2"))  # same deadline: scheduling order
    assert service.pending == 4
    assert timer_threads() - before == set()
    clock.advance(0.5)
    assert fired == []
    clock.advance(2)  # now at 2.5
    assert fired == [("a", 1.0), ("b", 2.0), ("b2", 2.0)]
    assert service.pending == 1
    clock.advance(10)
    assert fired[-1] == ("c", 3.0)
    assert clock.monotonic() - t0 == pytest.approx(12.5)
    assert service.pending == 0
    assert timer_threads() - before == set()
    service.close()


def test_fake_clock_deadline_is_inclusive() -> None:
    clock = mqkit.FakeClock()
    service = mqkit.TimerService(clock)
    fired: list[str] = []
    service.call_later(1, lambda: fired.append("x"))
    clock.advance(1)
    assert fired == ["x"]


def test_cancel_on_fake_clock() -> None:
    clock = mqkit.FakeClock()
    service = mqkit.TimerService(clock)
    fired: list[str] = []
    keep = service.call_later(1, lambda: fired.append("keep"))
    drop = service.call_later(1, lambda: fired.append("drop"))
    drop.cancel()
    drop.cancel()  # idempotent
    assert drop.cancelled and not keep.cancelled
    assert service.pending == 1
    clock.advance(5)
    assert fired == ["keep"]
    keep.cancel()  # harmless after it ran
    assert service.pending == 0


def test_callbacks_may_schedule_more_timers() -> None:
    clock = mqkit.FakeClock()
    service = mqkit.TimerService(clock)
    fired: list[float] = []
    t0 = clock.monotonic()

    def tick() -> None:
        fired.append(clock.monotonic() - t0)
        if len(fired) < 3:
            service.call_later(1, tick)

    service.call_later(1, tick)
    clock.advance(10)  # one advance runs the whole chain, each at its own deadline
    assert fired == [1.0, 2.0, 3.0]


def test_zero_and_negative_delays_fire_on_the_next_advance() -> None:
    clock = mqkit.FakeClock()
    service = mqkit.TimerService(clock)
    fired: list[str] = []
    service.call_later(0, lambda: fired.append("zero"))
    service.call_later(-5, lambda: fired.append("negative"))
    assert fired == []
    clock.advance(0)
    assert fired == ["zero", "negative"]


def test_failing_callback_is_logged_and_others_run(caplog: pytest.LogCaptureFixture) -> None:
    clock = mqkit.FakeClock()
    service = mqkit.TimerService(clock)
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("timer bug")

    service.call_later(1, boom)
    service.call_later(2, lambda: fired.append("after"))
    with caplog.at_level(logging.ERROR, logger="mqkit.timers"):
        clock.advance(3)
    assert fired == ["after"]
    assert any("timer bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_one_clock_drives_several_services_in_deadline_order() -> None:
    clock = mqkit.FakeClock()
    first = mqkit.TimerService(clock)
    second = mqkit.TimerService(clock)
    fired: list[str] = []
    first.call_later(2, lambda: fired.append("first@2"))
    second.call_later(1, lambda: fired.append("second@1"))
    second.call_later(3, lambda: fired.append("second@3"))
    clock.advance(5)
    assert fired == ["second@1", "first@2", "second@3"]


def test_close_cancels_pending_timers_on_fake_clock() -> None:
    clock = mqkit.FakeClock()
    service = mqkit.TimerService(clock)
    fired: list[str] = []
    handle = service.call_later(1, lambda: fired.append("x"))
    service.close()
    service.close()  # idempotent
    assert handle.cancelled
    assert service.pending == 0
    clock.advance(5)
    assert fired == []
    assert service.call_later(0, lambda: fired.append("late")).cancelled
    clock.advance(1)
    assert fired == []


def test_broker_timers_follow_the_fake_clock(make_broker, fake_clock: mqkit.FakeClock) -> None:
    before = timer_threads()
    broker = make_broker()
    assert broker.clock is fake_clock
    fired: list[str] = []
    broker.timers.call_later(30, lambda: fired.append("x"))
    fake_clock.advance(29.9)
    assert fired == []
    fake_clock.advance(0.1)
    assert fired == ["x"]
    assert timer_threads() - before == set()


# -- the real clock ------------------------------------------------------------------------------


def test_real_clock_runs_a_callback_and_close_joins_the_thread() -> None:
    before = timer_threads()
    service = mqkit.TimerService(mqkit.Clock())
    assert timer_threads() - before == set()  # started lazily
    fired = threading.Event()
    service.call_later(0.01, fired.set)
    assert fired.wait(WAIT)
    started = timer_threads() - before
    assert [t.name for t in started] == ["mqkit-timers"]
    service.close()
    assert all(not t.is_alive() for t in started)
    assert timer_threads() - before == set()


def test_real_clock_close_with_a_far_timer_pending() -> None:
    before = timer_threads()
    service = mqkit.TimerService(mqkit.Clock(), name="mqkit-test-timers")
    ran = threading.Event()
    handle = service.call_later(3600, ran.set)
    assert {t.name for t in timer_threads() - before} == {"mqkit-test-timers"}
    service.close()
    assert handle.cancelled
    assert timer_threads() - before == set()
    assert not ran.is_set()


def test_real_clock_earlier_timer_preempts_a_later_one() -> None:
    service = mqkit.TimerService(mqkit.Clock())
    try:
        late = threading.Event()
        soon = threading.Event()
        service.call_later(3600, late.set)  # the thread sleeps towards this one ...
        service.call_later(0, soon.set)  # ... and must wake up for this one
        assert soon.wait(WAIT)
        assert not late.is_set()
        assert service.pending == 1
    finally:
        service.close()


def test_real_clock_runs_callbacks_in_deadline_order() -> None:
    service = mqkit.TimerService(mqkit.Clock())
    try:
        order: list[int] = []
        done = threading.Event()
        gate = threading.Event()

        def first() -> None:
            gate.wait(WAIT)  # hold the timer thread until everything is scheduled
            order.append(0)

        service.call_later(0, first)
        for i in (3, 1, 2):  # deadlines 100 ms apart: far more than scheduling takes
            service.call_later(0.1 * i, lambda i=i: order.append(i))
        service.call_later(0.35, done.set)
        gate.set()
        assert done.wait(WAIT)
        assert order == [0, 1, 2, 3]
    finally:
        service.close()


def test_real_clock_cancel() -> None:
    service = mqkit.TimerService(mqkit.Clock())
    try:
        cancelled = threading.Event()
        marker = threading.Event()
        handle = service.call_later(0.02, cancelled.set)
        handle.cancel()
        service.call_later(0.05, marker.set)
        assert marker.wait(WAIT)  # runs after the cancelled deadline has passed
        assert not cancelled.is_set()
    finally:
        service.close()


def test_close_from_inside_a_callback() -> None:
    service = mqkit.TimerService(mqkit.Clock())
    closed = threading.Event()

    def close_me() -> None:
        service.close()  # must not try to join its own thread
        closed.set()

    service.call_later(0, close_me)
    assert closed.wait(WAIT)
    service.close()
    assert service.pending == 0


def test_pending_stays_exact_when_cancel_races_the_timer_thread() -> None:
    service = mqkit.TimerService(mqkit.Clock())
    try:
        for _ in range(3000):
            service.call_later(0, lambda: None).cancel()
        flushed = threading.Event()
        service.call_later(0, flushed.set)
        assert flushed.wait(WAIT)
        assert service.pending == 0
    finally:
        service.close()


def test_many_timers_from_many_threads() -> None:
    service = mqkit.TimerService(mqkit.Clock())
    try:
        n_threads, per_thread = 4, 200
        counted = threading.Semaphore(0)
        start = threading.Barrier(n_threads)

        def schedule() -> None:
            start.wait(WAIT)
            for i in range(per_thread):
                service.call_later(0.0001 * (i % 7), counted.release)

        threads = [threading.Thread(target=schedule) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        for _ in range(n_threads * per_thread):
            assert counted.acquire(timeout=WAIT)
        assert service.pending == 0
    finally:
        service.close()
