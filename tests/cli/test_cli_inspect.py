"""``mqkit inspect PATH``: checked against a persistence directory the test filled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import mqkit

from .conftest import flat, run_mqkit


def store_config(path: Path) -> mqkit.Config:
    return mqkit.Config(
        enable_persistence=True,
        persistence_path=str(path),
        enable_ack_support=True,
        enable_dead_letter_queue=True,
        dead_letter_topic="dlq",
    )


def fill(broker: mqkit.Broker) -> dict[str, mqkit.Message]:
    """Publish a known mix; return the delivered (stamped) copies by id."""
    orders = broker.subscribe("orders")
    payments = broker.subscribe("payments")
    broker.publish("orders", mqkit.Message("o-1", {"sku": "A"}))
    broker.publish("orders", mqkit.PriorityMessage("o-2", priority=mqkit.Priority.HIGH))
    # One batch entry in the store; its settled members are marked with tombstones.
    broker.publish_batch(
        "payments",
        [mqkit.AckMessage(f"p-{i}", 10 * i, ack_id=f"ack-p-{i}") for i in (1, 2, 3)],
    )
    seen = {m.id: m for m in (orders.get(timeout=5), orders.get(timeout=5))}
    for _ in range(3):
        message = payments.get(timeout=5)
        seen[message.id] = message
    payments.ack("ack-p-1")  # settled: removed from the store
    payments.nack("ack-p-2", requeue=False)  # dead-lettered: moved to "dlq"
    return seen  # p-3 stays unacknowledged


def test_inspect_json_reports_what_the_directory_holds(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with mqkit.Broker(store_config(store)) as broker:
        seen = fill(broker)
    result = run_mqkit("inspect", "--json", str(store))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    when = {key: message.time.isoformat() for key, message in seen.items() if message.time}
    dead = [t for t in report["topics"] if t["topic"] == "dlq"]
    assert len(dead) == 1
    dlq_time = dead[0]["oldest"]
    assert report == {
        "path": str(store.resolve()),
        "locked_by": None,
        "total_messages": 4,
        "topics": [
            {
                "topic": "dlq",
                "messages": 1,
                "oldest": dlq_time,
                "newest": dlq_time,
                "pending_acks": 0,
                "dead_letters": 1,
            },
            {
                "topic": "orders",
                "messages": 2,
                "oldest": when["o-1"],
                "newest": when["o-2"],
                "pending_acks": 0,
                "dead_letters": 0,
            },
            {
                "topic": "payments",
                "messages": 1,
                "oldest": when["p-3"],
                "newest": when["p-3"],
                "pending_acks": 1,
                "dead_letters": 0,
            },
        ],
        "pending_acks": [
            {
                "topic": "payments",
                "id": "p-3",
                "ack_id": "ack-p-3",
                "attempt": 1,
                "time": when["p-3"],
            }
        ],
        "dead_letters": [
            {
                "topic": "dlq",
                "id": "p-2",
                "original_topic": "payments",
                "reason": "nacked after 1 attempts",
                "attempts": 1,
                "time": dlq_time,
            }
        ],
        "unreadable": 0,
        "expired": 0,
    }
    assert when["p-2"] <= dlq_time


def test_inspect_tables_for_people(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with mqkit.Broker(store_config(store)) as broker:
        fill(broker)
    result = run_mqkit("inspect", str(store))
    assert result.returncode == 0, result.stderr
    out = flat(result.stdout)
    assert "4 stored message(s)" in out
    for text in ("orders", "payments", "Pending acks", "ack-p-3", "Dead letters"):
        assert text in out
    assert "nacked after 1 attempts" in out
    assert result.stderr == ""  # no broker holds it: no note


def test_inspect_limit_bounds_every_table_the_topics_too(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with mqkit.Broker(store_config(store)) as broker:
        for name in ("t-a", "t-b", "t-c"):
            broker.publish(name, mqkit.Message(f"{name}-1"))
    limited = flat(run_mqkit("inspect", str(store), "--limit", "2").stdout)
    assert "t-a" in limited and "t-b" in limited and "t-c" not in limited
    assert "showing 2 row(s) per table; --limit 0 shows all" in limited
    everything = flat(run_mqkit("inspect", str(store), "--limit", "0").stdout)
    assert all(name in everything for name in ("t-a", "t-b", "t-c"))
    assert "showing" not in everything


def test_inspect_leaves_a_running_brokers_lock_alone(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with mqkit.Broker(store_config(store)) as broker:
        fill(broker)
        result = run_mqkit("inspect", "--json", str(store))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["locked_by"] == os.getpid()
        assert report["total_messages"] == 4  # what the broker committed so far

        human = run_mqkit("inspect", str(store))
        assert f"a broker (pid {os.getpid()}) holds this directory" in flat(human.stderr)
        assert "read-only" in flat(human.stderr)

        # The running broker keeps its directory: it still stores, and nobody else may open it.
        broker.publish("orders", mqkit.Message("o-3"))
        with pytest.raises(mqkit.PersistenceError, match="in use"):
            mqkit.Broker(store_config(store))
    after = json.loads(run_mqkit("inspect", "--json", str(store)).stdout)
    assert after["locked_by"] is None
    assert after["total_messages"] == 5


def test_inspect_of_a_directory_without_a_store_is_a_clear_error(tmp_path: Path) -> None:
    result = run_mqkit("inspect", str(tmp_path))
    assert result.returncode == 1
    assert "holds no mqkit store" in flat(result.stderr)
    result = run_mqkit("inspect", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "is not a directory" in flat(result.stderr)
