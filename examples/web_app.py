"""A FastAPI app that publishes events to background consumers.

Run: ``python examples/web_app.py`` (then ``curl -X POST localhost:8000/orders -H
'content-type: application/json' -d '{"sku": "A-42", "qty": 3}'`` and ``curl
localhost:8000/stats``), or ``uvicorn examples.web_app:app``. Needs the ``examples`` extra
(FastAPI, uvicorn).

A request handler only publishes an ``orders.created`` event and answers 202 at once; the slow
work happens in background consumers started with the app (its lifespan): a "mailer" task that
acknowledges each event it handled (an event it fails on is retried, then dead-lettered), and
an "inventory" worker thread. ``GET /stats`` shows what they did and the broker's health; the
broker closes, and the consumers end, when the app shuts down.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

import mqkit


class Order(BaseModel):
    """The body of ``POST /orders``."""

    sku: str = Field(min_length=1)
    qty: int = Field(gt=0)
    email: str = "customer@example.com"


class Shop:
    """The app's state: the broker and what the background consumers did."""

    def __init__(self) -> None:
        self.broker = mqkit.Broker(
            mqkit.Config(
                enable_ack_support=True,
                default_ack_timeout=5.0,
                max_ack_retries=2,
                enable_dead_letter_queue=True,
                dead_letter_topic="orders.dead",
            )
        )
        self.ids = itertools.count(1)
        self.emails: list[str] = []
        self.stock: dict[str, int] = {}
        self.lock = threading.Lock()

    async def mailer(self, sub: mqkit.Subscription) -> None:
        """Send a confirmation for each order (asyncio task); ack what was sent."""
        async for event in sub:
            order = event.data
            if order["sku"] == "BROKEN":  # a mail server that always fails for this one
                sub.nack(event.ack_id)  # type: ignore[attr-defined]
                continue
            await asyncio.sleep(0.01)  # the SMTP round trip
            with self.lock:
                self.emails.append(f"{order['email']}: order {event.id} confirmed")
            sub.ack(event.ack_id)  # type: ignore[attr-defined]

    def inventory(self, sub: mqkit.Subscription) -> None:
        """Reserve stock for each order (a worker thread)."""
        for event in sub:
            order = event.data
            with self.lock:
                self.stock[order["sku"]] = self.stock.get(order["sku"], 0) - order["qty"]
            sub.ack(event.ack_id)  # type: ignore[attr-defined]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the broker and the consumers with the app; stop them when it stops."""
    shop = Shop()
    app.state.shop = shop
    mail = shop.broker.subscribe_with_ack("orders.created")
    stock = shop.broker.subscribe_with_ack("orders.created")
    mailer = asyncio.create_task(shop.mailer(mail))
    worker = threading.Thread(target=shop.inventory, args=(stock,), name="inventory")
    worker.start()
    try:
        yield
    finally:
        shop.broker.close()  # consumers drain their buffers, then their loops end
        await mailer
        worker.join(timeout=10)


app = FastAPI(title="mqkit shop", lifespan=lifespan)


def shop_of(app: FastAPI) -> Shop:
    """The running app's :class:`Shop`."""
    shop: Shop = app.state.shop
    return shop


@app.post("/orders", status_code=202)
def create_order(order: Order) -> dict[str, str]:
    """Publish ``orders.created`` and answer at once; consumers do the rest."""
    shop = shop_of(app)
    order_id = f"order-{next(shop.ids)}"
    try:
        shop.broker.publish_with_ack(
            "orders.created", mqkit.AckMessage(order_id, order.model_dump())
        )
    except mqkit.MQError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    return {"id": order_id, "status": "accepted"}


@app.get("/stats")
def stats() -> dict[str, Any]:
    """What the consumers did, the dead letters, and the broker's health."""
    shop = shop_of(app)
    health = shop.broker.health_check()
    with shop.lock:
        emails, stock = list(shop.emails), dict(shop.stock)
    return {
        "emails": emails,
        "stock": stock,
        "dead_letters": [
            {"id": d.message.id, "reason": d.reason} for d in shop.broker.dead_letters()
        ],
        "health": health.status,
        "published": health.metrics.total_published if health.metrics else 0,
    }


def main() -> None:
    """Serve the app with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(description="the mqkit shop example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
