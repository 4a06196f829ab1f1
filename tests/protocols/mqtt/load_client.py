"""Load generator for test_load.py: N clients, each publishing QoS 1 and subscribing, for S s.

Client i subscribes to ``load/<i>`` and publishes to ``load/<i+1 mod N>`` every ``1/rate``
seconds; payloads name the sender and a sequence number. Prints one JSON line: how many
publishes were acknowledged, how many were received, which acknowledged ones never arrived.

Usage: python load_client.py HOST PORT CLIENTS SECONDS RATE
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from mqkit.protocols.mqtt.client import AsyncClient
from mqkit.protocols.mqtt.codec import SubscriptionRequest


async def main(host: str, port: int, n: int, seconds: float, rate: float) -> None:
    clients = []
    for i in range(n):
        c = await AsyncClient.connect(host, port, f"load-{i}", version=5 if i % 2 else 4)
        await c.subscribe(SubscriptionRequest(topic_filter=f"load/{i}", qos=1))
        clients.append(c)
    acked: set[bytes] = set()
    received: list[bytes] = []
    print(json.dumps({"connected": n}), flush=True)

    async def publisher(i: int, c: AsyncClient) -> None:
        seq = 0
        start = time.monotonic() + (i % 50) / 50 / rate
        while time.monotonic() - start < seconds:
            payload = f"{i}:{seq}".encode()
            await c.publish(f"load/{(i + 1) % n}", payload, qos=1)
            acked.add(payload)
            seq += 1
            await asyncio.sleep(max(0.0, start + seq / rate - time.monotonic()))

    async def reader(c: AsyncClient) -> None:
        while True:
            message = await c.messages.get()
            received.append(message.payload)

    readers = [asyncio.create_task(reader(c)) for c in clients]
    await asyncio.gather(*(publisher(i, c) for i, c in enumerate(clients)))
    deadline = time.monotonic() + 30
    while len(set(received)) < len(acked) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for t in readers:
        t.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for c in clients:
        await c.disconnect()
    missing = acked - set(received)
    print(
        json.dumps(
            {
                "acked": len(acked),
                "received": len(received),
                "distinct": len(set(received)),
                "missing": sorted(m.decode() for m in missing)[:20],
                "missing_count": len(missing),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    h, p, count, secs, r = sys.argv[1:6]
    asyncio.run(main(h, int(p), int(count), float(secs), float(r)))
