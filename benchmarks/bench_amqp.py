"""AMQP 0-9-1 throughput and latency, mqkit's gateway against RabbitMQ on this machine, in one run.

Run: ``python benchmarks/bench_amqp.py`` (``--quick`` for a short run). Starts mqkit's AMQP
gateway (a ``Broker`` with its defaults and ``enable_amqp``, in a child Python) and a private
RabbitMQ node (Debian's ``rabbitmq-server``: its own directory, ports and epmd; see
``servers.py``) on 127.0.0.1, then drives each with the same aio-pika program, in this process:
one publisher connection and one consumer connection on one queue (the default exchange,
64-byte payloads, transient messages), the consumer acknowledging each message with a prefetch
of 256. With confirms on, the publisher's channel is in confirm mode and up to 64 publishes
await their ``basic.ack`` at once; with confirms off, publishes are not confirmed. Publishing
runs at most 1,000 messages ahead of what the consumer received, so neither server drops or
pages messages and the figure is end-to-end throughput (msgs/s from the first publish to the
last delivery).

Latency: every payload carries the time it was published; the consumer takes the difference
on receipt (same clock, same process). "under load" is its p50/p99 over the throughput runs
(messages wait behind the 1,000-message window); "one at a time" publishes the next message
only once the previous one arrived (500 messages, confirms off), the round trip a lone message
takes. Prints the median of interleaved rounds and the ratio mqkit / RabbitMQ. A server that
is not installed (``rabbitmq-server``; ``mqkit.protocols.amqp``) is reported and left out.
Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import struct
import sys
import time
import uuid
from typing import Any

import aio_pika
import servers
from aio_pika.abc import AbstractIncomingMessage

PAYLOAD = 64
WINDOW = 1_000
"""Most messages published and not yet received."""
CONFIRM_WINDOW = 64
"""Most publishes awaiting their confirm at once (confirms on)."""
PREFETCH = 256
PING_MESSAGES = 500


def _body() -> bytes:
    stamp = struct.pack("!q", time.perf_counter_ns())
    return stamp + b"x" * (PAYLOAD - len(stamp))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _setup(url: str, confirms: bool) -> tuple[Any, Any, Any, Any, str]:
    publisher = await aio_pika.connect(url)
    consumer = await aio_pika.connect(url)
    consume_channel = await consumer.channel()
    await consume_channel.set_qos(prefetch_count=PREFETCH)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    queue = await consume_channel.declare_queue(name, auto_delete=True)
    publish_channel = await publisher.channel(publisher_confirms=confirms)
    return publisher, consumer, queue, publish_channel, name


async def throughput(url: str, n: int, confirms: bool) -> tuple[float, list[float]]:
    """Publish ``n`` messages to a queue and consume them; msgs/s and latencies (ms)."""
    publisher, consumer, queue, channel, name = await _setup(url, confirms)
    received = 0
    latencies: list[float] = []
    progress = asyncio.Event()
    done = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal received
        sent = struct.unpack_from("!q", message.body)[0]
        latencies.append((time.perf_counter_ns() - sent) / 1e6)
        await message.ack()
        received += 1
        progress.set()
        if received >= n:
            done.set()

    await queue.consume(on_message)
    exchange = channel.default_exchange
    pending: set[asyncio.Future[Any]] = set()
    t0 = time.perf_counter()
    for i in range(n):
        while i - received >= WINDOW:
            progress.clear()
            await progress.wait()
        message = aio_pika.Message(_body())
        if confirms:
            task = asyncio.ensure_future(exchange.publish(message, routing_key=name))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if len(pending) >= CONFIRM_WINDOW:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        else:
            await exchange.publish(message, routing_key=name)
    if pending:
        await asyncio.gather(*pending)
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - t0
    await publisher.close()
    await consumer.close()
    return n / elapsed, latencies


async def one_at_a_time(url: str, n: int) -> list[float]:
    """Latencies (ms) of ``n`` messages, each published once the previous one arrived."""
    publisher, consumer, queue, channel, name = await _setup(url, False)
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        sent = struct.unpack_from("!q", message.body)[0]
        arrived.put_nowait((time.perf_counter_ns() - sent) / 1e6)
        await message.ack()

    await queue.consume(on_message)
    latencies = []
    for _ in range(n):
        await channel.default_exchange.publish(aio_pika.Message(_body()), routing_key=name)
        latencies.append(await asyncio.wait_for(arrived.get(), 30))
    await publisher.close()
    await consumer.close()
    return latencies


def main() -> int:
    """Run the benchmark; print the table and the ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    n = 2_000 if args.quick else 20_000
    rounds = 1 if args.quick else 3
    ping = 100 if args.quick else PING_MESSAGES
    started: dict[str, Any] = {}
    try:
        if servers.mqkit_amqp_available():
            started["mqkit"] = servers.MqkitAMQPServer()
        else:
            print("mqkit.protocols.amqp is not here: measuring RabbitMQ alone", file=sys.stderr)
        if servers.rabbitmq_script() is not None:
            started["RabbitMQ"] = servers.RabbitMQNode()
        else:
            print("rabbitmq-server is not installed: measuring mqkit alone", file=sys.stderr)
        for server in started.values():
            server.start()
        rates: dict[tuple[str, bool], list[float]] = {}
        loaded: dict[tuple[str, bool], list[float]] = {}
        idle: dict[str, list[float]] = {}
        for server in started.values():  # warm up (imports, first connections)
            asyncio.run(throughput(server.url, min(n, 500), True))
        for _ in range(rounds):
            for confirms in (False, True):
                for name, server in started.items():
                    rate, latencies = asyncio.run(throughput(server.url, n, confirms))
                    rates.setdefault((name, confirms), []).append(rate)
                    loaded.setdefault((name, confirms), []).extend(latencies)
        for name, server in started.items():
            idle[name] = asyncio.run(one_at_a_time(server.url, ping))
    finally:
        for server in started.values():
            server.stop()
    names = list(started)
    print(
        f"AMQP 0-9-1, aio-pika {aio_pika.__version__}: 1 publisher -> 1 consumer "
        f"(manual ack, prefetch {PREFETCH}), {n} x {PAYLOAD} B, median of {rounds}"
    )
    print(f"python {platform.python_version()}, {os.cpu_count()} cores")
    header = f"{'confirms':>8}" + "".join(f" {name + ' msgs/s':>15}" for name in names)
    ratio = "mqkit" in started and "RabbitMQ" in started
    print(header + (f" {'mqkit/RabbitMQ':>15}" if ratio else ""))
    for confirms in (False, True):
        row = f"{'on' if confirms else 'off':>8}"
        medians = {name: statistics.median(rates[(name, confirms)]) for name in names}
        row += "".join(f" {medians[name]:>15,.0f}" for name in names)
        if ratio:
            row += f" {medians['mqkit'] / medians['RabbitMQ']:>15.2f}"
        print(row)
    print()
    print("latency, ms (p50 / p99)")
    print(f"{'':>22}" + "".join(f" {name:>17}" for name in names))
    for confirms in (False, True):
        cells = [loaded[(name, confirms)] for name in names]
        label = f"under load, confirms {'on' if confirms else 'off'}"
        print(f"{label:>22}" + "".join(_cell(c) for c in cells))
    print(f"{'one at a time':>22}" + "".join(_cell(idle[name]) for name in names))
    return 0


def _cell(values: list[float]) -> str:
    return f" {_percentile(values, 0.5):>8.2f} / {_percentile(values, 0.99):>6.2f}"


if __name__ == "__main__":
    sys.exit(main())
