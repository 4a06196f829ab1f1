"""What an AMQP publish costs into a queue bounded by ``x-max-length-bytes``, short and long.

Run: ``python benchmarks/bench_amqp_bounded.py`` (``--quick`` for a short run). A ``Broker()``
with its defaults and ``enable_amqp`` in this process; pika publishes 64-byte messages in
confirm mode (each ``basic_publish`` returns once the gateway confirmed it, so the gateway's
own work per publish is in the time) to a queue with ``x-max-length-bytes`` (1 TB: the bound
is checked at every publish, never reached) and no consumer, once while the queue holds
``SMALL`` ready messages and once while it holds ``LARGE`` (filled by in-process publishes to
the queue's topic). Prints µs per publish at each level and the ratio large / small, for the
two overflow behaviours that read the queue's bytes at each publish (``drop-head``, the
default, and ``reject-publish``). The flat-cost rule wants the ratio near 1: before the
queue's subscription kept the sum of its bodies (``Taps.weigh``), each publish summed the
bodies of every ready message. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import mqkit

SMALL = 1_000
LARGE = 50_000
PAYLOAD = b"x" * 64


def _round(overflow: str, ready: int, publishes: int) -> float:
    """µs per confirmed publish into a bounded queue that holds ``ready`` messages."""
    import pika

    config = mqkit.Config(enable_amqp=True, amqp_host="127.0.0.1", amqp_port=0)
    with mqkit.Broker(config) as broker:
        host, port = broker.start_amqp_server()
        connection = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=port))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            args = {"x-max-length-bytes": 1 << 40, "x-overflow": overflow}
            channel.queue_declare("bounded", arguments=args)
            topic = next(t for t in broker.topics() if t.endswith(":bounded"))
            for i in range(ready):
                broker.publish(topic, mqkit.Message(f"r{i}", PAYLOAD))
            publish = channel.basic_publish
            t0 = time.perf_counter()
            for _ in range(publishes):
                publish("", "bounded", PAYLOAD)
            elapsed = time.perf_counter() - t0
            depth = channel.queue_declare("bounded", passive=True).method.message_count
            if depth != ready + publishes:
                raise SystemExit(f"the queue holds {depth}, not {ready + publishes}")
            return elapsed / publishes * 1e6
        finally:
            connection.close()


def main() -> int:
    """Print the table (median of interleaved rounds)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer publishes and rounds")
    args = parser.parse_args()
    publishes, rounds = (500, 1) if args.quick else (2_000, 3)
    print(
        f"AMQP publish (pika, confirm mode) into a queue with x-max-length-bytes and no "
        f"consumer; {publishes} x 64 B, median of {rounds}; Python {platform.python_version()}, "
        f"{platform.machine()}"
    )
    print()
    print(f"| x-overflow | µs/publish, {SMALL:,} ready | {LARGE:,} ready | large / small |")
    print("|---|---:|---:|---:|")
    for overflow in ("drop-head", "reject-publish"):
        small: list[float] = []
        large: list[float] = []
        for _ in range(rounds):
            small.append(_round(overflow, SMALL, publishes))
            large.append(_round(overflow, LARGE, publishes))
        s, g = statistics.median(small), statistics.median(large)
        print(f"| {overflow} | {s:.1f} | {g:.1f} | {g / s:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
