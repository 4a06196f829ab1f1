"""``mqkit demo``: a scripted scenario through every broker feature, on real time.

The broker runs with every in-memory feature on (priority, TTL, ack, transactions, dead letter
queue, memory limit, metrics) and persistence in a temporary directory. Each step publishes,
consumes and checks what happened; timeouts are short (a 0.3 s TTL, a 0.3 s ack deadline) and
really elapse, so the whole run takes about a second. The last step closes the broker and opens
a new one on the same directory: persisted messages are recovered and replayed.

The scenario is separate from its display: :func:`run_scenario` reports to a :class:`Reporter`
(``mqkit demo`` draws a live progress display and a metrics table with rich; :func:`run_demo`
prints plain lines).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import attrs

from mqkit.core.broker import Broker
from mqkit.core.config import Config
from mqkit.core.errors import (
    InvalidTopicError,
    MemoryLimitExceededError,
    TransactionNotFoundError,
)
from mqkit.core.message import AckMessage, Message, Priority, PriorityMessage, TTLMessage
from mqkit.core.status import DeadLetterStats, HealthStatus, MetricsSnapshot
from mqkit.core.subscription import Backpressure, SubOptions, Subscription

__all__ = ["STEPS", "DemoResult", "Reporter", "demo_config", "run_demo", "run_scenario"]

TTL = 0.3
"""Seconds a demo message lives before it expires."""
ACK_TIMEOUT = 0.3
"""Seconds the demo's consumer has to acknowledge before a redelivery."""
MEMORY_LIMIT = 4 * 1024 * 1024
"""The demo broker's ``max_memory_usage`` (bytes)."""
WAIT = 5.0
"""Upper bound on any wait for a message (they arrive far sooner)."""

STEPS: tuple[tuple[str, str], ...] = (
    ("pub/sub", "publish to a topic and a glob pattern"),
    ("priority", "highest priority first, FIFO within a level"),
    ("TTL", "an expired message is never handed out"),
    ("ack", "a missed ack deadline redelivers, then ack settles"),
    ("nack", "nack without requeue goes to the dead letter queue"),
    ("transactions", "a committed and a rolled-back transaction"),
    ("backpressure", "a full buffer under DROP_OLDEST"),
    ("memory", "a publish past max_memory_usage is refused"),
    ("consumers", "a thread consumer and an asyncio consumer"),
    ("persistence", "restart: recover and replay persisted messages"),
)
"""The scenario's steps: (feature, what the step shows), in order."""


class Reporter(Protocol):
    """Where the scenario reports progress."""

    def step(self, feature: str, title: str) -> None:
        """A step begins."""

    def check(self, ok: bool, text: str) -> None:
        """A step checked something; ``ok`` says whether it was as expected."""

    def note(self, text: str) -> None:
        """Something worth saying that is not a check."""


@attrs.frozen(kw_only=True)
class DemoResult:
    """What the scenario found: failed checks and the broker's state at the end."""

    checks: int
    failures: tuple[str, ...]
    features: tuple[str, ...]
    """The features the scenario exercised, in order."""
    metrics: MetricsSnapshot
    """The first broker's metrics, just before the restart."""
    health: HealthStatus
    """The first broker's health, just before the restart."""
    restarted_health: HealthStatus
    """The second broker's health after recovering and replaying."""
    dead_letters: DeadLetterStats
    persistence_path: str
    recovered: int

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.failures


def demo_config(path: str | Path) -> Config:
    """The demo broker's config: every in-memory feature on, persistence in ``path``."""
    return Config(
        enable_priority_queue=True,
        enable_ack_support=True,
        default_ack_timeout=ACK_TIMEOUT,
        max_ack_retries=3,
        enable_transactions=True,
        enable_dead_letter_queue=True,
        dead_letter_topic="dlq",
        max_memory_usage=MEMORY_LIMIT,
        enable_metrics=True,
        enable_persistence=True,
        persistence_path=str(path),
    )


class _Run:
    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.checks = 0
        self.failures: list[str] = []
        self.features: list[str] = []

    def step(self, feature: str) -> None:
        title = dict(STEPS)[feature]
        self.features.append(feature)
        self.reporter.step(feature, title)

    def check(self, ok: bool, text: str) -> None:
        self.checks += 1
        if not ok:
            self.failures.append(f"{self.features[-1]}: {text}")
        self.reporter.check(ok, text)

    def note(self, text: str) -> None:
        self.reporter.note(text)


def _ids(sub: Subscription, count: int) -> list[str]:
    return [sub.get(timeout=WAIT).id for _ in range(count)]


def _first_broker(run: _Run, broker: Broker) -> None:
    dlq = broker.subscribe("dlq", SubOptions(buffer_size=100))

    run.step("pub/sub")
    orders = broker.subscribe("orders.created")
    every_order = broker.subscribe_pattern("orders.*")
    broker.publish("orders.created", Message("o-1", {"sku": "A-42", "qty": 3}))
    got, seen = orders.get(timeout=WAIT), every_order.get(timeout=WAIT)
    run.check(got.id == "o-1" and got.topic == "orders.created", f"'orders.created' got {got.id}")
    run.check(seen.id == "o-1", f"pattern 'orders.*' got {seen.id} from {seen.topic}")

    run.step("priority")
    tasks = broker.subscribe("tasks")
    for msg_id, level in (
        ("low", Priority.LOW),
        ("normal", Priority.NORMAL),
        ("urgent", Priority.HIGHEST),
        ("high", Priority.HIGH),
    ):
        broker.publish_priority("tasks", PriorityMessage(msg_id, priority=level))
    order = _ids(tasks, 4)
    run.check(
        order == ["urgent", "high", "normal", "low"],
        f"published low, normal, urgent, high; delivered {', '.join(order)}",
    )

    run.step("TTL")
    sensor = broker.subscribe("sensor")
    now = broker.clock.now()
    broker.publish_ttl("sensor", TTLMessage("stale", expires_at=now + timedelta(seconds=TTL)))
    broker.publish_ttl("sensor", TTLMessage("fresh", expires_at=now + timedelta(minutes=5)))
    time.sleep(TTL + 0.05)  # real time passes: "stale" expires while it waits in the buffer
    got = sensor.get(timeout=WAIT)
    expired = [d for d in broker.dead_letters() if d.reason == "expired"]
    run.check(got.id == "fresh", f"after {TTL + 0.05:.2f} s the consumer got {got.id!r} only")
    run.check(
        [d.message.id for d in expired] == ["stale"],
        "'stale' expired in the buffer and was dead-lettered (reason 'expired')",
    )

    run.step("ack")
    payments = broker.subscribe_with_ack("payments")
    broker.publish_with_ack("payments", AckMessage("pay-1", {"amount": 42}))
    first = payments.get(timeout=WAIT)
    run.note(f"got {first.id} (attempt {first.attempt}); not acking within {ACK_TIMEOUT} s")
    again = payments.get(timeout=WAIT)
    run.check(
        again.id == "pay-1" and again.attempt == 2,
        f"redelivered {again.id} as attempt {again.attempt} after the ack deadline",
    )
    payments.ack(again.ack_id)  # type: ignore[attr-defined]
    run.check(True, f"acked {again.id} (ack id {again.ack_id})")  # type: ignore[attr-defined]

    run.step("nack")
    broker.publish_with_ack("payments", AckMessage("pay-2", {"amount": -1}))
    bad = payments.get(timeout=WAIT)
    payments.nack(bad.ack_id, requeue=False)  # type: ignore[attr-defined]
    letters = [dlq.get(timeout=WAIT) for _ in range(2)]  # "stale" (TTL step), then "pay-2"
    letter = letters[-1]
    reason = letter.meta.get("x-dead-letter-reason", "")
    run.check(
        letter.id == "pay-2" and reason == "nacked after 1 attempts",
        f"the dead letter queue got {letter.id}: {reason!r} "
        f"(from {letter.meta.get('x-original-topic')!r})",
    )

    run.step("transactions")
    ledger = broker.subscribe("ledger")
    with broker.transaction("tx-commit") as tx:
        tx.publish("ledger", Message("debit", 100))
        tx.publish("ledger", Message("credit", 100))
        held = ledger.stats().queue_len
    delivered = _ids(ledger, 2)
    run.check(
        held == 0 and delivered == ["debit", "credit"],
        f"committed: nothing delivered while open, then {', '.join(delivered)} together",
    )
    try:
        with broker.transaction("tx-rollback") as tx:
            tx.publish("ledger", Message("refund", 100))
            raise RuntimeError("payment declined")
    except RuntimeError:
        pass
    try:
        broker.commit_transaction("tx-rollback")
        ended = "still open"
    except TransactionNotFoundError as exc:
        ended = str(exc)
    run.check(
        ledger.stats().queue_len == 0 and "rolled back" in ended,
        "rolled back on an exception: nothing delivered",
    )

    run.step("backpressure")
    slow = broker.subscribe("ticks", SubOptions(buffer_size=2, policy=Backpressure.DROP_OLDEST))
    for i in range(5):
        broker.publish("ticks", Message(f"t-{i}"))
    kept = [slow.get_nowait().id for _ in range(2)]
    run.check(kept == ["t-3", "t-4"], f"5 published into a 2-slot buffer; kept {kept}")
    run.check(slow.stats().dropped == 3, f"counted {slow.stats().dropped} drops")

    run.step("memory")
    big = Message("huge", "x" * (MEMORY_LIMIT + 1024 * 1024))
    try:
        broker.publish("uploads", big)
        run.check(False, "a message larger than the limit was accepted")
    except MemoryLimitExceededError:
        run.check(True, f"a {len(big.data) // 1024} KiB message was refused (limit 4096 KiB)")
    try:
        broker.publish("   ", Message("x"))
        run.check(False, "an empty topic was accepted")
    except InvalidTopicError as exc:
        run.check(True, f"an empty topic was refused: {exc}")
    run.note(f"the broker holds about {broker.memory_usage():,} bytes")

    run.step("consumers")
    thread_sub = broker.subscribe("jobs", SubOptions(buffer_size=100))
    async_sub = broker.subscribe("jobs", SubOptions(buffer_size=100))
    received: list[str] = []
    worker = threading.Thread(target=lambda: received.extend(m.id for m in thread_sub))
    worker.start()

    async def consume() -> list[str]:
        return [(await async_sub.aget(timeout=WAIT)).id for _ in range(5)]

    for i in range(5):
        broker.publish("jobs", Message(f"job-{i}"))
    async_ids = asyncio.run(consume())
    thread_sub.cancel()
    worker.join(timeout=WAIT)
    run.check(received == [f"job-{i}" for i in range(5)], f"thread consumer got {received}")
    run.check(async_ids == received, "asyncio consumer got the same five")

    run.step("persistence")
    for i in range(3):
        broker.publish("critical", Message(f"important-{i}", {"n": i}))
    run.note("published important-0..2 to 'critical' with no subscriber; closing the broker")


def run_scenario(reporter: Reporter, directory: str | Path | None = None) -> DemoResult:
    """Run the scenario, reporting to ``reporter``; persistence goes to ``directory``.

    ``directory`` defaults to a temporary directory removed afterwards.
    """
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="mqkit-demo-") as tmp:
            return run_scenario(reporter, tmp)
    run = _Run(reporter)
    config = demo_config(directory)
    with Broker(config) as broker:
        _first_broker(run, broker)
        metrics, health = broker.metrics(), broker.health_check()
        dead_letters = broker.dead_letter_stats()
    with Broker(config) as restarted:
        recovered = restarted.recover_messages("critical", 100)
        ids = [m.id for m in recovered]
        run.check(
            ids == ["important-0", "important-1", "important-2"],
            f"a new broker on the same directory recovered {', '.join(ids)} in order",
        )
        consumer = restarted.subscribe("critical")
        replayed = restarted.replay_messages("critical", 100)
        got = _ids(consumer, replayed)
        run.check(got == ids, f"replayed {replayed} to a new subscriber")
        restarted_health = restarted.health_check()
    return DemoResult(
        checks=run.checks,
        failures=tuple(run.failures),
        features=tuple(run.features),
        metrics=metrics,
        health=health,
        restarted_health=restarted_health,
        dead_letters=dead_letters,
        persistence_path=str(directory),
        recovered=len(recovered),
    )


class _PlainReporter:
    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.number = 0

    def step(self, feature: str, title: str) -> None:
        self.number += 1
        self.out(f"{self.number}. {feature}: {title}")

    def check(self, ok: bool, text: str) -> None:
        self.out(f"  [{'ok' if ok else 'FAILED'}] {text}")

    def note(self, text: str) -> None:
        self.out(f"  {text}")


def run_demo(out: Callable[[str], None] = print) -> int:
    """Run the scenario writing plain lines to ``out``; return 0 when all went as expected."""
    result = run_scenario(_PlainReporter(out))
    m = result.metrics
    out(
        f"metrics: published {m.total_published}, delivered {m.total_delivered}, "
        f"dropped {m.total_dropped}, expired {m.total_expired}, acked {m.total_acked}, "
        f"nacked {m.total_nacked}, redelivered {m.total_redelivered}, "
        f"dead-lettered {m.total_dead_lettered}, errors {m.total_errors}"
    )
    out(f"health: {result.health.status}; after the restart: {result.restarted_health.status}")
    if result.ok:
        out(f"demo finished: all {result.checks} checks as expected")
        return 0
    out(f"{len(result.failures)} check(s) FAILED")
    return 1
