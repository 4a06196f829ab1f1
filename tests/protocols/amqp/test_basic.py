"""basic.*: publish, consume, get, ack/nack/reject, qos, cancel, recover, properties."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from .conftest import AMQPServer
from .helpers import TIMEOUT, connect


def take(ch: BlockingChannel, queue: str, n: int, auto_ack: bool = False) -> list[Any]:
    """``n`` deliveries of a consumer on ``queue`` (method, properties, body)."""
    got: list[Any] = []
    for method, props, body in ch.consume(queue, auto_ack=auto_ack, inactivity_timeout=TIMEOUT):
        assert method is not None, f"only {len(got)} of {n} deliveries came"
        got.append((method, props, body))
        if len(got) == n:
            break
    return got


def test_consume_with_manual_ack_in_order(ch: BlockingChannel) -> None:
    ch.queue_declare("q")
    for i in range(5):
        ch.basic_publish("", "q", str(i).encode())
    got = take(ch, "q", 5)
    assert [b for _, _, b in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert [m.delivery_tag for m, _, _ in got] == [1, 2, 3, 4, 5]
    assert not any(m.redelivered for m, _, _ in got)
    ch.basic_ack(5, multiple=True)
    ch.cancel()
    assert ch.queue_declare("q", passive=True).method.message_count == 0


def test_unacked_messages_come_back_redelivered_when_the_channel_closes(
    conn: pika.BlockingConnection,
) -> None:
    ch = conn.channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"a")
    ch.basic_publish("", "q", b"b")
    take(ch, "q", 2)
    ch.close()
    ch = conn.channel()
    got = take(ch, "q", 2)
    assert [(b, m.redelivered) for m, _, b in got] == [(b"a", True), (b"b", True)]


def test_nack_requeue_and_reject(ch: BlockingChannel) -> None:
    ch.queue_declare("q")
    for body in (b"a", b"b", b"c"):
        ch.basic_publish("", "q", body)
    method, _, body = ch.basic_get("q")
    assert body == b"a" and not method.redelivered
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get("q")
    assert body == b"a" and method.redelivered
    ch.basic_reject(method.delivery_tag, requeue=False)  # dropped (no dead letter exchange)
    ch.basic_get("q")
    m2, _, _ = ch.basic_get("q")
    ch.basic_nack(m2.delivery_tag, multiple=True, requeue=True)
    got = [ch.basic_get("q", auto_ack=True) for _ in range(2)]
    assert [(b, m.redelivered) for m, _, b in got] == [(b"b", True), (b"c", True)]
    assert ch.basic_get("q")[0] is None


def test_an_unknown_delivery_tag_closes_the_channel_406(ch: BlockingChannel) -> None:
    ch.queue_declare("q")
    ch.basic_ack(99)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("q", passive=True)
    assert info.value.reply_code == 406


def test_get_reports_the_remaining_count_and_get_empty(ch: BlockingChannel) -> None:
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"1")
    ch.basic_publish("", "q", b"2")
    method, _, _ = ch.basic_get("q", auto_ack=True)
    assert method.message_count == 1
    ch.basic_get("q", auto_ack=True)
    assert ch.basic_get("q")[0] is None


def test_prefetch_count_limits_unacked_deliveries_per_consumer(
    conn: pika.BlockingConnection,
) -> None:
    ch = conn.channel()
    ch.queue_declare("q")
    for i in range(10):
        ch.basic_publish("", "q", str(i).encode())
    ch.basic_qos(prefetch_count=3)
    got: list[Any] = []
    ch.basic_consume("q", lambda c, m, p, b: got.append((m, b)))
    while len(got) < 3:
        conn.process_data_events(time_limit=TIMEOUT)
    # a round trip after the third delivery: no fourth came, seven wait in the queue
    assert ch.queue_declare("q", passive=True).method.message_count == 7
    assert [b for _, b in got] == [b"0", b"1", b"2"]
    ch.basic_ack(got[0][0].delivery_tag)  # one ack: one more delivery
    while len(got) < 4:
        conn.process_data_events(time_limit=TIMEOUT)
    assert ch.queue_declare("q", passive=True).method.message_count == 6
    assert [b for _, b in got] == [b"0", b"1", b"2", b"3"]


def test_global_qos_limits_the_channel(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    for q in ("g1", "g2"):
        ch.queue_declare(q)
        for i in range(5):
            ch.basic_publish("", q, str(i).encode())
    ch.basic_qos(prefetch_count=4, global_qos=True)
    got: list[bytes] = []
    ch.basic_consume("g1", lambda c, m, p, b: got.append(b))
    ch.basic_consume("g2", lambda c, m, p, b: got.append(b))
    while len(got) < 4:
        conn.process_data_events(time_limit=TIMEOUT)
    left = sum(ch.queue_declare(q, passive=True).method.message_count for q in ("g1", "g2"))
    assert left == 6 and len(got) == 4


def test_round_robin_between_consumers(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.queue_declare("rr")
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    ch.basic_consume("rr", lambda c, m, p, b: seen["a"].append(b), auto_ack=True)
    ch.basic_consume("rr", lambda c, m, p, b: seen["b"].append(b), auto_ack=True)
    for i in range(6):
        ch.basic_publish("", "rr", str(i).encode())
    while len(seen["a"]) + len(seen["b"]) < 6:
        conn.process_data_events(time_limit=1)
    assert len(seen["a"]) == len(seen["b"]) == 3


def test_exclusive_consumer_and_consumer_tags(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.queue_declare("x")
    tag = ch.basic_consume("x", lambda *a: None, exclusive=True, consumer_tag="mine")
    assert tag == "mine"
    other = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        other.basic_consume("x", lambda *a: None)
    assert info.value.reply_code == 403


def test_server_generated_consumer_tags(mqkit_amqp: AMQPServer) -> None:
    from pamqp import commands

    from .helpers import Raw

    raw = Raw(mqkit_amqp)
    raw.handshake()
    raw.send_frame(commands.Queue.Declare(queue="t"), 1)
    raw.expect(commands.Queue.DeclareOk)
    raw.send_frame(commands.Basic.Consume(queue="t", consumer_tag=""), 1)
    ok = raw.expect(commands.Basic.ConsumeOk)
    assert ok.consumer_tag.startswith("amq.ctag-")


def test_deleting_the_queue_cancels_consumers_that_asked(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    ch.queue_declare("doomed")
    cancelled = threading.Event()
    ch.add_on_cancel_callback(lambda frame: cancelled.set())
    ch.basic_consume("doomed", lambda *a: None)
    other = conn.channel()
    other.queue_delete("doomed")
    while not cancelled.is_set():
        conn.process_data_events(time_limit=TIMEOUT)


def test_recover_redelivers_the_unacked(ch: BlockingChannel) -> None:
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"r")
    method, _, _ = ch.basic_get("q")
    ch.basic_recover(requeue=True)
    method, _, body = ch.basic_get("q", auto_ack=True)
    assert body == b"r" and method.redelivered


def test_mandatory_unroutable_comes_back_312(conn: pika.BlockingConnection) -> None:
    ch = conn.channel()
    returned: list[Any] = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, b)))
    ch.basic_publish("amq.direct", "nobody", b"lost", mandatory=True)
    ch.basic_publish("amq.direct", "nobody", b"quiet")
    ch.queue_declare("", exclusive=True)  # a round trip: both publishes were handled
    conn.process_data_events(time_limit=0)
    assert [(m.reply_code, m.reply_text, b) for m, b in returned] == [(312, "NO_ROUTE", b"lost")]


def test_properties_round_trip(ch: BlockingChannel, mqkit_amqp: AMQPServer) -> None:
    ch.queue_declare("p")
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={"tenant": "acme", "n": 7, "nested": {"a": 1}},
        delivery_mode=2,
        priority=3,
        correlation_id="c-1",
        reply_to="replies",
        expiration="60000",
        message_id="m-1",
        timestamp=int(stamp.timestamp()),
        type="order.created",
        user_id="guest",
        app_id="shop",
    )
    ch.basic_publish("", "p", b'{"x": 1}', props)
    _, got, body = ch.basic_get("p", auto_ack=True)
    assert body == b'{"x": 1}'
    for name in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ):
        assert getattr(got, name) == getattr(props, name), name
    assert got.headers == {"tenant": "acme", "n": 7, "nested": {"a": 1}}


def test_a_body_split_over_many_frames(ch: BlockingChannel) -> None:
    ch.queue_declare("big")
    body = bytes(range(256)) * 4000  # ~1 MB: eight frames of 131064 bytes
    ch.basic_publish("", "big", body)
    assert ch.basic_get("big", auto_ack=True)[2] == body
    ch.basic_publish("", "big", b"")
    assert ch.basic_get("big", auto_ack=True)[2] == b""


def test_direct_reply_to_rpc(conn: pika.BlockingConnection, mqkit_amqp: AMQPServer) -> None:
    ch = conn.channel()
    ch.queue_declare("rpc")
    replies: list[tuple[Any, bytes]] = []
    ch.basic_consume(
        "amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p, b)), auto_ack=True
    )
    ch.basic_publish(
        "",
        "rpc",
        b"ping",
        pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="1"),
    )
    server_conn = connect(mqkit_amqp)
    try:
        sch = server_conn.channel()
        _, props, body = sch.basic_get("rpc", auto_ack=True)
        assert body == b"ping" and props.reply_to.startswith("amq.rabbitmq.reply-to.")
        sch.basic_publish(
            "", props.reply_to, b"pong", pika.BasicProperties(correlation_id=props.correlation_id)
        )
        while not replies:
            conn.process_data_events(time_limit=TIMEOUT)
        assert [(p.correlation_id, b) for p, b in replies] == [("1", b"pong")]
    finally:
        server_conn.close()


def test_direct_reply_to_needs_the_reply_consumer(ch: BlockingChannel) -> None:
    ch.queue_declare("rpc")
    ch.basic_publish("", "rpc", b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("rpc", passive=True)
    assert info.value.reply_code == 406


def test_each_message_keeps_its_own_properties_in_a_run_of_publishes(
    conn: pika.BlockingConnection,
) -> None:
    # The gateway reads repeated properties once and marshals them once per connection:
    # runs of equal, different and direct reply-to properties must each come out as sent.
    ch = conn.channel()
    ch.queue_declare("runs")
    ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: None, auto_ack=True)
    a = pika.BasicProperties(content_type="a", headers={"k": "1"}, delivery_mode=1)
    b = pika.BasicProperties(content_type="b", priority=4, correlation_id="x")
    r = pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="x")
    plan = [a, a, b, r, r, a, pika.BasicProperties(), b, r, a]
    for i, props in enumerate(plan):
        ch.basic_publish("", "runs", str(i).encode(), props)
    got = take(ch, "runs", len(plan), auto_ack=True)
    assert [body for _, _, body in got] == [str(i).encode() for i in range(len(plan))]
    for (_, props, _), sent in zip(got, plan, strict=True):
        assert props.content_type == sent.content_type
        assert props.headers == sent.headers
        assert props.priority == sent.priority
        assert props.correlation_id == sent.correlation_id
        if sent.reply_to:
            assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
        else:
            assert props.reply_to is None


def test_requeued_messages_go_back_to_their_place_in_the_queue(ch: BlockingChannel) -> None:
    # RabbitMQ keeps publication order through requeues, whatever order they come back in
    ch.queue_declare("q")
    for body in (b"a", b"b", b"c", b"d", b"e"):
        ch.basic_publish("", "q", body)
    tags = [ch.basic_get("q")[0].delivery_tag for _ in range(4)]  # a b c d; e stays ready
    ch.basic_reject(tags[3], requeue=True)  # d
    ch.basic_nack(tags[1], requeue=True)  # b
    ch.basic_nack(tags[2], multiple=True, requeue=True)  # a and c
    got = [ch.basic_get("q", auto_ack=True) for _ in range(5)]
    assert [(b, m.redelivered) for m, _, b in got] == [
        (b"a", True),
        (b"b", True),
        (b"c", True),
        (b"d", True),
        (b"e", False),
    ]


def test_requeue_order_with_several_consumers_and_prefetch(conn: pika.BlockingConnection) -> None:
    first, second = conn.channel(), conn.channel()
    first.queue_declare("q")
    for ch in (first, second):
        ch.basic_qos(prefetch_count=2)
    seen: dict[int, list[Any]] = {1: [], 2: []}
    for n, ch in ((1, first), (2, second)):
        ch.basic_consume("q", lambda c, m, p, b, n=n: seen[n].append((m, b)))
    for body in (b"a", b"b", b"c", b"d", b"e", b"f"):
        first.basic_publish("", "q", body)
    conn.process_data_events(time_limit=0)
    while len(seen[1]) + len(seen[2]) < 4:
        conn.process_data_events(time_limit=TIMEOUT)
    assert sorted(b for _, b in seen[1] + seen[2]) == [b"a", b"b", b"c", b"d"]  # prefetch 2 each
    second.basic_nack(seen[2][-1][0].delivery_tag, multiple=True, requeue=True)
    second.close()  # the second consumer's two come back first, then the first's on its close
    first.close()
    third = conn.channel()
    got = [third.basic_get("q", auto_ack=True) for _ in range(6)]
    assert [b for _, _, b in got] == [b"a", b"b", b"c", b"d", b"e", b"f"]
    assert [m.redelivered for m, _, _ in got] == [True] * 4 + [False] * 2
