"""Slow MQTT clients meet their subscription's backpressure policy and hold up nobody else."""

from __future__ import annotations

import threading
from collections.abc import Callable

import mqkit
from mqkit.protocols.mqtt import codec
from mqkit.protocols.mqtt.codec import Reason

from .helpers import TIMEOUT, Paho, Raw, Srv

ServerFactory = Callable[..., Srv]


def subscribe_raw(c: Raw, topic_filter: str, qos: int = 1) -> None:
    req = codec.SubscriptionRequest(topic_filter=topic_filter, qos=qos)
    c.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode(c.version))
    assert isinstance(c.packet(), codec.SubAck)


def test_slow_client_drops_oldest_and_blocks_nobody(
    server_factory: ServerFactory, paho_factory: Callable[..., Paho]
) -> None:
    srv = server_factory(max_queued_messages=100)
    slow = Raw(srv)
    try:
        slow.connect("slow", properties=codec.Properties(receive_maximum=5))
        subscribe_raw(slow, "flood")  # ... and never reads again
        fast = paho_factory(srv, "fast", version=5)
        fast.subscribe("flood", 1)
        payload = b"x" * 1024
        for batch in range(60):  # 3 MB in all: far more than the slow client's buffers
            for i in range(50):  # the in-process publisher never waits
                srv.broker.publish("flood", mqkit.Message(f"m{batch}-{i}", payload))
            # The fast client gets every message while the slow one reads nothing.
            assert all(fast.get().payload == payload for _ in range(50))
        # One broker subscription serves both clients; the slow client's own queue stays
        # within its bound, and what it lost is counted as dropped.
        assert len(srv.broker.subscriptions("mqtt:flood")) == 1
        slow_sub = srv.plugin.server.sessions["slow"].subs["flood"]
        assert len(slow_sub.queue) <= 100
        assert srv.broker.metrics().topics["flood"].dropped > 0
    finally:
        slow.close()


def test_close_subscriber_policy_disconnects_the_slow_client(
    server_factory: ServerFactory,
) -> None:
    srv = server_factory(max_queued_messages=5, backpressure="close_subscriber")
    slow = Raw(srv)
    try:
        slow.connect("slow", properties=codec.Properties(receive_maximum=1))
        subscribe_raw(slow, "flood")
        for i in range(2000):
            srv.broker.publish("flood", mqkit.Message(f"m{i}", b"y" * 1024))
        # Read what was sent: at most the one PUBLISH its Receive Maximum allows (none if the
        # buffer overflowed first), then DISCONNECT 0x97 (quota exceeded), then EOF.
        got: list[codec.Packet] = []
        while not (got and isinstance(got[-1], codec.Disconnect)):
            got.append(slow.packet())
        assert [type(p) for p in got] in ([codec.Disconnect], [codec.Publish, codec.Disconnect])
        assert isinstance(got[-1], codec.Disconnect)
        assert got[-1].reason_code == Reason.QUOTA_EXCEEDED == 0x97
        assert slow.closed()
        assert "slow" not in srv.plugin.server.sessions
    finally:
        slow.close()


def test_blocking_in_process_subscriber_stalls_no_other_client(srv: Srv) -> None:
    stuck = srv.broker.subscribe(
        "blocked",
        mqkit.SubOptions(
            buffer_size=1, policy=mqkit.Backpressure.BLOCK_WITH_TIMEOUT, block_timeout=0.05
        ),
    )
    order: list[str] = []
    lock = threading.Lock()
    with Raw(srv) as a, Raw(srv) as b:
        a.connect("a")
        b.connect("b")
        subscribe_raw(b, "free")
        for pid in range(1, 21):  # each of these waits 50 ms for the stuck subscriber
            a.send(codec.Publish(topic="blocked", payload=b"z", qos=1, packet_id=pid).encode())

        def read_a() -> None:
            for _ in range(20):
                assert isinstance(a.packet(), codec.PubAck)
            with lock:
                order.append("a done")

        reader = threading.Thread(target=read_a)
        reader.start()
        b.send(b"\xc0\x00")
        assert b.raw_packet() == b"\xd0\x00"
        b.send(codec.Publish(topic="free", payload=b"ok", qos=1, packet_id=1).encode())
        got = {type(b.packet()), type(b.packet())}
        assert got == {codec.PubAck, codec.Publish}
        with lock:
            order.append("b done")
        reader.join(TIMEOUT)
        assert order == ["b done", "a done"]
    assert stuck.stats().received >= 1


def test_idle_clients_add_no_work_per_client_to_an_in_process_publish(
    server_factory: ServerFactory, paho_factory: Callable[..., Paho]
) -> None:
    """20 clients subscribed to ``#`` that never read: a publish costs what one client costs.

    Work is counted, not timed: each in-process publish enters one broker buffer (whatever the
    number of clients of a filter) and drops at most one message, while every client's queue
    stays full under its own bound.
    """
    srv = server_factory(max_queued_messages=10, max_inflight=1)
    broker = srv.broker
    idle = [Raw(srv, 4) for _ in range(20)]
    try:
        for i, c in enumerate(idle):
            c.connect(f"idle-{i}")
            subscribe_raw(c, "#")  # ... and never reads again

        def entered() -> int:
            return sum(s.stats().received for s in broker.subscriptions())

        def dropped() -> int:
            found = broker.metrics().topics.get("load/x")
            return 0 if found is None else found.dropped

        count = 500
        before, lost = entered(), dropped()
        for i in range(count):
            broker.publish("load/x", mqkit.Message(f"m{i}", b"z" * 64))
        assert entered() - before == count  # one buffer insert per publish, not one per client
        assert dropped() - lost <= count  # at most one drop per publish

        # A client that reads gets everything published after it subscribed, in order, while
        # the idle ones' queues stay within their bound.
        reader = paho_factory(srv, "reader", version=5)
        reader.subscribe("#", 1)
        for batch in range(20):
            for i in range(5):
                broker.publish("load/x", mqkit.Message(f"r{batch}-{i}", f"{batch}-{i}".encode()))
            assert [reader.get().payload for _ in range(5)] == [
                f"{batch}-{i}".encode() for i in range(5)
            ]
        sessions = srv.plugin.server.sessions
        assert all(len(sessions[f"idle-{i}"].subs["#"].queue) <= 10 for i in range(20))
        assert len(broker.subscriptions("mqtt:#")) == 1
    finally:
        for c in idle:
            c.close()


def test_close_subscriber_ends_only_the_slow_client_while_another_reads(
    server_factory: ServerFactory, paho_factory: Callable[..., Paho]
) -> None:
    srv = server_factory(max_queued_messages=5, backpressure="close_subscriber")
    slow = Raw(srv)
    try:
        slow.connect("slow", properties=codec.Properties(receive_maximum=1))
        subscribe_raw(slow, "flood")  # ... and never acknowledges
        fast = paho_factory(srv, "fast", version=5)
        fast.subscribe("flood", 1)
        for batch in range(10):
            for i in range(4):  # fewer than the bound at a time: the reader keeps up
                srv.broker.publish("flood", mqkit.Message(f"m{batch}-{i}", b"y"))
            assert [fast.get().payload for _ in range(4)] == [b"y"] * 4
        # The slow client's own queue overflowed: it alone was disconnected with 0x97.
        got: list[codec.Packet] = []
        while not (got and isinstance(got[-1], codec.Disconnect)):
            got.append(slow.packet())
        assert isinstance(got[-1], codec.Disconnect)
        assert got[-1].reason_code == Reason.QUOTA_EXCEEDED
        assert all(isinstance(p, codec.Publish) for p in got[:-1])
        srv.broker.publish("flood", mqkit.Message("after", b"after"))
        assert fast.get().payload == b"after"
    finally:
        slow.close()
