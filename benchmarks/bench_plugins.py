"""Per-message cost of publish -> get with the core alone and with each feature plugin on.

Run: ``python benchmarks/bench_plugins.py [--quick]``. One process, interleaved rounds, medians;
prints microseconds per message and the ratio to the core alone. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import mqkit
from mqkit.testing import broker_config

FAR = datetime.now(UTC) + timedelta(days=1)


def case(
    plugins: tuple[str, ...], make: Callable[[int], mqkit.Message], **cfg: object
) -> Callable[[int], float]:
    def run(n: int) -> float:
        config = broker_config(*plugins, config=mqkit.Config(**cfg))  # type: ignore[arg-type]
        with mqkit.Broker(config) as broker:
            sub = broker.subscribe("bench", mqkit.SubOptions(buffer_size=n))
            msgs = [make(i) for i in range(n)]
            publish, get = broker.publish, sub.get
            ack = sub.ack if "ack" in plugins else None
            t0 = time.perf_counter()
            if ack is None:
                for m in msgs:
                    publish("bench", m)
                    get()
            else:
                for m in msgs:
                    publish("bench", m)
                    ack(get().ack_id)  # type: ignore[attr-defined]
            return time.perf_counter() - t0

    return run


def plain(i: int) -> mqkit.Message:
    return mqkit.Message(str(i), i)


def all_kinds(i: int) -> mqkit.Message:
    return mqkit.AckTTLMessage(str(i), i, expires_at=FAR)


CASES: dict[str, Callable[[int], float]] = {
    "core alone": case((), plain),
    "priority": case(("priority",), lambda i: mqkit.PriorityMessage(str(i), i, priority=i % 5)),
    "ttl": case(("ttl",), lambda i: mqkit.TTLMessage(str(i), i, expires_at=FAR)),
    "ack (publish, get, ack)": case(("ack",), lambda i: mqkit.AckMessage(str(i), i)),
    "metrics": case(("metrics",), plain),
    "memory": case(("memory",), plain, max_memory_usage=1 << 30),
    "deadletter (idle)": case(("deadletter",), plain, dead_letter_topic="dlq"),
    "transactions (idle)": case(("transactions",), plain),
    "all in-memory plugins": case(
        ("priority", "ttl", "ack", "metrics", "memory"), all_kinds, max_memory_usage=1 << 30
    ),
    "Broker() defaults": lambda n: _defaults(n),
}


def _defaults(n: int) -> float:
    with mqkit.Broker() as broker:
        sub = broker.subscribe("bench", mqkit.SubOptions(buffer_size=n))
        msgs = [plain(i) for i in range(n)]
        t0 = time.perf_counter()
        for m in msgs:
            broker.publish("bench", m)
            sub.get()
        return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (5_000, 3) if args.quick else (30_000, 7)
    print(f"# mqkit plugin cost: python {platform.python_version()}, n={n}, rounds={rounds}")
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(rounds):
        for name, run in CASES.items():
            times[name].append(run(n))
    base = statistics.median(times["core alone"]) / n
    print("| case | us/message | x core alone |")
    print("|---|---:|---:|")
    for name, samples in times.items():
        per = statistics.median(samples) / n
        print(f"| {name} | {per * 1e6:.2f} | {per / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
