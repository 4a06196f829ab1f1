"""A slow consumer never holds up other consumers or in-process publishers."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pika
from pamqp import commands

import mqkit

from .conftest import AMQPServer
from .helpers import TIMEOUT, Raw, connect

BODY = b"x" * 10_000


def test_a_consumer_that_never_reads_holds_up_nobody(
    amqp_server_factory: Callable[..., AMQPServer],
) -> None:
    server = amqp_server_factory({"queue_max_length": 500})
    # A no-ack consumer on "slow" that never reads its socket: the server's send buffer fills.
    stuck = Raw(server)
    stuck.handshake()
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.send_frame(commands.Queue.Declare(queue="slow"), 1)
    stuck.expect(commands.Queue.DeclareOk)
    stuck.send_frame(
        commands.Queue.Bind(queue="slow", exchange="amq.topic", routing_key="load.#"), 1
    )
    stuck.expect(commands.Queue.BindOk)
    stuck.send_frame(commands.Basic.Consume(queue="slow", no_ack=True), 1)
    stuck.expect(commands.Basic.ConsumeOk)

    conn = connect(server)
    ch = conn.channel()
    ch.queue_declare("fast")
    ch.queue_bind("fast", "amq.topic", "load.#")
    # In-process publishers never wait: 3000 x 10 kB (30 MB) into both queues.
    for i in range(3000):
        server.broker.publish("load.data", mqkit.Message(f"m{i}", BODY))
    deliveries = ch.consume("fast", auto_ack=True, inactivity_timeout=TIMEOUT)
    for got, (method, _, body) in enumerate(deliveries, 1):
        assert method is not None, f"the fast consumer got {got - 1} messages, then nothing"
        assert body == BODY
        if got == 500:  # what the fast queue kept of the burst ([amqp] queue_max_length)
            break
    ch.cancel()
    # The stuck consumer's queue stayed bounded: its buffer dropped its head.
    slow = ch.queue_declare("slow", passive=True).method.message_count
    assert slow <= 500
    conn.close()


def test_prefetch_keeps_a_slow_acker_from_taking_everything(mqkit_amqp: AMQPServer) -> None:
    slow = connect(mqkit_amqp)
    fast = connect(mqkit_amqp)
    sch, fch = slow.channel(), fast.channel()
    sch.queue_declare("shared")
    sch.basic_qos(prefetch_count=1)
    fch.basic_qos(prefetch_count=10)
    held: list[int] = []
    sch.basic_consume("shared", lambda c, m, p, b: held.append(m.delivery_tag))
    while not held:  # the slow consumer has its one message and never acks it
        sch.basic_publish("", "shared", b"first")
        slow.process_data_events(time_limit=TIMEOUT)
    for i in range(50):
        fch.basic_publish("", "shared", str(i).encode(), pika.BasicProperties())
    for got, (method, _, _) in enumerate(fch.consume("shared", inactivity_timeout=TIMEOUT), 1):
        assert method is not None
        fch.basic_ack(method.delivery_tag)
        if got == 50:
            break
    assert held == [1]
    slow.close()
    fast.close()
