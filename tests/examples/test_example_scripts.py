"""The thread worker pool and the asyncio consumer examples, run as scripts."""

from __future__ import annotations

from .conftest import run_example


def test_worker_pool_acks_retries_and_dead_letters() -> None:
    result = run_example("worker_pool.py")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "done: 19 jobs acknowledged, each exactly once: True" in out
    assert "dead letter: job-13 (nacked after 4 attempts, 4 deliveries)" in out
    assert "job-7 failed on attempt 1: nack" in out
    assert "job-7 failed on attempt 2" not in out  # its retry succeeded
    assert "took job-3 and died without acking" in out  # redelivered by the ack deadline
    for attempt in (1, 2, 3, 4):
        assert f"job-13 failed on attempt {attempt}: nack" in out
    assert "metrics: acked 19, nacked 5, redelivered 5, dead-lettered 1" in out


def test_asyncio_consumer_handles_everything_once() -> None:
    result = run_example("asyncio_consumer.py")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "all 60 readings handled exactly once: True" in out
    assert "sensors.alert.fire: smoke in room 4" in out
    assert "sensors.alert.flood: water in the cellar" in out
    handled = [int(line.split()[2]) for line in out.splitlines() if line.startswith("task-")]
    assert len(handled) == 3 and sum(handled) == 60
