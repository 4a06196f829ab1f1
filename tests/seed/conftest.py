"""Helpers shared by the seed-test port (the Go suite of plumego ``net/mq``, seed-spec §4)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import mqkit

JOIN_TIMEOUT = 10.0
"""Seconds a concurrency test waits for its threads (the Go tests' 10 s receive window)."""


def _drain(sub: mqkit.Subscription) -> list[mqkit.Message]:
    """Everything ``sub`` hands out now, without waiting (delivery is synchronous)."""
    got: list[mqkit.Message] = []
    while True:
        try:
            got.append(sub.get_nowait())
        except (TimeoutError, mqkit.SubscriptionClosedError):
            return got


def _run_concurrently(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` for ``i`` in ``range(count)``, one thread each, released together.

    Re-raises the first exception a thread raised; fails if a thread is still running after
    ``JOIN_TIMEOUT`` seconds.
    """
    start = threading.Barrier(count)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            start.wait(JOIN_TIMEOUT)
            work(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"seed-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "worker threads did not finish"
    if errors:
        raise errors[0]


@pytest.fixture
def drain() -> Callable[[mqkit.Subscription], list[mqkit.Message]]:
    """``drain(sub)``: the messages ``sub`` hands out now, in order, without waiting."""
    return _drain


@pytest.fixture
def run_concurrently() -> Callable[[int, Callable[[int], None]], None]:
    """``run_concurrently(n, work)``: ``work(i)`` on ``n`` threads started together."""
    return _run_concurrently
