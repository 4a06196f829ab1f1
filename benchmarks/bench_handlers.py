"""Typed handlers against the ``get()`` loops they replace (issue 16's bar: >= 0.5x).

Run from a clone of the repository::

    python benchmarks/bench_handlers.py [--quick] [--messages N] [--rounds R]

Each case consumes the same N messages, published beforehand into one subscription (its buffer
holds them all: nothing is dropped), and is timed from the start of consumption until the last
message was processed. Pairs:

- sync: a thread's ``sub.get()`` loop calling the function vs ``@broker.subscriber`` on it
  (``concurrency=1``), the payload annotated ``int``;
- sync + ack: ``sub.get()`` + ``sub.ack()`` vs the same handler on ack-required messages
  (return = ack);
- async: an ``await sub.aget()`` loop vs an async handler (``concurrency=1``).

Prints msgs/s (median of R interleaved rounds) and each handler's ratio to its loop. Nothing
here asserts a speed. The same cases are the ``handlers`` table of the suite's ``core`` group
(``python benchmarks/run.py --group core``), with their targets.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable

import mqkit

ACK_CONFIG = mqkit.Config(enable_ack_support=True, default_ack_timeout=600.0)


def fill(broker: mqkit.Broker, sub_topic: str, n: int, ack: bool) -> None:
    if ack:
        for i in range(n):
            broker.publish_with_ack(sub_topic, mqkit.AckMessage(str(i), i))
    else:
        for i in range(n):
            broker.publish(sub_topic, mqkit.Message(str(i), i))


def options(n: int) -> mqkit.SubOptions:
    return mqkit.SubOptions(buffer_size=n)


def get_loop(n: int, ack: bool) -> float:
    """What a handler replaces: a thread taking each message and calling the function."""
    broker = mqkit.Broker(ACK_CONFIG if ack else None)
    sub = broker.subscribe("t", options(n))
    fill(broker, "t", n, ack)
    done = threading.Event()
    count = 0

    def handler(value: int) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    def consume() -> None:
        if ack:
            while not done.is_set():
                message = sub.get()
                handler(message.data)
                sub.ack(message.ack_id)  # type: ignore[attr-defined]
        else:
            while not done.is_set():
                handler(sub.get().data)

    start = time.perf_counter()
    thread = threading.Thread(target=consume)
    thread.start()
    done.wait()
    elapsed = time.perf_counter() - start
    thread.join()
    broker.close()
    return elapsed


def aget_loop(n: int, ack: bool) -> float:
    """What an async handler replaces: a coroutine awaiting each message."""
    broker = mqkit.Broker()
    sub = broker.subscribe("t", options(n))
    fill(broker, "t", n, False)
    count = 0

    async def handler(value: int) -> None:
        nonlocal count
        count += 1

    async def consume() -> float:
        start = time.perf_counter()
        while count < n:
            await handler((await sub.aget()).data)
        return time.perf_counter() - start

    elapsed = asyncio.run(consume())
    broker.close()
    return elapsed


def sync_handler(n: int, ack: bool) -> float:
    broker = mqkit.Broker(ACK_CONFIG if ack else None)
    done = threading.Event()
    count = 0

    @broker.subscriber("t", options=options(n))
    def handler(value: int) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    fill(broker, "t", n, ack)
    return timed_serve(broker, done.wait)


def async_handler(n: int, ack: bool) -> float:
    broker = mqkit.Broker()
    done = threading.Event()
    count = 0

    @broker.subscriber("t", options=options(n))
    async def handler(value: int) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    fill(broker, "t", n, False)
    return timed_serve(broker, done.wait)


def timed_serve(broker: mqkit.Broker, wait: Callable[[], object]) -> float:
    """Serve on a loop thread; the time from the start until ``wait()`` returns."""
    started = time.perf_counter()
    thread = threading.Thread(target=lambda: asyncio.run(broker.serve()))
    thread.start()
    wait()
    elapsed = time.perf_counter() - started
    broker.close()  # serve() sees it and returns
    thread.join()
    return elapsed


CASES: list[tuple[str, Callable[[int, bool], float], Callable[[int, bool], float], bool]] = [
    ("sync, concurrency=1", get_loop, sync_handler, False),
    ("sync + ack, concurrency=1", get_loop, sync_handler, True),
    ("async, concurrency=1", aget_loop, async_handler, False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--messages", type=int, default=0, help="messages per run")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds")
    args = parser.parse_args()
    n = args.messages or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (3 if args.quick else 5)
    print(f"# handlers vs get() loops: {n:,} messages, median of {rounds} rounds\n")
    print("| case | get() loop msgs/s | handler msgs/s | handler / loop |")
    print("|---|---:|---:|---:|")
    for name, loop, handler, ack in CASES:
        loops: list[float] = []
        handlers: list[float] = []
        for _ in range(rounds):  # interleaved: drift hits both alike
            loops.append(loop(n, ack))
            handlers.append(handler(n, ack))
        loop_rate = n / statistics.median(loops)
        handler_rate = n / statistics.median(handlers)
        print(
            f"| {name} | {loop_rate:,.0f} | {handler_rate:,.0f} | {handler_rate / loop_rate:.2f}x |"
        )
    print("\nIssue 16's bar: a sync handler with concurrency=1 at >= 0.5x the get() loop.")


if __name__ == "__main__":
    main()
