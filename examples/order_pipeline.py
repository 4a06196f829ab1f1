"""An order pipeline built from typed handlers: validate, price (request-reply), ship, audit.

Run the scripted demo (a few orders, one that does not parse, one that keeps failing)::

    python examples/order_pipeline.py

or run it as a service and post orders to it (from the examples directory)::

    cd examples && mqkit run order_pipeline:broker --port 8090
    curl -s -X POST http://127.0.0.1:8090/publish/orders.new \\
        -d '{"data": {"id": "o-9", "sku": "A-42", "qty": 2}}'

- ``orders.new``: ``accept`` structures the payload into an :class:`Order` (a payload that does
  not fit is dead-lettered at once), asks ``prices`` for a quote (``broker.request``) and
  publishes a :class:`PricedOrder` to ``orders.priced`` (``@broker.publisher``); an order it
  cannot accept raises, is retried (``max_ack_retries``) and then dead-lettered;
- ``prices``: ``quote`` answers requests (its return value is the reply);
- ``orders.priced``: ``ship`` (async, up to 4 at once) ships it;
- ``dlq``: ``audit`` reports every dead letter with its reason.
"""

from __future__ import annotations

import asyncio
import threading

import attrs

import mqkit

PRICES = {"A-42": 9.5, "B-7": 120.0}


@attrs.frozen
class Order:
    """What a client posts to ``orders.new``."""

    id: str
    sku: str
    qty: int


@attrs.frozen
class PricedOrder:
    """An accepted order with its price."""

    id: str
    sku: str
    qty: int
    total: float


broker = mqkit.Broker(
    mqkit.Config(
        enable_ack_support=True,
        enable_dead_letter_queue=True,
        dead_letter_topic="dlq",
        max_ack_retries=2,
    )
)
finished = threading.Condition()
outcomes: list[str] = []


def report(line: str) -> None:
    """Print ``line`` and count it as one order's outcome.

    Handlers run on several threads: one lock keeps their lines whole.
    """
    with finished:
        print(line, flush=True)
        outcomes.append(line)
        finished.notify_all()


@broker.subscriber("prices")
def quote(order: Order) -> float:
    """Price an order (a request-reply handler)."""
    if order.sku not in PRICES:
        raise LookupError(f"no price for {order.sku!r}")
    return PRICES[order.sku] * order.qty


@broker.subscriber("orders.new", concurrency=2)
@broker.publisher("orders.priced")
def accept(order: Order) -> PricedOrder:
    """Validate an order and price it; raising sends it to retries, then the dead letters."""
    if order.qty <= 0:
        raise ValueError(f"order {order.id}: quantity must be positive, not {order.qty}")
    total = broker.request("prices", order, timeout=5).data
    return PricedOrder(order.id, order.sku, order.qty, total)


@broker.subscriber("orders.priced", concurrency=4)
async def ship(order: PricedOrder) -> None:
    """Ship a priced order."""
    report(f"shipped {order.id}: {order.qty} x {order.sku} for {order.total:.2f}")


@broker.subscriber("dlq")
def audit(message: mqkit.Message) -> None:
    """Report a dead letter (the dead letter queue publishes each to ``dlq``)."""
    report(f"dead letter {message.id}: {message.meta['x-dead-letter-reason']}")


async def demo() -> None:
    """Post a few orders, wait until each one is shipped or dead-lettered, stop cleanly."""
    server = asyncio.create_task(broker.serve())
    orders = [
        mqkit.AckMessage("o-1", {"id": "o-1", "sku": "A-42", "qty": 2}),
        mqkit.AckMessage("o-2", {"id": "o-2", "sku": "B-7", "qty": 1}),
        mqkit.AckMessage("o-3", {"id": "o-3", "sku": "A-42", "qty": "two"}),  # does not parse
        mqkit.AckMessage("o-4", {"id": "o-4", "sku": "A-42", "qty": 0}),  # fails every time
    ]
    for message in orders:
        broker.publish_with_ack("orders.new", message)

    def all_done() -> None:
        with finished:
            assert finished.wait_for(lambda: len(outcomes) >= len(orders), timeout=30)

    await asyncio.to_thread(all_done)
    server.cancel()  # finish what is in flight, then close the broker
    await asyncio.gather(server, return_exceptions=True)
    print(f"done: {len(outcomes)} orders, broker closed: {broker.closed}")


if __name__ == "__main__":
    asyncio.run(demo())
