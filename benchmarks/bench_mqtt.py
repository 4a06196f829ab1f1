"""MQTT gateway throughput, mqkit against mosquitto (Debian) on this machine, in one run.

Run: ``python benchmarks/bench_mqtt.py`` (``--quick`` for a short run). Starts mqkit's gateway
(``python -m mqkit.protocols.mqtt.serve``) and ``mosquitto`` as separate processes on
127.0.0.1, then drives each with the same client program (mqkit's small asyncio client, in this
process): one publisher and one subscriber on one topic, 64-byte payloads, at QoS 0 and at
QoS 1 (the publisher keeps up to 64 PUBACKs outstanding; the subscriber acknowledges each
message). Publishing runs at most 500 messages ahead of what the subscriber received, so
neither broker drops QoS 0 messages and the figure is end-to-end throughput. Prints the median
msgs/s of interleaved rounds and the ratio mqkit / mosquitto. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from mqkit.protocols.mqtt.client import AsyncClient
from mqkit.protocols.mqtt.codec import SubscriptionRequest

PAYLOAD = b"x" * 64
WINDOW = 500


async def run_once(port: int, n: int, qos: int) -> float:
    """Publish ``n`` messages through the broker on ``port``; return msgs/s end to end."""
    sub = await AsyncClient.connect("127.0.0.1", port, f"bench-sub-{qos}", version=4)
    pub = await AsyncClient.connect("127.0.0.1", port, f"bench-pub-{qos}", version=4)
    await sub.subscribe(SubscriptionRequest(topic_filter="bench/t", qos=qos))
    received = 0
    progress = asyncio.Event()

    async def consume() -> None:
        nonlocal received
        while received < n:
            await sub.messages.get()
            received += 1
            progress.set()

    consumer = asyncio.create_task(consume())
    t0 = time.perf_counter()
    for i in range(n):
        while i - received >= WINDOW:
            progress.clear()
            await progress.wait()
        await pub.publish("bench/t", PAYLOAD, qos, wait=False)
    await asyncio.wait_for(consumer, 120)
    elapsed = time.perf_counter() - t0
    await pub.disconnect()
    await sub.disconnect()
    return n / elapsed


def start(cmd: list[str], ready: Callable[[str], int | None]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        port = ready(line)
        if port is not None:
            return proc, port
    raise RuntimeError(f"{cmd[0]} did not start")


def wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    """Run the benchmark; print a table and the ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    n = 2_000 if args.quick else 20_000
    rounds = 1 if args.quick else 3
    servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
    tmp = tempfile.mkdtemp(prefix="mqkit-bench-")
    try:
        servers["mqkit"] = start(
            [sys.executable, "-m", "mqkit.protocols.mqtt.serve", "--port", "0",
             "--max-inflight", "64"],
            lambda line: int(line.split()[2]) if line.startswith("listening") else None,
        )  # fmt: skip
        if shutil.which("mosquitto"):
            port = free_port()
            conf = os.path.join(tmp, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(
                    f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "log_dest stderr\nmax_inflight_messages 64\n"
                    "max_queued_messages 1000\n"
                )
            proc = subprocess.Popen(
                ["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            servers["mosquitto"] = (proc, port)
            wait_for_port(port)
        else:
            print("mosquitto is not installed: measuring mqkit alone", file=sys.stderr)
        results: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):
            for qos in (0, 1):
                for name, (_, port) in servers.items():
                    rate = asyncio.run(run_once(port, n, qos))
                    results.setdefault((name, qos), []).append(rate)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"MQTT throughput, 1 publisher -> 1 subscriber, {n} x 64 B, median of {rounds}")
    print(f"python {platform.python_version()}, {os.cpu_count()} cores")
    print(f"{'QoS':>4} {'mqkit msgs/s':>14} {'mosquitto msgs/s':>18} {'mqkit/mosquitto':>16}")
    for qos in (0, 1):
        ours = statistics.median(results[("mqkit", qos)])
        theirs = results.get(("mosquitto", qos))
        if theirs:
            ref = statistics.median(theirs)
            print(f"{qos:>4} {ours:>14,.0f} {ref:>18,.0f} {ours / ref:>16.2f}")
        else:
            print(f"{qos:>4} {ours:>14,.0f} {'-':>18} {'-':>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
