"""paho-mqtt 2.x (MQTT 3.1.1 and 5) against the gateway, over real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from datetime import datetime

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.subscribeoptions import SubscribeOptions

import mqkit
from mqkit.protocols.mqtt import codec
from mqkit.protocols.mqtt.codec import Reason

from .helpers import TIMEOUT, Paho, Raw, Srv

Factory = Callable[..., Paho]
VERSIONS = pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])


def publish_props(**values: object) -> PahoProperties:
    props = PahoProperties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


@VERSIONS
def test_pub_sub_every_qos(srv: Srv, paho_factory: Factory, version: int) -> None:
    sub = paho_factory(srv, "sub", version=version)
    assert sub.subscribe("t/#", 2) is not None
    pub = paho_factory(srv, "pub", version=version)
    for qos in (0, 1, 2):
        pub.publish("t/x", f"qos {qos}", qos)
    got = sorted((m.payload, m.qos) for m in (sub.get(), sub.get(), sub.get()))
    assert got == [(b"qos 0", 0), (b"qos 1", 1), (b"qos 2", 2)]


@VERSIONS
def test_in_process_and_mqtt_meet_on_the_same_topics(
    srv: Srv, paho_factory: Factory, version: int
) -> None:
    inproc = srv.broker.subscribe("sensors/kitchen")
    client = paho_factory(srv, "c1", version=version)
    client.subscribe("sensors/+", 1)
    client.publish("sensors/kitchen", b"21.5", 1)
    message = inproc.get(timeout=TIMEOUT)
    assert message.data == b"21.5"
    assert message.topic == "sensors/kitchen"
    assert message.meta["mqtt.qos"] == "1"
    assert message.meta["mqtt.client_id"] == "c1"
    assert client.get().payload == b"21.5"
    srv.broker.publish("sensors/hall", mqkit.Message("m1", "text"))
    srv.broker.publish("sensors/hall", mqkit.Message("m2", b"\x00\x01"))
    srv.broker.publish("sensors/hall", mqkit.Message("m3", {"t": 20, "ok": True}))
    got = [client.get() for _ in range(3)]
    assert [m.payload for m in got] == [b"text", b"\x00\x01", b'{"t":20,"ok":true}']
    assert all(m.qos == 1 for m in got)  # in-process messages are QoS 1 unless meta says so
    if version == 5:
        assert got[2].properties.ContentType == "application/json"
        assert got[0].properties.PayloadFormatIndicator == 1


@VERSIONS
def test_wildcards_and_dollar_topics(srv: Srv, paho_factory: Factory, version: int) -> None:
    sub = paho_factory(srv, "sub", version=version)
    sub.subscribe("#", 0)
    sub.subscribe("$SYS/#", 0)
    sub.subscribe("a/+/c", 0)
    pub = paho_factory(srv, "pub", version=version)
    pub.publish("$SYS/load", b"1", 1)
    pub.publish("a/b/c", b"2", 1)
    got = [sub.get() for _ in range(2)]
    # "$SYS/load" only through "$SYS/#"; "a/b/c" once though both "#" and "a/+/c" match.
    assert sorted((m.topic, m.payload) for m in got) == [("$SYS/load", b"1"), ("a/b/c", b"2")]
    pub.publish("x", b"3", 1)
    assert sub.get().payload == b"3"
    assert sub.messages.empty()


@VERSIONS
def test_retained_messages(srv: Srv, paho_factory: Factory, version: int) -> None:
    pub = paho_factory(srv, "pub", version=version)
    pub.publish("r/a", b"kept a", 1, retain=True)
    pub.publish("r/b", b"kept b", 1, retain=True)
    pub.publish("r/b", b"", 1, retain=True)  # clears r/b
    sub = paho_factory(srv, "sub", version=version)
    sub.subscribe("r/#", 1)
    first = sub.get()
    assert (first.topic, first.payload, first.retain) == ("r/a", b"kept a", True)
    pub.publish("r/a", b"live", 1, retain=True)
    live = sub.get()
    assert (live.payload, live.retain) == (b"live", False)
    sub2 = paho_factory(srv, "sub2", version=version)
    sub2.subscribe("r/+", 0)
    again = sub2.get()
    assert (again.payload, again.retain, again.qos) == (b"live", True, 0)
    assert sub2.messages.empty()


@VERSIONS
def test_will_on_abnormal_close_not_on_disconnect(
    srv: Srv, paho_factory: Factory, version: int
) -> None:
    sub = paho_factory(srv, "sub", version=version)
    sub.subscribe("wills/#", 1)
    will = codec.Will(topic="wills/gone", payload=b"bye", qos=1)
    with Raw(srv, version) as polite:
        polite.connect("polite", will=will)
        polite.send(codec.Disconnect().encode(version))
        assert polite.closed()
    with Raw(srv, version) as rude:
        rude.connect("rude", will=codec.Will(topic="wills/rude", payload=b"dead", qos=1))
    message = sub.get()
    assert (message.topic, message.payload) == ("wills/rude", b"dead")
    assert sub.messages.empty()


def test_will_with_disconnect_0x04_and_retain(srv: Srv, paho_factory: Factory) -> None:
    with Raw(srv) as c:
        c.connect("w", will=codec.Will(topic="wills/kept", payload=b"w", retain=True))
        c.send(codec.Disconnect(reason_code=0x04).encode())
        assert c.closed()
    sub = paho_factory(srv, "late", version=5)
    sub.subscribe("wills/#", 0)
    got = sub.get()
    assert (got.topic, got.payload, got.retain) == ("wills/kept", b"w", True)


def test_will_delay_cancelled_by_reconnect(srv: Srv, paho_factory: Factory) -> None:
    inproc = srv.broker.subscribe("wills/delayed")
    will = codec.Will(
        topic="wills/delayed",
        payload=b"late",
        properties=codec.Properties(will_delay_interval=60),
    )
    props = codec.Properties(session_expiry_interval=120)
    with Raw(srv) as c:
        c.connect("d", will=will, clean_start=False, properties=props)
    with Raw(srv) as c:
        ack = c.connect("d", clean_start=False, properties=props)
        assert ack.session_present
        c.send(codec.Disconnect(properties=codec.Properties(session_expiry_interval=0)).encode())
        assert c.closed()
    with pytest.raises(TimeoutError):
        inproc.get(timeout=0.5)


def test_close_publishes_wills_in_process(server_factory: Callable[..., Srv]) -> None:
    srv = server_factory()
    inproc = srv.broker.subscribe("wills/x")
    c = Raw(srv)
    c.connect("w", will=codec.Will(topic="wills/x", payload=b"server went"))
    try:
        srv.broker.close()
        assert inproc.get(timeout=TIMEOUT).data == b"server went"
        assert c.raw_packet() == b"\xe0\x01\x8b"  # DISCONNECT: server shutting down
        assert c.closed()
    finally:
        c.close()


def test_close_joins_the_gateway_thread_and_frees_the_port(
    server_factory: Callable[..., Srv], paho_factory: Factory
) -> None:
    before = set(threading.enumerate())
    srv = server_factory()
    client = paho_factory(srv, "c", version=5, reconnect=False)  # starts the auth workers too
    client.subscribe("x", 1)
    gateway = [t for t in set(threading.enumerate()) - before if t.name.startswith("mqkit-mqtt")]
    assert any(t.name == "mqkit-mqtt" for t in gateway)
    srv.broker.close()
    assert client.disconnected.wait(TIMEOUT)
    assert client.disconnect_reason == Reason.SERVER_SHUTTING_DOWN
    assert not [t.name for t in gateway if t.is_alive()]  # the loop thread and its workers
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((srv.host, srv.port), timeout=TIMEOUT).close()


def test_persistent_session_v311_queues_qos1(srv: Srv, paho_factory: Factory) -> None:
    sub = paho_factory(srv, "keeper", version=4, clean=False)
    sub.subscribe("q/#", 1)
    sub.disconnect()
    pub = paho_factory(srv, "pub", version=4)
    for i in range(5):
        pub.publish("q/x", f"m{i}", 1)
    back = paho_factory(srv, "keeper", version=4, clean=False)
    assert back.connack is not None and back.connack[0].session_present
    assert [back.get().payload for _ in range(5)] == [f"m{i}".encode() for i in range(5)]


def test_clean_session_forgets(srv: Srv, paho_factory: Factory) -> None:
    sub = paho_factory(srv, "forget", version=4, clean=False)
    sub.subscribe("q/#", 1)
    sub.close()
    fresh = paho_factory(srv, "forget", version=4, clean=True)
    assert not fresh.connack[0].session_present  # type: ignore[index]
    pub = paho_factory(srv, "pub", version=4)
    pub.publish("q/x", b"nobody", 1)
    with pytest.raises(queue.Empty):
        fresh.get(timeout=0.3)


def test_v5_session_expiry(srv: Srv, paho_factory: Factory) -> None:
    props = PahoProperties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 1
    sub = paho_factory(srv, "exp", version=5, clean=False, properties=props)
    sub.subscribe("e/#", 1)
    sub.close()
    server = srv.plugin.server
    assert "exp" in server.sessions
    gone = Raw(srv)  # a throwaway connection, just to have a socket timeout to wait on
    try:
        # The session ends 1 s after the disconnect: wait for that, not for a fixed time.
        import time

        deadline = time.monotonic() + TIMEOUT
        while "exp" in server.sessions and time.monotonic() < deadline:
            gone.sock.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                gone.sock.recv(1)
        assert "exp" not in server.sessions
    finally:
        gone.close()
    again = paho_factory(srv, "exp", version=5, clean=False)
    assert not again.connack[0].session_present  # type: ignore[index]


def test_v5_properties_map_to_meta_and_back(srv: Srv, paho_factory: Factory) -> None:
    inproc = srv.broker.subscribe("props/x")
    sub = paho_factory(srv, "sub", version=5)
    sub.subscribe("props/#", 1)
    pub = paho_factory(srv, "pub", version=5)
    props = publish_props(
        UserProperty=[("k", "v"), ("unit", "C")],
        MessageExpiryInterval=60,
        ContentType="text/plain",
        ResponseTopic="props/reply",
        CorrelationData=b"\x01\x02",
        PayloadFormatIndicator=1,
    )
    pub.publish("props/x", b"hi", 1, properties=props)
    message = inproc.get(timeout=TIMEOUT)
    assert isinstance(message, mqkit.TTLMessage)
    assert 50 < (message.expires_at - datetime.now(message.expires_at.tzinfo)).total_seconds() <= 60
    assert message.meta["k"] == "v" and message.meta["unit"] == "C"
    assert message.meta["mqtt.content_type"] == "text/plain"
    assert message.meta["mqtt.response_topic"] == "props/reply"
    assert message.meta["mqtt.correlation_data"] == "0102"
    got = sub.get()
    p = got.properties
    assert p.UserProperty == [("k", "v"), ("unit", "C")]
    assert 0 < p.MessageExpiryInterval <= 60
    assert (p.ContentType, p.ResponseTopic, p.CorrelationData) == (
        "text/plain",
        "props/reply",
        b"\x01\x02",
    )
    # In-process meta becomes user properties; an expiry becomes the interval left.
    srv.broker.publish(
        "props/y",
        mqkit.TTLMessage(
            "t1",
            b"x",
            meta={"trace": "abc", "mqtt.qos": "0"},
            expires_at=datetime.now(message.expires_at.tzinfo).replace(microsecond=0)
            + (message.expires_at - message.expires_at.replace(microsecond=0))
            + (message.expires_at - datetime.now(message.expires_at.tzinfo)),
        ),
    )
    back = sub.get()
    assert back.qos == 0
    assert back.properties.UserProperty == [("trace", "abc")]
    assert 0 < back.properties.MessageExpiryInterval <= 60


def test_expired_messages_are_not_delivered(srv: Srv, paho_factory: Factory) -> None:
    sub = paho_factory(srv, "sub", version=5)
    sub.subscribe("exp/#", 1)
    now = datetime.now().astimezone()
    with pytest.raises(mqkit.MessageExpiredError):
        srv.broker.publish("exp/x", mqkit.TTLMessage("gone", b"x", expires_at=now))
    srv.broker.publish("exp/x", mqkit.Message("kept", b"y"))
    assert sub.get().payload == b"y"


def test_topic_alias_from_paho(srv: Srv, paho_factory: Factory) -> None:
    sub = paho_factory(srv, "sub", version=5)
    sub.subscribe("alias/#", 0)
    pub = paho_factory(srv, "pub", version=5)
    pub.publish("alias/long/topic/name", b"1", 1, properties=publish_props(TopicAlias=2))
    pub.publish("", b"2", 1, properties=publish_props(TopicAlias=2))
    assert [(m.topic, m.payload) for m in (sub.get(), sub.get())] == [
        ("alias/long/topic/name", b"1"),
        ("alias/long/topic/name", b"2"),
    ]


def test_client_maximum_packet_size_is_respected(srv: Srv, paho_factory: Factory) -> None:
    props = PahoProperties(PacketTypes.CONNECT)
    props.MaximumPacketSize = 100
    sub = paho_factory(srv, "small", version=5, properties=props)
    sub.subscribe("size/#", 1)
    srv.broker.publish("size/x", mqkit.Message("big", b"x" * 500))
    srv.broker.publish("size/x", mqkit.Message("small", b"ok"))
    assert sub.get().payload == b"ok"


def test_receive_maximum_limits_inflight(srv: Srv) -> None:
    with Raw(srv) as c:
        c.connect("rm1", properties=codec.Properties(receive_maximum=1))
        req = codec.SubscriptionRequest(topic_filter="rm/#", qos=1)
        c.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode())
        assert isinstance(c.packet(), codec.SubAck)
        for i in range(3):
            srv.broker.publish("rm/x", mqkit.Message(f"m{i}", f"{i}"))
        first = c.packet()
        assert isinstance(first, codec.Publish) and first.payload == b"0"
        c.send(b"\xc0\x00")
        assert c.raw_packet() == b"\xd0\x00"  # nothing else was sent before the PUBACK
        c.send(codec.PubAck(packet_id=first.packet_id).encode())
        second = c.packet()
        assert isinstance(second, codec.Publish) and second.payload == b"1"


def test_unacked_messages_are_resent_on_reconnect(srv: Srv) -> None:
    props = codec.Properties(session_expiry_interval=60)
    with Raw(srv) as c:
        c.connect("resend", clean_start=False, properties=props)
        req = codec.SubscriptionRequest(topic_filter="rs", qos=2)
        c.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode())
        c.packet()
        srv.broker.publish("rs", mqkit.Message("a", b"A", meta={"mqtt.qos": "2"}))
        got = c.packet()
        assert isinstance(got, codec.Publish) and not got.dup
    with Raw(srv) as c:
        assert c.connect("resend", clean_start=False, properties=props).session_present
        again = c.packet()
        assert isinstance(again, codec.Publish)
        assert (again.payload, again.dup, again.packet_id) == (b"A", True, got.packet_id)


def test_shared_subscription_competing_consumers(srv: Srv, paho_factory: Factory) -> None:
    a = paho_factory(srv, "a", version=5)
    b = paho_factory(srv, "b", version=5)
    a.subscribe("$share/workers/jobs/+", 1)
    b.subscribe("$share/workers/jobs/+", 1)
    for i in range(20):
        srv.broker.publish("jobs/x", mqkit.Message(f"j{i}", f"{i}"))
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    while len(got_a) + len(got_b) < 20:
        for client, into in ((a, got_a), (b, got_b)):
            into += [m.payload for m in client.drain()]
        if len(got_a) + len(got_b) < 20:
            with contextlib.suppress(queue.Empty):
                got_a.append(a.get(timeout=0.05).payload)
    assert sorted(got_a + got_b) == sorted(f"{i}".encode() for i in range(20))
    assert got_a and got_b


def test_overlapping_subscriptions_deliver_once(srv: Srv) -> None:
    with Raw(srv) as c:
        c.connect("ov")
        for pid, (f, sid) in enumerate((("ov/a", 21), ("ov/#", 42)), 1):
            req = codec.SubscriptionRequest(topic_filter=f, qos=1)
            props = codec.Properties(subscription_identifiers=(sid,))
            c.send(codec.Subscribe(packet_id=pid, subscriptions=(req,), properties=props).encode())
            c.packet()
        srv.broker.publish("ov/a", mqkit.Message("x", b"x", meta={"mqtt.qos": "2"}))
        got = c.packet()
        assert isinstance(got, codec.Publish)
        assert got.qos == 1
        assert sorted(got.properties.subscription_identifiers) == [21, 42]
        c.send(codec.PubAck(packet_id=got.packet_id).encode())
        c.send(b"\xc0\x00")
        assert c.raw_packet() == b"\xd0\x00"


def test_no_local(srv: Srv, paho_factory: Factory) -> None:
    a = paho_factory(srv, "a", version=5)
    a.subscribe("nl/#", 1, options=SubscribeOptions(qos=1, noLocal=True))
    b = paho_factory(srv, "b", version=5)
    a.publish("nl/x", b"mine", 1)
    b.publish("nl/x", b"theirs", 1)
    assert a.get().payload == b"theirs"
    assert a.messages.empty()


@VERSIONS
def test_unsubscribe(srv: Srv, paho_factory: Factory, version: int) -> None:
    sub = paho_factory(srv, "sub", version=version)
    sub.subscribe("u/a", 1)
    sub.subscribe("u/b", 1)
    result, _ = sub.client.unsubscribe("u/a")
    assert result == 0
    pub = paho_factory(srv, "pub", version=version)
    pub.publish("u/a", b"gone", 1)
    pub.publish("u/b", b"here", 1)
    assert sub.get().payload == b"here"
    assert sub.messages.empty()
