"""Core publish -> get throughput against stdlib and pyee baselines, in one process run.

Run: ``python benchmarks/bench_core.py`` (``--quick`` for a short run). Prints medians of
interleaved rounds and the ratios mqkit / baseline. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import platform
import queue
import statistics
import sys
import time
from collections.abc import Callable

import mqkit

Case = Callable[[int], float]  # run n messages, return elapsed seconds


def mqkit_case(subscribers: int) -> Case:
    def run(n: int) -> float:
        broker = mqkit.Broker(
            mqkit.Config(
                enable_metrics=False, enable_priority_queue=False, disable_plugins=("ttl",)
            )
        )
        subs = [
            broker.subscribe("bench", mqkit.SubOptions(buffer_size=n)) for _ in range(subscribers)
        ]
        msgs = [mqkit.Message(str(i), i) for i in range(n)]
        publish = broker.publish
        gets = [s.get for s in subs]
        t0 = time.perf_counter()
        for m in msgs:
            publish("bench", m)
            for get in gets:
                get()
        elapsed = time.perf_counter() - t0
        broker.close()
        return elapsed

    return run


def simplequeue_case(subscribers: int) -> Case:
    def run(n: int) -> float:
        queues = [queue.SimpleQueue() for _ in range(subscribers)]
        puts = [q.put for q in queues]
        gets = [q.get for q in queues]
        msgs = [mqkit.Message(str(i), i) for i in range(n)]
        t0 = time.perf_counter()
        for m in msgs:
            for put in puts:
                put(m)
            for get in gets:
                get()
        return time.perf_counter() - t0

    return run


def pyee_case(subscribers: int) -> Case | None:
    try:
        from pyee.base import EventEmitter
    except ImportError:
        return None

    def run(n: int) -> float:
        ee = EventEmitter()
        sink: list[object] = []
        for _ in range(subscribers):
            ee.on("bench", sink.append)
        msgs = [mqkit.Message(str(i), i) for i in range(n)]
        emit = ee.emit
        t0 = time.perf_counter()
        for m in msgs:
            emit("bench", m)
        elapsed = time.perf_counter() - t0
        return elapsed

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    n = 20_000 if args.quick else 100_000
    rounds = 3 if args.quick else 7
    print(
        f"# mqkit core benchmark: python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.machine()}, n={n}, rounds={rounds}"
    )
    for subs in (1, 10):
        cases: dict[str, Case] = {
            "mqkit publish+get": mqkit_case(subs),
            "queue.SimpleQueue put+get": simplequeue_case(subs),
        }
        pyee = pyee_case(subs)
        if pyee is not None:
            cases["pyee emit"] = pyee
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):  # interleaved: each round runs every case once
            for name, case in cases.items():
                times[name].append(case(n))
        rates = {name: n / statistics.median(t) for name, t in times.items()}
        print(f"\n## 1 -> {subs} (msgs/s published; deliveries/s = x{subs})")
        print("| case | msgs/s | deliveries/s | mqkit / case |")
        print("|---|---:|---:|---:|")
        for name, rate in rates.items():
            ratio = rates["mqkit publish+get"] / rate
            print(f"| {name} | {rate:,.0f} | {rate * subs:,.0f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
