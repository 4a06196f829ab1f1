"""Cluster mode on Redis Streams: mqkit against a hand-written redis-py loop, one Redis.

Run: ``python benchmarks/bench_cluster.py`` (``--quick`` for a short run). Starts its own
``redis-server`` (Debian package ``redis-server``) on 127.0.0.1 with no persistence, and
stops it at the end. Three tables, each the median of interleaved rounds:

- **group**: one publisher (this process) and one consumer process of a consumer group on one
  topic, 64-byte payloads; each round runs both sides (alternating which goes first), and the
  ratio is the median of the rounds' ratios. Each side's CPU time per message is reported too
  (the consumer's: every thread of its process, from subscribed to the last ack).
  mqkit: ``publish_to_cluster`` of ``AckMessage``\\s, one call per
  message; the consumer ``subscribe_from_cluster(topic, SubOptions(group=...))`` with ack
  support on, and ``sub.ack`` of each message. The hand-written loop does the same work with
  redis-py: one ``XADD`` per message; ``XREADGROUP COUNT 256 BLOCK`` and one ``XACK`` per
  batch read. msgs/s from the first publish to the consumer's last ack; the ratio mqkit / loop.
- **publish**: publisher alone: ``publish_to_cluster`` one by one against
  ``publish_batch_to_cluster`` in batches of 100 (both mqkit); the ratio batch / single.
- **latency**: the same two processes, the publisher paced at 500 msgs/s: p50 and p99 of
  (consumer's receive time - publish time) across the processes, mqkit and the loop.

Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

import mqkit
from mqkit.plugins.cluster import ClusterSettings

PAYLOAD = "x" * 64
TOPIC = "bench"
GROUP = "g"
HERE = Path(__file__).resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(url: str, node: str) -> mqkit.Config:
    return mqkit.Config(
        enable_cluster=True,
        cluster_node_id=node,
        enable_ack_support=True,
        default_ack_timeout=30,
        settings={"cluster": ClusterSettings(url=url, stream_maxlen=0)},
    )


# -- the consumer process ---------------------------------------------------------------------


def consume_mqkit(url: str, n: int, run: str) -> tuple[float, list[float]]:
    with mqkit.Broker(config(url, f"consumer-{run}")) as broker:
        sub = broker.subscribe_from_cluster(TOPIC, mqkit.SubOptions(group=GROUP, buffer_size=1000))
        print("ready", time.process_time(), flush=True)
        delays: list[float] = []
        for _ in range(n):
            message = sub.get(timeout=120)
            delays.append(time.time() - float(message.meta["t"]))
            sub.ack(message.ack_id)  # type: ignore[attr-defined]
        return time.time(), delays  # before the broker closes


def consume_loop(url: str, n: int, run: str) -> tuple[float, list[float]]:
    client = redis.Redis.from_url(url)
    key = f"loop:{TOPIC}"
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_create(key, GROUP, id="$", mkstream=True)
    print("ready", time.process_time(), flush=True)
    delays: list[float] = []
    while len(delays) < n:
        found = client.xreadgroup(GROUP, f"consumer-{run}", {key: ">"}, count=256, block=1000)
        ids = []
        for _key, entries in found or ():
            for entry_id, fields in entries:
                delays.append(time.time() - float(fields[b"t"]))
                ids.append(entry_id)
        if ids:
            client.xack(key, GROUP, *ids)
    end = time.time()
    client.close()
    return end, delays


def consumer_main(kind: str, url: str, n: int, run: str) -> None:
    end, delays = (consume_mqkit if kind == "mqkit" else consume_loop)(url, n, run)
    cpu = time.process_time()  # every thread's CPU time in the consumer process
    print("done", repr(end), repr(cpu), ",".join(f"{d:.6f}" for d in delays), flush=True)


# -- the publisher (this process) -------------------------------------------------------------


def publish_mqkit(url: str, run: str) -> Callable[[int, float], float]:
    broker = mqkit.Broker(config(url, f"publisher-{run}"))

    def publish(n: int, pace: float) -> float:
        start = time.time()
        for i in range(n):
            if pace:
                wait = start + i * pace - time.time()
                if wait > 0:
                    time.sleep(wait)
            message = mqkit.AckMessage(str(i), data=PAYLOAD, meta={"t": repr(time.time())})
            broker.publish_to_cluster(TOPIC, message)
        broker.close()
        return start

    return publish


def publish_loop(url: str, run: str) -> Callable[[int, float], float]:
    client = redis.Redis.from_url(url)
    key = f"loop:{TOPIC}"

    def publish(n: int, pace: float) -> float:
        start = time.time()
        for i in range(n):
            if pace:
                wait = start + i * pace - time.time()
                if wait > 0:
                    time.sleep(wait)
            client.xadd(key, {"d": PAYLOAD, "t": repr(time.time())})
        client.close()
        return start

    return publish


def one_run(
    kind: str, url: str, n: int, pace: float, run: str
) -> tuple[float, list[float], float, float]:
    """One publisher -> consumer run: msgs/s, delays in seconds, CPU µs/msg of both sides."""
    consumer = subprocess.Popen(
        [sys.executable, str(HERE), "--consumer", kind, url, str(n), run],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert consumer.stdout is not None
    try:
        ready = consumer.stdout.readline().split()
        assert ready and ready[0] == "ready", "the consumer did not start"
        publish = (publish_mqkit if kind == "mqkit" else publish_loop)(url, run)
        cpu = time.process_time()
        start = publish(n, pace)
        publisher_cpu = time.process_time() - cpu
        line = consumer.stdout.readline().split()
        assert line and line[0] == "done", f"the consumer failed: {line}"
        end = float(line[1])
        consumer_cpu = float(line[2]) - float(ready[1])
        delays = [float(d) for d in line[3].split(",")] if len(line) > 3 else []
        per = 1e6 / n
        return n / (end - start), delays, publisher_cpu * per, consumer_cpu * per
    finally:
        consumer.wait(60)


def publish_only(url: str, n: int, batch: int, run: str) -> float:
    with mqkit.Broker(config(url, f"solo-{run}")) as broker:
        messages = [mqkit.Message(str(i), data=PAYLOAD) for i in range(n)]
        start = time.perf_counter()
        if batch <= 1:
            for message in messages:
                broker.publish_to_cluster(TOPIC, message)
        else:
            for i in range(0, n, batch):
                broker.publish_batch_to_cluster(TOPIC, messages[i : i + batch])
        return n / (time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--consumer", nargs=4, metavar=("KIND", "URL", "N", "RUN"))
    args = parser.parse_args()
    if args.consumer:
        kind, url, n, run = args.consumer
        consumer_main(kind, url, int(n), run)
        return 0
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (Debian package redis-server): nothing measured")
        return 0
    n, rounds, lat_n = (3000, 3, 500) if args.quick else (20000, 5, 2000)
    with tempfile.TemporaryDirectory() as directory:
        port = free_port()
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            for line in server.stdout:
                if "Ready to accept connections" in line:
                    break
            url = f"redis://127.0.0.1:{port}/0"
            return measure(url, n, rounds, lat_n)
        finally:
            server.terminate()
            server.wait(30)


def measure(url: str, n: int, rounds: int, lat_n: int) -> int:
    client = redis.Redis.from_url(url)
    rates: dict[str, list[float]] = {"mqkit": [], "loop": []}
    cpu: dict[str, list[tuple[float, float]]] = {"mqkit": [], "loop": []}
    ratios: list[float] = []
    for r in range(rounds):
        kinds = ("mqkit", "loop") if r % 2 == 0 else ("loop", "mqkit")  # alternate who goes first
        for kind in kinds:
            client.flushdb()
            rate, _, publisher_cpu, consumer_cpu = one_run(kind, url, n, 0.0, f"{kind}{r}")
            rates[kind].append(rate)
            cpu[kind].append((publisher_cpu, consumer_cpu))
        ratios.append(rates["mqkit"][-1] / rates["loop"][-1])
    single: list[float] = []
    batched: list[float] = []
    for r in range(rounds):
        client.flushdb()
        single.append(publish_only(url, n // 4, 1, f"s{r}"))
        client.flushdb()
        batched.append(publish_only(url, n, 100, f"b{r}"))
    delays: dict[str, list[float]] = {"mqkit": [], "loop": []}
    for kind in ("mqkit", "loop"):
        client.flushdb()
        delays[kind] = one_run(kind, url, lat_n, 1 / 500, f"lat-{kind}")[1]
    client.close()
    mq, loop = statistics.median(rates["mqkit"]), statistics.median(rates["loop"])
    ratio = statistics.median(ratios)  # paired: both sides of a round ran seconds apart
    publisher = {k: statistics.median(c[0] for c in cpu[k]) for k in cpu}
    consumer = {k: statistics.median(c[1] for c in cpu[k]) for k in cpu}
    one, many = statistics.median(single), statistics.median(batched)
    print(
        f"cluster benchmark: {n:,} messages per run, median of {rounds} rounds, "
        f"{os.cpu_count()} cores"
    )
    print()
    print(
        "| group: publish -> consume (2 processes) | msgs/s "
        "| publisher CPU µs/msg | consumer CPU µs/msg |"
    )
    print("|---|---:|---:|---:|")
    print(
        f"| mqkit (publish_to_cluster; group subscription, ack each) | {mq:,.0f} "
        f"| {publisher['mqkit']:.0f} | {consumer['mqkit']:.0f} |"
    )
    print(
        f"| redis-py loop (XADD; XREADGROUP 256 + XACK) | {loop:,.0f} "
        f"| {publisher['loop']:.0f} | {consumer['loop']:.0f} |"
    )
    print(f"| ratio mqkit / loop (median of the rounds' ratios) | {ratio:.2f}x | | |")
    print()
    print("| publish (mqkit, publisher alone) | msgs/s |")
    print("|---|---:|")
    print(f"| publish_to_cluster, one by one | {one:,.0f} |")
    print(f"| publish_batch_to_cluster, batches of 100 | {many:,.0f} |")
    print(f"| ratio batch / single | {many / one:.1f}x |")
    print()
    print(f"| latency across processes, {lat_n:,} messages at 500/s | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for kind in ("mqkit", "loop"):
        d = delays[kind]
        print(f"| {kind} | {percentile(d, 0.5) * 1000:.2f} | {percentile(d, 0.99) * 1000:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
