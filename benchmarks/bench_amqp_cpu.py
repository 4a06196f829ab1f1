"""The AMQP gateway's own CPU time per message, under a load that a Python client cannot limit.

Run: ``python benchmarks/bench_amqp_cpu.py [--messages N] [--rounds R]``. Starts mqkit's AMQP
gateway in a child process (``servers.MqkitAMQPServer``: a ``Broker`` with its defaults and
``enable_amqp``) and drives it with raw sockets from this process: one publisher connection
that writes pre-marshalled ``basic.publish`` + content header + body frames 100 messages at a
time (64-byte bodies, the properties aio-pika sends by default: delivery mode 1, priority 0,
empty headers; at most 1,000 messages ahead of the consumer), with publisher confirms off and
on, and one consumer connection (prefetch 256) that answers every ``basic.deliver`` with its
own ``basic.ack`` (one per message, as aio-pika's consumers do), written once per read. So the
gateway, not the client, is the bottleneck, and it sees frames in batches as under a busy
load. Prints the gateway process's CPU time (user + system, from ``/proc``) per message and
msgs/s, median of ``R`` rounds. The end-to-end comparison with RabbitMQ is
``bench_amqp.py``; this one tracks the gateway's cost per message. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import time
from pathlib import Path

import servers
from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

WINDOW = 1_000
CHUNK = 100
PAYLOAD = 64


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Client:
    """A raw AMQP connection with channel 1 open (frames written and read with pamqp)."""

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.buffer = b""
        self.writer.write(b"AMQP\x00\x00\x09\x01")
        await self.frame()
        self.send(commands.Connection.StartOk(mechanism="PLAIN", response="\0guest\0guest"), 0)
        await self.frame()
        self.send(commands.Connection.TuneOk(channel_max=10, frame_max=131072, heartbeat=0), 0)
        self.send(commands.Connection.Open("/"), 0)
        await self.frame()
        self.send(commands.Channel.Open(), 1)
        await self.frame()

    def send(self, value: object, channel: int = 1) -> None:
        self.writer.write(pframe.marshal(value, channel))  # type: ignore[arg-type]

    async def frame(self) -> object:
        while True:
            if len(self.buffer) >= 7:
                size = struct.unpack_from(">I", self.buffer, 3)[0]
                if len(self.buffer) >= size + 8:
                    raw, self.buffer = self.buffer[: size + 8], self.buffer[size + 8 :]
                    return pframe.unmarshal(raw)[2]
            self.buffer += await self.reader.read(65536)


async def run(port: int, n: int, confirms: bool) -> float:
    """Publish ``n`` messages and consume them; msgs/s."""
    publisher, consumer = _Client(), _Client()
    await publisher.open(port)
    await consumer.open(port)
    queue = "bench-cpu"
    consumer.send(commands.Queue.Declare(queue=queue, auto_delete=True))
    await consumer.frame()
    consumer.send(commands.Basic.Qos(prefetch_count=256))
    await consumer.frame()
    consumer.send(commands.Basic.Consume(queue=queue, consumer_tag="c"))
    await consumer.frame()
    if confirms:
        publisher.send(commands.Confirm.Select())
        await publisher.frame()
    props = commands.Basic.Properties(delivery_mode=1, priority=0, headers={})
    one = (
        pframe.marshal(commands.Basic.Publish(routing_key=queue), 1)
        + pframe.marshal(pheader.ContentHeader(0, PAYLOAD, props), 1)
        + pframe.marshal(pbody.ContentBody(b"x" * PAYLOAD), 1)
    )
    received = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal received
        buf = consumer.buffer
        while received < n:
            buf += await consumer.reader.read(262144)
            acks, pos = [], 0
            while len(buf) - pos >= 7:
                kind, _, size = struct.unpack_from(">BHI", buf, pos)
                if len(buf) - pos < size + 8:
                    break
                if kind == 1 and buf[pos + 7 : pos + 11] == b"\x00\x3c\x00\x3c":
                    tag = struct.unpack_from(">Q", buf, pos + 12 + buf[pos + 11])[0]
                    acks.append(pframe.marshal(commands.Basic.Ack(tag), 1))
                    received += 1
                pos += size + 8
            buf = buf[pos:]
            consumer.writer.write(b"".join(acks))
        done.set()

    async def drain_confirms() -> None:
        while await publisher.reader.read(262144):
            pass

    tasks = [asyncio.ensure_future(consume()), asyncio.ensure_future(drain_confirms())]
    t0 = time.perf_counter()
    sent = 0
    while sent < n:
        while sent - received >= WINDOW:
            await asyncio.sleep(0.0005)
        k = min(CHUNK, n - sent)
        publisher.writer.write(one * k)
        sent += k
        await publisher.writer.drain()
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - t0
    for task in tasks:
        task.cancel()
    publisher.writer.close()
    consumer.writer.close()
    return n / elapsed


def main() -> int:
    """Run the rounds; print CPU us/msg and msgs/s."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not servers.mqkit_amqp_available():
        print("mqkit.protocols.amqp is not here", file=sys.stderr)
        return 1
    server = servers.MqkitAMQPServer()
    server.start()
    assert server._proc is not None
    pid = server._proc.pid
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        asyncio.run(run(server.port, 2_000, True))  # warm up
        for _ in range(args.rounds):
            for confirms in (False, True):
                before = _cpu(pid)
                rate = asyncio.run(run(server.port, args.messages, confirms))
                used = (_cpu(pid) - before) / args.messages * 1e6
                results[confirms].append((used, rate))
    finally:
        server.stop()
    print(f"mqkit AMQP gateway, {args.messages} x {PAYLOAD} B, median of {args.rounds}")
    for confirms, rows in results.items():
        cpu = statistics.median(r[0] for r in rows)
        rate = statistics.median(r[1] for r in rows)
        label = "on" if confirms else "off"
        print(f"confirms {label:>3}: {cpu:6.1f} us CPU/msg {rate:>9,.0f} msgs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
