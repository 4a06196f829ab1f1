"""``python -m mqkit demo``: a short scripted run through the broker that prints what happened."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from mqkit.core.broker import Broker
from mqkit.core.config import Config
from mqkit.core.errors import InvalidTopicError
from mqkit.core.message import Message
from mqkit.core.subscription import Backpressure, SubOptions

__all__ = ["run_demo"]


def run_demo(out: Callable[[str], None] = print) -> int:
    """Run the demo scenario, writing lines to ``out``; return an exit code (0: all as expected)."""
    failures = 0

    def check(ok: bool, what: str) -> None:
        nonlocal failures
        out(f"  [{'ok' if ok else 'FAILED'}] {what}")
        failures += not ok

    with Broker(Config()) as broker:
        out(f"broker up with plugins: {', '.join(broker.plugin_names()) or '(none)'}")

        out("1. publish/subscribe on a topic and on a glob pattern")
        orders = broker.subscribe("orders.created")
        every_order = broker.subscribe_pattern("orders.*")
        broker.publish("orders.created", Message("o-1", {"sku": "A-42", "qty": 3}))
        got, seen = orders.get(timeout=1), every_order.get(timeout=1)
        check(got.id == "o-1" and got.topic == "orders.created", f"exact subscriber got {got.id}")
        check(seen.id == "o-1", f"pattern 'orders.*' got {seen.id} from {seen.topic}")

        out("2. a thread consumer and an asyncio consumer on one topic")
        thread_sub = broker.subscribe("jobs", SubOptions(buffer_size=100))
        async_sub = broker.subscribe("jobs", SubOptions(buffer_size=100))
        received: list[str] = []
        worker = threading.Thread(target=lambda: received.extend(m.id for m in thread_sub))
        worker.start()

        async def consume() -> list[str]:
            return [(await async_sub.aget(timeout=5)).id for _ in range(5)]

        for i in range(5):
            broker.publish("jobs", Message(f"job-{i}"))
        async_ids = asyncio.run(consume())
        thread_sub.cancel()
        worker.join(timeout=5)
        check(received == [f"job-{i}" for i in range(5)], f"thread consumer got {received}")
        check(async_ids == received, f"asyncio consumer got {async_ids}")

        out("3. backpressure: a 2-message buffer under DROP_OLDEST")
        slow = broker.subscribe("ticks", SubOptions(buffer_size=2, policy=Backpressure.DROP_OLDEST))
        for i in range(5):
            broker.publish("ticks", Message(f"t-{i}"))
        kept = [slow.get_nowait().id for _ in range(2)]
        stats = slow.stats()
        check(kept == ["t-3", "t-4"], f"kept the newest two: {kept}")
        check(stats.dropped == 3, f"counted {stats.dropped} drops")

        out("4. bad input is refused with a clear error")
        try:
            broker.publish("   ", Message("x"))
        except InvalidTopicError as exc:
            check(True, f"refused: {exc}")
        else:
            check(False, "an empty topic was accepted")

        health = broker.health_check()
        out(
            f"health: {health.status}, {health.total_topics} topic(s), "
            f"{health.total_subscribers} subscriber(s)"
        )
    out(f"broker closed: {broker.health_check().status}")
    out("demo finished: all steps as expected" if not failures else f"{failures} step(s) FAILED")
    return 1 if failures else 0
