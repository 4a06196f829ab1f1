"""Queue arguments on mqkit's features: TTL, max length and overflow, dead letters, priority."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from mqkit import Message

from .conftest import AMQPServer
from .helpers import TIMEOUT, bodies, connect


def wait_for_dead_letter(
    conn: pika.BlockingConnection, ch: BlockingChannel, queue: str
) -> tuple[pika.BasicProperties, bytes]:
    """The first message to reach ``queue`` (a consumer with a timeout)."""
    for method, props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=TIMEOUT):
        assert method is not None, f"nothing reached {queue}"
        ch.cancel()
        return props, body
    raise AssertionError("unreachable")


def test_max_length_drops_the_head(ch: BlockingChannel) -> None:
    ch.queue_declare("short", arguments={"x-max-length": 2})
    for body in (b"1", b"2", b"3"):
        ch.basic_publish("", "short", body)
    assert bodies(ch, "short") == [b"2", b"3"]


def test_reject_publish_refuses_and_nacks_with_confirms(ch: BlockingChannel) -> None:
    ch.queue_declare("capped", arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", "capped", b"1")
    ch.basic_publish("", "capped", b"2")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", "capped", b"3")
    assert bodies(ch, "capped") == [b"1", b"2"]


def test_dropped_heads_go_to_the_dead_letter_exchange(
    conn: pika.BlockingConnection, ch: BlockingChannel
) -> None:
    ch.queue_declare("dlq")
    ch.queue_declare(
        "src",
        arguments={
            "x-max-length": 1,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq",
        },
    )
    ch.basic_publish("", "src", b"old")
    ch.basic_publish("", "src", b"new")
    props, body = wait_for_dead_letter(conn, ch, "dlq")
    assert body == b"old"
    assert props.headers["x-first-death-reason"] == "maxlen"
    assert bodies(ch, "src") == [b"new"]


def test_rejected_messages_are_dead_lettered(
    conn: pika.BlockingConnection, ch: BlockingChannel
) -> None:
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("work", arguments={"x-dead-letter-exchange": "dlx"})
    ch.basic_publish("", "work", b"bad")
    method, _, _ = ch.basic_get("work")
    ch.basic_reject(method.delivery_tag, requeue=False)
    props, body = wait_for_dead_letter(conn, ch, "dead")
    assert body == b"bad"
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == "work"


def test_message_ttl_expires_into_the_dead_letter_exchange(
    conn: pika.BlockingConnection, ch: BlockingChannel
) -> None:
    ch.queue_declare("expired")
    ch.queue_declare(
        "ttl",
        arguments={
            "x-message-ttl": 100,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "expired",
        },
    )
    ch.basic_publish("", "ttl", b"stale")
    props, body = wait_for_dead_letter(conn, ch, "expired")
    assert body == b"stale"
    assert props.headers["x-first-death-reason"] == "expired"
    assert bodies(ch, "ttl") == []


def test_per_message_expiration(conn: pika.BlockingConnection, ch: BlockingChannel) -> None:
    ch.queue_declare("late")
    ch.queue_declare(
        "exp",
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "late"},
    )
    ch.basic_publish("", "exp", b"short", pika.BasicProperties(expiration="50"))
    ch.basic_publish("", "exp", b"long", pika.BasicProperties(expiration="600000"))
    _, body = wait_for_dead_letter(conn, ch, "late")
    assert body == b"short"
    assert bodies(ch, "exp") == [b"long"]


def test_max_priority_orders_by_priority(ch: BlockingChannel) -> None:
    ch.queue_declare("prio", arguments={"x-max-priority": 10})
    for body, priority in ((b"low", 1), (b"none", None), (b"high", 9), (b"over", 200)):
        ch.basic_publish("", "prio", body, pika.BasicProperties(priority=priority))
    assert bodies(ch, "prio") == [b"over", b"high", b"low", b"none"]  # 200 counts as 10


def test_without_max_priority_the_queue_stays_fifo(ch: BlockingChannel) -> None:
    ch.queue_declare("fifo")
    for body, priority in ((b"a", 1), (b"b", 9), (b"c", 5)):
        ch.basic_publish("", "fifo", body, pika.BasicProperties(priority=priority))
    assert bodies(ch, "fifo") == [b"a", b"b", b"c"]


def test_max_length_bytes_holds_for_a_transaction_and_the_amq_topic_bridge(
    ch: BlockingChannel,
) -> None:
    ch.queue_declare("bytes-tx", arguments={"x-max-length-bytes": 10})
    ch.tx_select()
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", "bytes-tx", body)
    ch.tx_commit()
    assert bodies(ch, "bytes-tx") == [b"bbbb", b"cccc"]
    ch.tx_commit()  # bodies' gets, acked on the transaction
    ch.queue_declare("bytes-topic", arguments={"x-max-length-bytes": 10})
    ch.queue_bind("bytes-topic", "amq.topic", "bytes.*")
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("amq.topic", "bytes.x", body)
    ch.tx_commit()
    got: list[bytes] = []
    for method, _props, body in ch.consume("bytes-topic", inactivity_timeout=TIMEOUT):
        assert method is not None, f"only {got} reached bytes-topic"
        got.append(body)
        if body == b"cccc":
            break
    ch.cancel()
    assert got == [b"bbbb", b"cccc"]


def test_max_length_bytes_counts_ready_messages_not_unacknowledged_ones(
    conn: pika.BlockingConnection, ch: BlockingChannel
) -> None:
    ch.queue_declare("bytes-ready", arguments={"x-max-length-bytes": 10})
    ch.basic_qos(prefetch_count=1)
    ch.confirm_delivery()
    got: list[tuple[int, bytes]] = []
    ch.basic_consume("bytes-ready", lambda _c, m, _p, b: got.append((m.delivery_tag, b)))
    ch.basic_publish("", "bytes-ready", b"first!")
    for _ in range(int(TIMEOUT / 0.05)):
        if got:
            break
        conn.process_data_events(time_limit=0.05)
    assert [b for _, b in got] == [b"first!"]
    # the consumer is at its prefetch: these wait, 10 bytes at most (first! is not counted)
    for body in (b"second", b"third!", b"fourth"):
        ch.basic_publish("", "bytes-ready", body)
    ch.basic_ack(got[0][0])
    for _ in range(int(TIMEOUT / 0.05)):
        if len(got) == 2:
            break
        conn.process_data_events(time_limit=0.05)
    assert [b for _, b in got] == [b"first!", b"fourth"]
    ch.basic_ack(got[1][0])
    assert ch.queue_declare("bytes-ready", passive=True).method.message_count == 0


def test_queue_arguments_are_checked(
    amqp_server_factory: Callable[..., AMQPServer],
) -> None:
    server = amqp_server_factory()
    conn = connect(server)
    try:
        for args in (
            {"x-max-length": -1},
            {"x-message-ttl": "soon"},
            {"x-max-priority": 256},
            {"x-dead-letter-routing-key": "k"},
            {"x-max-length-bytes": -1},
            {"x-max-length-bytes": "1000"},
            {"x-single-active-consumer": True},
            {"x-queue-type": "quorum"},
        ):
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch.queue_declare("checked", arguments=args)
            assert info.value.reply_code == 406, args
    finally:
        conn.close()


def test_x_expires_deletes_an_unused_queue(ch: BlockingChannel, mqkit_amqp: AMQPServer) -> None:
    ch.queue_declare("kept", arguments={"x-expires": 100})
    tag = ch.basic_consume("kept", lambda *a: None)  # in use: it stays
    ch.queue_declare("brief", arguments={"x-expires": 100})
    gone = _wait_until_gone(mqkit_amqp, "brief")
    assert gone
    assert ch.queue_declare("kept", passive=True).method.consumer_count == 1
    ch.basic_cancel(tag)
    assert _wait_until_gone(mqkit_amqp, "kept")


def _wait_until_gone(server: AMQPServer, name: str) -> bool:
    """Whether queue ``name`` is deleted within the timeout (a passive declare each round)."""
    import threading

    deadline = threading.Event()
    timer = threading.Timer(TIMEOUT, deadline.set)
    timer.start()
    try:
        conn = connect(server)
        try:
            while not deadline.is_set():
                ch = conn.channel()
                try:
                    ch.queue_declare(name, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    return exc.reply_code == 404
                ch.close()  # a passive declare does not count as use: poll until it is gone
            return False
        finally:
            conn.close()
    finally:
        timer.cancel()


def first_delivery(ch: BlockingChannel, queue: str) -> tuple[Any, pika.BasicProperties, bytes]:
    """The first message a consumer on ``queue`` gets (acknowledged), with its method."""
    for method, props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=TIMEOUT):
        assert method is not None, f"nothing reached {queue}"
        ch.cancel()
        return method, props, body
    raise AssertionError("unreachable")


def test_dead_letters_carry_x_death_and_come_through_the_dead_letter_exchange(
    conn: pika.BlockingConnection, ch: BlockingChannel
) -> None:
    ch.exchange_declare("dlx", "direct")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx", "work")
    ch.queue_declare("work", arguments={"x-dead-letter-exchange": "dlx"})
    ch.basic_publish("", "work", b"bad", pika.BasicProperties(headers={"n": 1}))
    for round_ in (1, 2):
        method, _, _ = ch.basic_get("work")
        ch.basic_nack(method.delivery_tag, requeue=False)
        method, props, body = first_delivery(ch, "dead")
        assert (body, method.exchange, method.routing_key) == (b"bad", "dlx", "work")
        death = props.headers["x-death"]
        assert len(death) == 1 and death[0]["count"] == round_
        assert death[0]["reason"] == "rejected" and death[0]["queue"] == "work"
        assert death[0]["exchange"] == "" and death[0]["routing-keys"] == ["work"]
        assert isinstance(death[0]["time"], datetime)
        assert props.headers["n"] == 1 and props.headers["x-first-death-exchange"] == ""
        # the client publishes it again, its headers kept: the same death is counted again
        ch.basic_publish("", "work", body, pika.BasicProperties(headers=props.headers))


def test_an_expired_message_takes_the_dead_letter_routing_key(
    conn: pika.BlockingConnection, ch: BlockingChannel
) -> None:
    ch.exchange_declare("dlx", "direct")
    ch.queue_declare("by-key")
    ch.queue_bind("by-key", "dlx", "rk")
    ch.queue_declare(
        "ttl", arguments={"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "rk"}
    )
    ch.basic_publish("", "ttl", b"short", pika.BasicProperties(expiration="20"))
    method, props, body = first_delivery(ch, "by-key")
    assert (body, method.exchange, method.routing_key, props.expiration) == (
        b"short",
        "dlx",
        "rk",
        None,
    )
    death = props.headers["x-death"][0]
    assert (death["reason"], death["original-expiration"]) == ("expired", "20")


def test_max_length_bytes_follows_requeues_purges_and_in_process_publishes(
    mqkit_amqp: AMQPServer, ch: BlockingChannel
) -> None:
    """The queue's ready bytes are a running total (not a walk): every path keeps it right."""
    ch.queue_declare("bytes-paths", arguments={"x-max-length-bytes": 10})
    ch.confirm_delivery()
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", "bytes-paths", body)  # keeps bbbb cccc (8)
    method, _, body = ch.basic_get("bytes-paths")  # bbbb out: unacknowledged, not ready (4)
    assert body == b"bbbb" and method is not None
    ch.basic_publish("", "bytes-paths", b"dd")  # 6
    ch.basic_nack(method.delivery_tag, requeue=True)  # bbbb back at the front: 10, full
    ch.basic_publish("", "bytes-paths", b"e")  # 11: the head (bbbb) goes, 7
    topic = next(t for t in mqkit_amqp.broker.topics() if t.endswith(":bytes-paths"))
    mqkit_amqp.broker.publish(topic, Message("in-process", b"fff"))  # 10: fits
    ch.basic_publish("", "bytes-paths", b"g")  # 11: cccc goes, 7
    assert bodies(ch, "bytes-paths") == [b"dd", b"e", b"fff", b"g"]
    for body in (b"hhhhh", b"iiiii"):
        ch.basic_publish("", "bytes-paths", body)
    ch.queue_purge("bytes-paths")  # 0
    ch.basic_publish("", "bytes-paths", b"j" * 10)  # exactly the bound
    assert bodies(ch, "bytes-paths") == [b"j" * 10]


def test_max_length_bytes_measures_what_a_publish_adds_not_the_whole_queue(
    mqkit_amqp: AMQPServer, ch: BlockingChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound's work per publish does not grow with the queue (it summed every body before)."""
    from mqkit.protocols.amqp import mapping, model

    measured: list[Message] = []

    def counting(message: Message) -> int:
        measured.append(message)
        return len(message.data) if isinstance(message.data, bytes) else 0

    monkeypatch.setattr(mapping, "body_size", counting)  # the queue's weigher
    monkeypatch.setattr(model, "body_size", counting)  # Queue.ready_bytes
    ch.queue_declare("bytes-deep", arguments={"x-max-length-bytes": 1 << 40})
    topic = next(t for t in mqkit_amqp.broker.topics() if t.endswith(":bytes-deep"))
    for i in range(5_000):
        mqkit_amqp.broker.publish(topic, Message(f"r{i}", b"x" * 8))
    ch.confirm_delivery()
    measured.clear()
    for _ in range(10):
        ch.basic_publish("", "bytes-deep", b"y" * 8)
    assert len(measured) <= 10 * 3  # a few measures per publish, not 5,000
    assert ch.queue_declare("bytes-deep", passive=True).method.message_count == 5_010
