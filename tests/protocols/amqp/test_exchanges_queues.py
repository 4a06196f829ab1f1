"""Exchanges, queues and bindings through pika, and the errors RabbitMQ gives."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from .conftest import AMQPServer
from .helpers import bodies, connect


def channel_error(ch: BlockingChannel, call: object, *args: object, **kw: object) -> int:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        call(*args, **kw)  # type: ignore[operator]
    return int(info.value.reply_code)


def test_the_default_exchange_routes_by_queue_name(ch: BlockingChannel) -> None:
    ch.queue_declare("q1")
    ch.basic_publish("", "q1", b"a")
    ch.basic_publish("", "nobody", b"lost")
    assert bodies(ch, "q1") == [b"a"]


@pytest.mark.parametrize(
    ("exchange", "kind", "key", "arguments", "hits", "misses"),
    [
        ("amq.direct", "direct", "k", None, [("k", None)], [("other", None)]),
        ("amq.fanout", "fanout", "", None, [("any", None), ("", None)], []),
        (
            "amq.topic",
            "topic",
            "stock.*.nyse",
            None,
            [("stock.ibm.nyse", None)],
            [("stock.nyse", None), ("stock.a.b.nyse", None)],
        ),
        ("amq.topic", "topic", "log.#", None, [("log", None), ("log.a.b", None)], [("logs", None)]),
        ("amq.topic", "topic", "#.end", None, [("end", None), ("a.b.end", None)], [("endx", None)]),
        (
            "amq.headers",
            "headers",
            "",
            {"x-match": "all", "a": "1", "b": "2"},
            [("", {"a": "1", "b": "2", "c": "3"})],
            [("", {"a": "1"}), ("", {"a": "1", "b": "3"})],
        ),
        (
            "amq.match",
            "headers",
            "",
            {"x-match": "any", "a": "1", "b": "2"},
            [("", {"a": "1"}), ("", {"b": "2"})],
            [("", {"a": "2"}), ("", None)],
        ),
    ],
)
def test_builtin_exchanges_route_as_their_type(
    ch: BlockingChannel,
    exchange: str,
    kind: str,
    key: str,
    arguments: dict[str, str] | None,
    hits: list[tuple[str, dict[str, str] | None]],
    misses: list[tuple[str, dict[str, str] | None]],
) -> None:
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, exchange, key, arguments=arguments)
    for i, (rk, headers) in enumerate(hits):
        ch.basic_publish(exchange, rk, f"hit{i}".encode(), pika.BasicProperties(headers=headers))
    for i, (rk, headers) in enumerate(misses):
        ch.basic_publish(exchange, rk, f"miss{i}".encode(), pika.BasicProperties(headers=headers))
    ch.queue_declare(q, passive=True)  # a round trip: every publish was handled
    assert bodies(ch, q) == [f"hit{i}".encode() for i in range(len(hits))]


def test_declared_exchanges_and_exchange_to_exchange_bindings(ch: BlockingChannel) -> None:
    ch.exchange_declare("orders", "topic")
    ch.exchange_declare("eu", "fanout", auto_delete=False)
    ch.exchange_bind(destination="eu", source="orders", routing_key="eu.#")
    ch.queue_declare("eu-all")
    ch.queue_bind("eu-all", "eu")
    ch.basic_publish("orders", "eu.fr.paris", b"1")
    ch.basic_publish("orders", "us.ny", b"2")
    ch.queue_declare("eu-all", passive=True)
    assert bodies(ch, "eu-all") == [b"1"]
    ch.exchange_unbind(destination="eu", source="orders", routing_key="eu.#")
    ch.basic_publish("orders", "eu.fr.paris", b"3")
    ch.queue_declare("eu-all", passive=True)
    assert bodies(ch, "eu-all") == []
    ch.exchange_delete("orders")
    assert channel_error(ch, ch.exchange_declare, "orders", passive=True) == 404


def test_a_binding_loop_delivers_once(ch: BlockingChannel) -> None:
    ch.exchange_declare("x1", "fanout")
    ch.exchange_declare("x2", "fanout")
    ch.exchange_bind("x2", "x1")
    ch.exchange_bind("x1", "x2")
    ch.queue_declare("loop")
    ch.queue_bind("loop", "x1")
    ch.queue_bind("loop", "x2")
    ch.basic_publish("x1", "", b"once")
    ch.queue_declare("loop", passive=True)
    assert bodies(ch, "loop") == [b"once"]


def test_exchange_errors(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    assert channel_error(ch, ch.exchange_declare, "missing", passive=True) == 404
    ch = conn.channel()
    ch.exchange_declare("ex", "direct")
    assert channel_error(ch, ch.exchange_declare, "ex", "fanout") == 406
    ch = conn.channel()
    assert channel_error(ch, ch.exchange_declare, "amq.mine", "direct") == 403
    ch = conn.channel()
    assert channel_error(ch, ch.exchange_declare, "", passive=True) == 403
    ch = conn.channel()
    assert channel_error(ch, ch.exchange_delete, "amq.direct") == 403
    ch = conn.channel()
    ch.queue_declare("bound")
    ch.queue_bind("bound", "ex", "k")
    assert channel_error(ch, ch.exchange_delete, "ex", if_unused=True) == 406
    ch = conn.channel()
    assert channel_error(ch, ch.queue_bind, "bound", "missing", "k") == 404
    ch = conn.channel()
    assert channel_error(ch, ch.queue_bind, "missing", "ex", "k") == 404
    ch = conn.channel()
    ch.exchange_declare("inner", "fanout", internal=True)
    ch.basic_publish("inner", "", b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("bound", passive=True)
    assert info.value.reply_code == 403
    ch = conn.channel()
    ch.basic_publish("nowhere", "", b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("bound", passive=True)
    assert info.value.reply_code == 404


def test_an_unknown_exchange_type_closes_the_connection_503(
    conn: pika.BlockingConnection,
) -> None:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        ch.exchange_declare("odd", "x-unknown-type")
    assert info.value.reply_code == 503


def test_auto_delete_exchange_goes_with_its_last_binding(ch: BlockingChannel) -> None:
    ch.exchange_declare("temp", "direct", auto_delete=True)
    ch.queue_declare("tq")
    ch.queue_bind("tq", "temp", "k")
    ch.queue_unbind("tq", "temp", "k")
    assert channel_error(ch, ch.exchange_declare, "temp", passive=True) == 404


def test_server_named_queues_and_passive_declare(ch: BlockingChannel) -> None:
    ok = ch.queue_declare("", exclusive=True).method
    assert ok.queue.startswith("amq.gen-")
    ch.basic_publish("", ok.queue, b"1")
    ch.basic_publish("", ok.queue, b"2")
    again = ch.queue_declare(ok.queue, passive=True).method
    assert (again.message_count, again.consumer_count) == (2, 0)
    assert channel_error(ch, ch.queue_declare, "absent", passive=True) == 404


def test_queue_errors(conn: pika.BlockingConnection, mqkit_amqp: AMQPServer) -> None:
    ch = conn.channel()
    ch.queue_declare("durable", durable=True)
    assert channel_error(ch, ch.queue_declare, "durable", durable=False) == 406
    ch = conn.channel()
    assert channel_error(ch, ch.queue_declare, "amq.reserved") == 403
    ch = conn.channel()
    ch.queue_declare("mine", exclusive=True)
    other = connect(mqkit_amqp)
    try:
        och = other.channel()
        assert channel_error(och, och.queue_declare, "mine", passive=True) == 405
        och = other.channel()
        assert channel_error(och, och.basic_consume, "mine", lambda *a: None) == 405
    finally:
        other.close()
    # RabbitMQ's strict check: the owner too cannot redeclare it with another exclusivity
    assert channel_error(ch, ch.queue_declare, "mine") == 405
    ch = conn.channel()
    ch.queue_declare("shared")
    assert channel_error(ch, ch.queue_declare, "shared", exclusive=True) == 405
    ch = conn.channel()
    ch.queue_declare("args", arguments={"x-max-length": 5})
    assert channel_error(ch, ch.queue_declare, "args", arguments={"x-max-length": 6}) == 406
    ch = conn.channel()
    bad = {"x-overflow": "explode"}
    assert channel_error(ch, ch.queue_declare, "bad", arguments=bad) == 406


def test_exclusive_queues_go_with_their_connection(mqkit_amqp: AMQPServer) -> None:
    first = connect(mqkit_amqp)
    first.channel().queue_declare("excl", exclusive=True)
    first.close()
    conn = connect(mqkit_amqp)
    ch = conn.channel()
    assert channel_error(ch, ch.queue_declare, "excl", passive=True) == 404
    conn.close()


def test_bind_unbind_purge_and_delete(ch: BlockingChannel) -> None:
    ch.queue_declare("work")
    ch.queue_bind("work", "amq.direct", "jobs")
    for i in range(3):
        ch.basic_publish("amq.direct", "jobs", str(i).encode())
    assert ch.queue_purge("work").method.message_count == 3
    ch.queue_unbind("work", "amq.direct", "jobs")
    ch.basic_publish("amq.direct", "jobs", b"after unbind")
    ch.basic_publish("", "work", b"direct")
    assert ch.queue_declare("work", passive=True).method.message_count == 1
    assert channel_error(ch, ch.queue_delete, "work", if_empty=True) == 406


def test_delete_if_unused_and_the_count(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.queue_declare("busy")
    ch.basic_consume("busy", lambda *a: None)
    assert channel_error(ch, ch.queue_delete, "busy", if_unused=True) == 406
    ch = conn.channel()
    ch.queue_declare("full")
    ch.basic_publish("", "full", b"1")
    ch.basic_publish("", "full", b"2")
    ch.queue_declare("full", passive=True)
    assert ch.queue_delete("full").method.message_count == 2
    assert ch.queue_delete("never-was").method.message_count == 0


def test_auto_delete_queue_goes_with_its_last_consumer(ch: BlockingChannel) -> None:
    ch.queue_declare("ad", auto_delete=True)
    tag = ch.basic_consume("ad", lambda *a: None)
    ch.basic_cancel(tag)
    assert channel_error(ch, ch.queue_declare, "ad", passive=True) == 404


def test_unroutable_messages_go_to_the_alternate_exchange(ch: BlockingChannel) -> None:
    ch.exchange_declare("leftovers", "fanout")
    ch.queue_declare("unrouted")
    ch.queue_bind("unrouted", "leftovers")
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "leftovers"})
    ch.queue_declare("routed")
    ch.queue_bind("routed", "main", "known")
    ch.basic_publish("main", "known", b"1")
    ch.basic_publish("main", "unknown", b"2")
    ch.queue_declare("routed", passive=True)
    assert bodies(ch, "routed") == [b"1"]
    assert bodies(ch, "unrouted") == [b"2"]


def test_unbind_is_idempotent_as_in_rabbitmq(ch: BlockingChannel) -> None:
    # RabbitMQ 3.10 answers unbind-ok when the binding, the queue or the exchange is gone
    ch.exchange_declare("src", "direct")
    ch.queue_declare("gone")
    ch.queue_bind("gone", "src", "k")
    ch.queue_delete("gone")
    ch.queue_unbind("gone", "src", "k")
    ch.queue_declare("here")
    ch.queue_unbind("here", "no-such-exchange", "k")
    ch.queue_unbind("here", "src", "never-bound")
    ch.exchange_unbind(destination="no-such-exchange", source="src", routing_key="k")
    ch.exchange_unbind(destination="src", source="no-such-exchange", routing_key="k")
    assert ch.queue_declare("here", passive=True).method.message_count == 0
