"""Publisher confirms and tx.select/commit/rollback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest
from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

from .conftest import AMQPServer
from .helpers import Raw, connect


def _confirming(server: AMQPServer, queue: str) -> Raw:
    """A raw connection with channel 1 in confirm mode and ``queue`` declared."""
    raw = Raw(server)
    raw.handshake()
    raw.send_frame(commands.Confirm.Select(), 1)
    raw.expect(commands.Confirm.SelectOk)
    raw.send_frame(commands.Queue.Declare(queue=queue), 1)
    raw.expect(commands.Queue.DeclareOk)
    return raw


def _publish(routing_key: str, body: bytes = b"") -> bytes:
    """The frames of one basic.publish on channel 1 to the default exchange."""
    frames = pframe.marshal(commands.Basic.Publish(routing_key=routing_key), 1)
    frames += pframe.marshal(pheader.ContentHeader(0, len(body), commands.Basic.Properties()), 1)
    return frames + (pframe.marshal(pbody.ContentBody(body), 1) if body else b"")


def test_confirms_ack_each_publish_in_order(mqkit_amqp: AMQPServer) -> None:
    raw = _confirming(mqkit_amqp, "c")
    for routing_key in ("c", "c", "unroutable"):
        raw.send(_publish(routing_key))
    # an unroutable message is confirmed too, as by RabbitMQ
    assert _confirmed(raw, 3) == [1, 2, 3]


def _confirmed(raw: Raw, last: int) -> list[int]:
    """The sequence numbers the basic.acks read until ``last`` cover, in order."""
    covered: list[int] = []
    while not covered or covered[-1] < last:
        ack = raw.expect(commands.Basic.Ack)
        start = covered[-1] + 1 if ack.multiple and covered else ack.delivery_tag
        if ack.multiple and not covered:
            start = 1
        covered.extend(range(start, ack.delivery_tag + 1))
    return covered


def test_a_consumer_on_the_connection_gets_the_message_before_its_publisher_ack(
    mqkit_amqp: AMQPServer,
) -> None:
    # As from RabbitMQ: a client that awaits the ack, then the delivery (aiormq's
    # test_connection_close_stairway), must not see the ack alone when the connection is cut.
    raw = _confirming(mqkit_amqp, "own")
    raw.send_frame(commands.Basic.Consume(queue="own", consumer_tag="t", no_ack=True), 1)
    raw.expect(commands.Basic.ConsumeOk)
    for seq in (1, 2, 3):
        raw.send(_publish("own", b"x"))
        deliver = raw.expect(commands.Basic.Deliver)
        assert deliver.delivery_tag == seq
        raw.expect(pheader.ContentHeader)
        assert raw.expect(pbody.ContentBody).value == b"x"
        ack = raw.expect(commands.Basic.Ack)
        assert (ack.delivery_tag, ack.multiple) == (seq, False)


def test_confirms_due_together_are_one_multiple_ack(mqkit_amqp: AMQPServer) -> None:
    raw = _confirming(mqkit_amqp, "m")
    raw.send(_publish("m") * 50)  # one write: the server reads them at once, acks them together
    acks: list[Any] = []
    while not acks or acks[-1].delivery_tag < 50:
        acks.append(raw.expect(commands.Basic.Ack))
    assert [a.delivery_tag for a in acks] == sorted({a.delivery_tag for a in acks})
    assert len(acks) < 50
    assert any(a.multiple for a in acks)
    # a nack is never folded into an ack: a refused publish is nacked on its own, in order
    raw.send_frame(
        commands.Queue.Declare(
            queue="full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        ),
        1,
    )
    raw.expect(commands.Queue.DeclareOk)
    raw.send(_publish("full") * 3)
    first = raw.expect(commands.Basic.Ack)
    assert (first.delivery_tag, first.multiple) == (51, False)
    nacks = [raw.expect(commands.Basic.Nack) for _ in range(2)]
    assert [(n.delivery_tag, n.multiple) for n in nacks] == [(52, False), (53, False)]


def test_pika_confirm_delivery_and_mandatory(mqkit_amqp: AMQPServer) -> None:
    conn = connect(mqkit_amqp)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"ok", mandatory=True)
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("amq.direct", "nobody", b"lost", mandatory=True)
    conn.close()


def test_tx_commit_delivers_and_rollback_discards(mqkit_amqp: AMQPServer) -> None:
    conn = connect(mqkit_amqp)
    ch = conn.channel()
    ch.queue_declare("t")
    ch.tx_select()
    ch.basic_publish("", "t", b"1")
    ch.basic_publish("", "t", b"2")
    assert ch.queue_declare("t", passive=True).method.message_count == 0
    ch.tx_commit()
    assert ch.queue_declare("t", passive=True).method.message_count == 2
    ch.basic_publish("", "t", b"3")
    ch.tx_rollback()
    assert ch.queue_declare("t", passive=True).method.message_count == 2
    conn.close()


def test_acks_in_a_transaction_apply_at_commit(mqkit_amqp: AMQPServer) -> None:
    conn = connect(mqkit_amqp)
    ch = conn.channel()
    ch.queue_declare("t")
    ch.basic_publish("", "t", b"1")
    ch.tx_select()
    method, _, _ = ch.basic_get("t")
    ch.basic_ack(method.delivery_tag)
    ch.tx_rollback()
    ch.close()  # the ack was rolled back: the message comes back
    ch = conn.channel()
    method, _, body = ch.basic_get("t", auto_ack=True)
    assert body == b"1" and method.redelivered
    conn.close()


def test_tx_on_mqkit_transactions(amqp_server_factory: Callable[..., AMQPServer]) -> None:
    server = amqp_server_factory(enable_transactions=True)
    sub = server.broker.subscribe("orders.eu")
    conn = connect(server)
    ch = conn.channel()
    ch.queue_declare("t")
    ch.tx_select()
    ch.basic_publish("", "t", b"q")
    ch.basic_publish("amq.topic", "orders.eu", b"topic")
    assert sub.stats().queue_len == 0
    ch.tx_commit()
    assert sub.get(timeout=5).data == b"topic"
    assert ch.queue_declare("t", passive=True).method.message_count == 1
    assert server.broker.metrics().total_published >= 2
    conn.close()


def test_confirm_and_tx_do_not_mix(mqkit_amqp: AMQPServer) -> None:
    conn = connect(mqkit_amqp)
    ch = conn.channel()
    ch.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.confirm_delivery()
    assert info.value.reply_code == 406
    conn.close()
