"""Publisher confirms and tx.select/commit/rollback."""

from __future__ import annotations

from collections.abc import Callable

import pika
import pika.exceptions
import pytest
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

from .conftest import AMQPServer
from .helpers import Raw, connect


def test_confirms_ack_each_publish_in_order(mqkit_amqp: AMQPServer) -> None:
    raw = Raw(mqkit_amqp)
    raw.handshake()
    raw.send_frame(commands.Confirm.Select(), 1)
    raw.expect(commands.Confirm.SelectOk)
    raw.send_frame(commands.Queue.Declare(queue="c"), 1)
    raw.expect(commands.Queue.DeclareOk)
    for routing_key in ("c", "c", "unroutable"):
        raw.send(
            pframe.marshal(commands.Basic.Publish(routing_key=routing_key), 1)
            + pframe.marshal(pheader.ContentHeader(0, 0, commands.Basic.Properties()), 1)
        )
    tags = [raw.expect(commands.Basic.Ack).delivery_tag for _ in range(3)]
    assert tags == [1, 2, 3]  # an unroutable message is confirmed too, as by RabbitMQ


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
