"""aio-pika (and aiormq under it) against the gateway, in asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import aio_pika
import aiormq
import pika
import pika.channel
import pytest

import mqkit

from .conftest import AMQPServer

TIMEOUT = 20.0


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def test_publish_consume_ack_with_aio_pika(mqkit_amqp: AMQPServer) -> None:
    async def main() -> list[bytes]:
        conn = await aio_pika.connect_robust(mqkit_amqp.url)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            await ch.set_qos(prefetch_count=2)
            queue = await ch.declare_queue("aio", durable=True)
            for i in range(5):
                await ch.default_exchange.publish(
                    aio_pika.Message(str(i).encode(), delivery_mode=2), routing_key="aio"
                )
            got: list[bytes] = []
            async with queue.iterator() as it:
                async for message in it:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 5:
                        break
            return got

    assert run(main()) == [b"0", b"1", b"2", b"3", b"4"]


def test_topic_exchange_rpc_style_with_aio_pika(mqkit_amqp: AMQPServer) -> None:
    async def main() -> tuple[bytes, str | None]:
        conn = await aio_pika.connect(mqkit_amqp.url)
        async with conn:
            ch = await conn.channel()
            exchange = await ch.declare_exchange("rpc", aio_pika.ExchangeType.TOPIC)
            requests = await ch.declare_queue("", exclusive=True)
            await requests.bind(exchange, "calc.#")
            replies = await ch.declare_queue("", exclusive=True)
            await exchange.publish(
                aio_pika.Message(b"2+2", reply_to=replies.name, correlation_id="r1"),
                routing_key="calc.add",
            )
            request = await requests.get(timeout=5)
            await request.ack()
            await ch.default_exchange.publish(
                aio_pika.Message(b"4", correlation_id=request.correlation_id),
                routing_key=request.reply_to or "",
            )
            reply = await replies.get(timeout=5)
            await reply.ack()
            return reply.body, reply.correlation_id

    assert run(main()) == (b"4", "r1")


def test_nack_requeue_redelivers_with_aio_pika(mqkit_amqp: AMQPServer) -> None:
    async def main() -> list[tuple[bytes, bool]]:
        conn = await aio_pika.connect(mqkit_amqp.url)
        async with conn:
            ch = await conn.channel()
            queue = await ch.declare_queue("re")
            await ch.default_exchange.publish(aio_pika.Message(b"x"), routing_key="re")
            first = await queue.get(timeout=5)
            await first.nack(requeue=True)
            second = await queue.get(timeout=5)
            await second.ack()
            return [(first.body, first.redelivered), (second.body, second.redelivered)]

    assert run(main()) == [(b"x", False), (b"x", True)]


def test_channel_errors_surface_in_aio_pika_and_the_connection_lives(
    mqkit_amqp: AMQPServer,
) -> None:
    async def main() -> bool:
        conn = await aio_pika.connect(mqkit_amqp.url)
        async with conn:
            ch = await conn.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await ch.declare_queue("missing", passive=True)
            ch2 = await conn.channel()
            await ch2.declare_queue("present")
            return not conn.is_closed

    assert run(main())


def test_in_process_messages_reach_an_aio_pika_consumer(mqkit_amqp: AMQPServer) -> None:
    async def main() -> bytes:
        conn = await aio_pika.connect(mqkit_amqp.url)
        async with conn:
            ch = await conn.channel()
            queue = await ch.declare_queue("", exclusive=True)
            topic = await ch.get_exchange("amq.topic")
            await queue.bind(topic, "events.#")
            await asyncio.to_thread(
                mqkit_amqp.broker.publish, "events.x", mqkit.Message("e1", b"from python")
            )
            async with queue.iterator() as it:
                async for message in it:
                    await message.ack()
                    return message.body
        raise AssertionError("no message")

    assert run(main()) == b"from python"


def test_aiormq_basic_get_and_confirms(mqkit_amqp: AMQPServer) -> None:
    async def main() -> bytes:
        conn = await aiormq.connect(mqkit_amqp.url)
        try:
            ch = await conn.channel()
            await ch.queue_declare("raw")
            confirmation = await ch.basic_publish(b"hi", routing_key="raw")
            assert confirmation is not None
            got = await ch.basic_get("raw", no_ack=True)
            return bytes(got.body)
        finally:
            await conn.close()

    assert run(main()) == b"hi"


def test_pika_asyncio_adapter(mqkit_amqp: AMQPServer) -> None:
    from pika.adapters.asyncio_connection import AsyncioConnection

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()

        def on_open(conn: AsyncioConnection) -> None:
            conn.channel(on_open_callback=on_channel)

        def on_channel(ch: pika.channel.Channel) -> None:
            def declared(_: object) -> None:
                ch.basic_consume("async", on_message, auto_ack=True)
                ch.basic_publish("", "async", b"via the asyncio adapter")

            ch.queue_declare("async", callback=declared)

        def on_message(ch: object, method: object, props: object, body: bytes) -> None:
            if not done.done():
                done.set_result(body)

        def on_error(conn: object, exc: BaseException) -> None:
            if not done.done():
                done.set_exception(exc)

        params = pika.URLParameters(mqkit_amqp.url)
        conn = AsyncioConnection(
            params, on_open_callback=on_open, on_open_error_callback=on_error, custom_ioloop=loop
        )
        try:
            return await done
        finally:
            closed: asyncio.Future[None] = loop.create_future()
            conn.add_on_close_callback(lambda *a: closed.done() or closed.set_result(None))
            conn.close()
            await closed

    assert run(main()) == b"via the asyncio adapter"
