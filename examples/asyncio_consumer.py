"""asyncio consumers: ``async for`` over a subscription, with a producer thread beside them.

Run: ``python examples/asyncio_consumer.py``

Three tasks on one event loop compete for the messages of one subscription (each message goes
to exactly one of them), while a plain thread publishes, as a synchronous part of an
application would. A fourth task reads a pattern subscription with ``aget(timeout=...)``.
Cancelling the subscriptions ends the ``async for`` loops once the buffers are drained: a
clean shutdown with nothing lost.
"""

from __future__ import annotations

import asyncio
import sys
import threading

import mqkit

READINGS = 60


async def consume(name: str, sub: mqkit.Subscription, seen: dict[str, list[str]]) -> None:
    """Handle readings until the subscription is cancelled and drained."""
    async for msg in sub:  # ends when the subscription is cancelled and drained
        seen[name].append(msg.id)
        await asyncio.sleep(0)  # real work would await I/O here


async def watch_alerts(sub: mqkit.Subscription) -> list[str]:
    """Collect alerts with ``aget`` until none comes for 5 s or the subscription closes."""
    alerts: list[str] = []
    while True:
        try:
            msg = await sub.aget(timeout=5)
        except (TimeoutError, mqkit.SubscriptionClosedError):
            return alerts
        alerts.append(f"{msg.topic}: {msg.data}")


async def main_async() -> int:
    """Run the consumers and the producer; return 0 when all went as expected."""
    with mqkit.Broker() as broker:
        readings = broker.subscribe("sensors.readings", mqkit.SubOptions(buffer_size=1000))
        alerts = broker.subscribe_pattern("sensors.alert.*")
        seen: dict[str, list[str]] = {f"task-{i}": [] for i in range(3)}
        consumers = [asyncio.create_task(consume(name, readings, seen)) for name in seen]
        watcher = asyncio.create_task(watch_alerts(alerts))

        def produce() -> None:  # a synchronous producer in its own thread
            for i in range(READINGS):
                broker.publish("sensors.readings", mqkit.Message(f"r-{i}", {"celsius": 20 + i % 7}))
            broker.publish("sensors.alert.fire", mqkit.Message("a-1", "smoke in room 4"))
            broker.publish("sensors.alert.flood", mqkit.Message("a-2", "water in the cellar"))

        producer = threading.Thread(target=produce)
        producer.start()
        await asyncio.to_thread(producer.join)
        readings.cancel()  # the consumers drain what is buffered, then their loops end
        alerts.cancel()
        await asyncio.gather(*consumers)
        got_alerts = await watcher

    everything = sorted((m for ids in seen.values() for m in ids), key=lambda m: int(m[2:]))
    for name, ids in seen.items():
        print(f"{name} handled {len(ids)} readings")
    print(f"alerts: {got_alerts}")
    once = everything == [f"r-{i}" for i in range(READINGS)]
    print(f"all {len(everything)} readings handled exactly once: {once}")
    return 0 if once and len(got_alerts) == 2 else 1


def main() -> int:
    """Run the example; return 0 when every message was handled exactly once."""
    return asyncio.run(main_async())


if __name__ == "__main__":
    sys.exit(main())
