"""MQTT gateway throughput, mqkit against mosquitto (Debian) on this machine, in one run.

Run: ``python benchmarks/bench_mqtt.py`` (``--quick`` for a short run). Starts mqkit's gateway
(``python -m mqkit.protocols.mqtt.serve``) and ``mosquitto`` as separate processes on
127.0.0.1, then drives each with the same client program (mqkit's small asyncio client, in this
process): one publisher and one subscriber on one topic, 64-byte payloads, at QoS 0 and at
QoS 1 (the publisher keeps up to 64 PUBACKs outstanding; the subscriber acknowledges each
message). Publishing runs at most 500 messages ahead of what the subscriber received, so
neither broker drops QoS 0 messages and the figure is end-to-end throughput. Prints the median
msgs/s of interleaved rounds and the ratio mqkit / mosquitto.

A second table measures what idle MQTT clients cost an in-process publisher: a ``Broker()``
with its defaults and the gateway on 127.0.0.1 port 0, N raw MQTT 3.1.1 clients that CONNECT,
SUBSCRIBE ``#`` at QoS 1 and then never read their socket (nor acknowledge anything), and
``broker.publish`` in this process once every client's queue is full (after a warm-up of
three times ``[mqtt] max_queued_messages`` messages, paced so that the gateway keeps up). It
prints msgs/s for N = 0, 1 and 20, and for a reference run without MQTT clients but with one
in-process subscription whose buffer (``[mqtt] max_queued_messages``) is full - what one
subscriber costs (median of interleaved rounds; each timed run stops after 20,000 messages or
5 seconds) - and the ratios N=20 / N=0 and N=20 / reference. ``--idle-only`` runs this table alone
(``--no-priority``: with ``enable_priority_queue=False``, the core's FIFO buffers). Nothing
here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import mqkit
from mqkit.protocols.mqtt import MQTTSettings, codec
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


IDLE_COUNTS = (0, -1, 1, 20)
"""MQTT clients per run; -1 is the reference run (one full in-process subscription)."""
IDLE_MESSAGES = 20_000
IDLE_SECONDS = 5.0


def idle_client(port: int, index: int) -> socket.socket:
    """A raw MQTT 3.1.1 client subscribed to ``#`` at QoS 1 that will never read again."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    reader = codec.PacketReader()

    def packet() -> codec.Packet:
        while True:
            frame = reader.next_frame()
            if frame is not None:
                return codec.decode(*frame, 4)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the gateway closed the connection")
            reader.feed(data)

    sock.sendall(codec.Connect(client_id=f"idle-{index}", protocol_level=4).encode())
    assert isinstance(packet(), codec.ConnAck)
    request = SubscriptionRequest(topic_filter="#", qos=1)
    sock.sendall(codec.Subscribe(packet_id=1, subscriptions=(request,)).encode(4))
    assert isinstance(packet(), codec.SubAck)
    return sock


def idle_round(clients: int, messages: int, priority: bool) -> tuple[float, float]:
    """In-process msgs/s with ``clients`` idle MQTT subscribers to ``#`` whose queues are full,
    and the publishing thread's CPU time per message (µs).

    ``clients`` -1 is the reference: no MQTT client, one in-process subscription to the topic
    with a full buffer of ``[mqtt] max_queued_messages`` (what one subscriber costs).
    """
    config = mqkit.Config(
        enable_mqtt=True,
        mqtt_port=0,
        enable_priority_queue=priority,
        settings={"mqtt": MQTTSettings(host="127.0.0.1")},
    )
    broker = mqkit.Broker(config)
    socks: list[socket.socket] = []
    try:
        _, port = broker.start_mqtt_server()
        socks = [idle_client(port, i) for i in range(clients)]
        if clients < 0:
            cap = broker.settings(MQTTSettings).max_queued_messages
            broker.subscribe("bench/idle", mqkit.SubOptions(buffer_size=cap))
        payload = b"x" * 64
        warm = 3 * broker.settings(MQTTSettings).max_queued_messages
        for i in range(warm):  # fills the window, then every client's queue
            broker.publish("bench/idle", mqkit.Message(f"w{i}", payload))
            if i % 100 == 99:
                time.sleep(0.005)  # at a pace the gateway's thread keeps up with
        time.sleep(0.5)  # let the gateway's thread settle before the clock starts
        batch = [mqkit.Message(f"m{i}", payload) for i in range(messages)]
        publish = broker.publish
        done = 0
        cpu = time.thread_time()
        t0 = time.perf_counter()
        deadline = t0 + IDLE_SECONDS
        for start in range(0, messages, 500):
            for message in batch[start : start + 500]:
                publish("bench/idle", message)
            done = start + 500
            if time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - t0
        cpu = time.thread_time() - cpu
        done = min(done, messages)
        return done / elapsed, cpu / done * 1e6
    finally:
        for sock in socks:
            sock.close()
        broker.close()


def idle_table(quick: bool, priority: bool = True) -> None:
    """Print in-process publish rates with 0, 1 and 20 idle MQTT subscribers to ``#``."""
    messages = 5_000 if quick else IDLE_MESSAGES
    rounds = 1 if quick else 3
    results: dict[int, list[float]] = {}
    cpus: dict[int, list[float]] = {}
    for _ in range(rounds):
        for clients in IDLE_COUNTS:
            rate, cpu = idle_round(clients, messages, priority)
            results.setdefault(clients, []).append(rate)
            cpus.setdefault(clients, []).append(cpu)
    base = statistics.median(results[0])
    what = "Broker() defaults" if priority else "Broker() defaults but enable_priority_queue=False"
    print(
        f"in-process publish with N idle MQTT QoS 1 subscribers to #, {what}, "
        f"{messages} x 64 B, median of {rounds}"
    )
    print(f"{'N':>4} {'msgs/s':>12} {'vs N=0':>8} {'publisher CPU us/msg':>21}")
    for clients in IDLE_COUNTS:
        rate = statistics.median(results[clients])
        label = "ref" if clients < 0 else str(clients)
        cpu = statistics.median(cpus[clients])
        print(f"{label:>4} {rate:>12,.0f} {rate / base:>8.2f} {cpu:>21.2f}")
    n20 = statistics.median(results[20])
    print(f"ratio N=20 / N=0: {n20 / base:.2f}")
    print(f"ratio N=20 / ref: {n20 / statistics.median(results[-1]):.2f}")
    print("(ref: no MQTT client, one in-process subscription with a full buffer of 1000)")


def main() -> int:
    """Run the benchmark; print the tables and the ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--idle-only", action="store_true", help="only the table of idle MQTT subscribers"
    )
    parser.add_argument(
        "--no-priority",
        action="store_true",
        help="that table with enable_priority_queue=False (the core's FIFO buffers)",
    )
    args = parser.parse_args()
    if args.idle_only:
        idle_table(args.quick, priority=not args.no_priority)
        return 0
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
                ["mosquitto", "-c", conf],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
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
    print()
    idle_table(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
