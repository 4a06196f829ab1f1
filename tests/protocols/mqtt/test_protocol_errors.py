"""Raw packets for each error case the specification defines, and the server's exact answer.

Each test also checks "and nothing else": another client on the same server keeps working, and
a client connected before the offender keeps its connection.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import mqkit
from mqkit.protocols.mqtt import codec
from mqkit.protocols.mqtt.codec import Reason

from .helpers import Paho, Raw, Srv

CONNECT_V5 = codec.Connect(client_id="c5", protocol_level=5).encode()
CONNECT_V4 = codec.Connect(client_id="c4", protocol_level=4).encode()


def still_serves(srv: Srv) -> None:
    """Another client can still publish and receive on the same server."""
    with Raw(srv) as a:
        assert a.connect("bystander").reason_code == 0
        a.send(
            codec.Subscribe(
                packet_id=1, subscriptions=(codec.SubscriptionRequest(topic_filter="ok"),)
            ).encode()
        )
        assert isinstance(a.packet(), codec.SubAck)
        a.send(codec.Publish(topic="ok", payload=b"fine").encode())
        got = a.packet()
        assert isinstance(got, codec.Publish) and got.payload == b"fine"


def test_bad_protocol_name_closes_silently(srv: Srv) -> None:
    with Raw(srv) as c:
        c.send(codec.Connect(client_id="x", protocol_name="MQTX", protocol_level=4).encode())
        assert c.closed()
    still_serves(srv)


@pytest.mark.parametrize(
    ("level", "answer"), [(6, b"\x20\x03\x00\x84\x00"), (2, b"\x20\x02\x00\x01")]
)
def test_unsupported_protocol_level(srv: Srv, level: int, answer: bytes) -> None:
    with Raw(srv) as c:
        c.send(codec.Connect(client_id="x", protocol_level=level).encode())
        assert c.raw_packet() == answer
        assert c.closed()
    still_serves(srv)


def test_connect_reserved_flag_v5_gets_connack_malformed(srv: Srv) -> None:
    raw = bytearray(CONNECT_V5)
    raw[9] |= 1  # connect flags: the reserved bit
    with Raw(srv) as c:
        c.send(bytes(raw))
        assert c.raw_packet() == b"\x20\x03\x00\x81\x00"
        assert c.closed()
    still_serves(srv)


def test_connect_reserved_flag_v311_closes(srv: Srv) -> None:
    raw = bytearray(CONNECT_V4)
    raw[9] |= 1
    with Raw(srv, 4) as c:
        c.send(bytes(raw))
        assert c.closed()


def test_first_packet_not_connect(srv: Srv) -> None:
    with Raw(srv) as c:
        c.send(b"\xc0\x00")
        assert c.closed()


def test_empty_client_id_without_clean_session_v311(srv: Srv) -> None:
    with Raw(srv, 4) as c:
        c.send(codec.Connect(client_id="", protocol_level=4, clean_start=False).encode())
        assert c.raw_packet() == b"\x20\x02\x00\x02"
        assert c.closed()


def test_empty_client_id_v5_is_assigned(srv: Srv) -> None:
    with Raw(srv) as c:
        ack = c.connect("")
        assert ack.reason_code == 0
        assert ack.properties.assigned_client_identifier


def connected(srv: Srv, version: int = 5) -> Raw:
    c = Raw(srv, version)
    assert c.connect(f"v{version}").reason_code == 0
    return c


def expect_disconnect(c: Raw, reason: int) -> None:
    got = c.packet()
    assert isinstance(got, codec.Disconnect), got
    assert got.reason_code == reason
    assert c.closed()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc0\x01\x00", Reason.MALFORMED_PACKET),  # PINGREQ with remaining length 1
        (b"\x82\x03\x00\x01\x00", Reason.PROTOCOL_ERROR),  # SUBSCRIBE without filters
        # A complete, valid SUBSCRIBE body under the fixed header flags 0000 (must be 0010).
        (b"\x80\x07\x00\x01\x00\x00\x01a\x00", Reason.MALFORMED_PACKET),
        (b"\xc1\x00", Reason.MALFORMED_PACKET),  # PINGREQ with a reserved flag set
        (b"\x40\x01\x00", Reason.MALFORMED_PACKET),  # PUBACK cut short
        (b"\x36\x06\x00\x01a\x00\x01\x00", Reason.MALFORMED_PACKET),  # QoS 3
        (b"\x30\x05\x00\x01+\x00\x00"[:7], Reason.TOPIC_NAME_INVALID),  # wildcard in topic
        (b"\x30\x03\x00\x00\x00", Reason.PROTOCOL_ERROR),  # no topic and no alias
        (b"\x10" + CONNECT_V5[1:], Reason.PROTOCOL_ERROR),  # a second CONNECT
        (b"\x30\xff\xff\xff\xff\x01", Reason.MALFORMED_PACKET),  # 5-byte remaining length
    ],
)
def test_violations_after_connect_v5(srv: Srv, data: bytes, reason: int) -> None:
    with connected(srv) as c:
        c.send(data)
        expect_disconnect(c, reason)
    still_serves(srv)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc0\x01\x00",  # PINGREQ with remaining length 1
        b"\x82\x02\x00\x01",  # SUBSCRIBE without filters
        b"\x40\x01\x00",  # PUBACK cut short
        b"\x30\x05\x00\x01+\x00\x00"[:7],  # wildcard in topic
        b"\x80\x06\x00\x01\x00\x01a\x00",  # a complete SUBSCRIBE, reserved flags 0000
    ],
)
def test_violations_after_connect_v311_just_close(srv: Srv, data: bytes) -> None:
    with connected(srv, 4) as c:
        c.send(data)
        assert c.closed()
    still_serves(srv)


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_subscribe_reserved_flags_alone_are_the_fault(srv: Srv, version: int) -> None:
    body = codec.Subscribe(
        packet_id=7, subscriptions=(codec.SubscriptionRequest(topic_filter="a"),)
    ).encode(version)[1:]
    with connected(srv, version) as c:
        c.send(b"\x82" + body)  # the right flags (0010): accepted
        assert isinstance(c.packet(), codec.SubAck)
        c.send(b"\x80" + body)  # the same bytes with flags 0000
        if version == 5:
            expect_disconnect(c, Reason.MALFORMED_PACKET)
        else:
            assert c.closed()
    still_serves(srv)


@pytest.mark.parametrize(
    ("version", "data"),
    [
        (5, b"\x30\xff\xff\xff\xff\x01"),  # 5-byte remaining length
        (5, b"\x80\x07\x00\x01\x00\x00\x01a\x00"),  # reserved flags
        (4, b"\x36\x05\x00\x01a\x00\x01"),  # QoS 3
        (4, b"\x10" + CONNECT_V4[1:]),  # a second CONNECT
    ],
)
def test_connected_client_unaffected_by_anothers_malformed_packet(
    srv: Srv, paho_factory: Callable[..., Paho], version: int, data: bytes
) -> None:
    sub = paho_factory(srv, "sub", version=5)
    sub.subscribe("calm/#", 1)
    with connected(srv, version) as bad:
        bad.send(data)
        if version == 5:
            expect_disconnect(bad, Reason.MALFORMED_PACKET)
        else:
            assert bad.closed()
    srv.broker.publish("calm/x", mqkit.Message("after", b"after"))
    got = sub.get()
    assert (got.topic, got.payload) == ("calm/x", b"after")
    assert sub.connected.is_set() and sub.connack is not None
    sub.publish("calm/y", b"and back", 1)  # the old connection still publishes, too
    assert sub.get().payload == b"and back"


def test_subscribe_invalid_filter(srv: Srv) -> None:
    reqs = tuple(codec.SubscriptionRequest(topic_filter=f) for f in ("a/#/b", "ok/+", "a+", ""))
    with connected(srv) as c:
        c.send(codec.Subscribe(packet_id=5, subscriptions=reqs).encode())
        assert c.raw_packet() == b"\x90\x07\x00\x05\x00\x8f\x00\x8f\x8f"
    with connected(srv, 4) as c:
        c.send(codec.Subscribe(packet_id=5, subscriptions=reqs).encode(4))
        assert c.raw_packet() == b"\x90\x06\x00\x05\x80\x00\x80\x80"
    still_serves(srv)


def test_no_local_on_shared_subscription_is_a_protocol_error(srv: Srv) -> None:
    req = codec.SubscriptionRequest(topic_filter="$share/g/a", no_local=True)
    with connected(srv) as c:
        c.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode())
        expect_disconnect(c, Reason.PROTOCOL_ERROR)


@pytest.mark.parametrize("alias", [0, 11])
def test_topic_alias_out_of_range(server_factory: Callable[..., Srv], alias: int) -> None:
    srv = server_factory(topic_alias_maximum=10)
    with Raw(srv) as c:
        assert c.connect("alias").properties.topic_alias_maximum == 10
        props = codec.Properties(topic_alias=alias)
        c.send(codec.Publish(topic="t", payload=b"x", properties=props).encode())
        expect_disconnect(c, Reason.TOPIC_ALIAS_INVALID)
    still_serves(srv)


def test_unknown_topic_alias_is_a_protocol_error(srv: Srv) -> None:
    with connected(srv) as c:
        props = codec.Properties(topic_alias=4)  # in range, but never set to a topic
        c.send(codec.Publish(topic="", payload=b"x", properties=props).encode())
        expect_disconnect(c, Reason.PROTOCOL_ERROR)
    still_serves(srv)


def test_topic_alias_round_trip(srv: Srv) -> None:
    with connected(srv) as c:
        c.send(
            codec.Subscribe(
                packet_id=1, subscriptions=(codec.SubscriptionRequest(topic_filter="long/topic"),)
            ).encode()
        )
        c.packet()
        c.send(
            codec.Publish(
                topic="long/topic", payload=b"1", properties=codec.Properties(topic_alias=3)
            ).encode()
        )
        c.send(
            codec.Publish(
                topic="", payload=b"2", properties=codec.Properties(topic_alias=3)
            ).encode()
        )
        got = [c.packet(), c.packet()]
        assert [(p.topic, p.payload) for p in got if isinstance(p, codec.Publish)] == [
            ("long/topic", b"1"),
            ("long/topic", b"2"),
        ]


def test_packet_over_maximum_size(server_factory: Callable[..., Srv]) -> None:
    srv = server_factory(max_packet_size=128)
    with Raw(srv) as c:
        ack = c.connect("big")
        assert ack.properties.maximum_packet_size == 128
        c.send(codec.Publish(topic="t", payload=b"x" * 200).encode())
        expect_disconnect(c, Reason.PACKET_TOO_LARGE)
    with Raw(srv, 4) as c:
        c.connect("big4")
        c.send(codec.Publish(topic="t", payload=b"x" * 200).encode(4))
        assert c.closed()
    with Raw(srv) as c:  # a CONNECT that is itself too large
        c.send(codec.Connect(client_id="x" * 200, protocol_level=5).encode())
        assert c.raw_packet() == b"\x20\x03\x00\x95\x00"
        assert c.closed()
    still_serves(srv)


def test_receive_maximum_exceeded(server_factory: Callable[..., Srv]) -> None:
    srv = server_factory(max_inflight=2)
    with Raw(srv) as c:
        ack = c.connect("rm")
        assert ack.properties.receive_maximum == 2
        for pid in (1, 2):
            c.send(codec.Publish(topic="t", payload=b"x", qos=2, packet_id=pid).encode())
            assert isinstance(c.packet(), codec.PubRec)
        c.send(codec.Publish(topic="t", payload=b"x", qos=2, packet_id=3).encode())
        expect_disconnect(c, Reason.RECEIVE_MAXIMUM_EXCEEDED)
    still_serves(srv)


def test_session_expiry_at_disconnect_after_zero(srv: Srv) -> None:
    with connected(srv) as c:
        props = codec.Properties(session_expiry_interval=30)
        c.send(codec.Disconnect(properties=props).encode())
        expect_disconnect(c, Reason.PROTOCOL_ERROR)


def test_keep_alive_timeout(srv: Srv) -> None:
    with Raw(srv) as c:
        assert c.connect("ka", keep_alive=1).reason_code == 0
        expect_disconnect(c, Reason.KEEP_ALIVE_TIMEOUT)  # after 1.5 s of silence


def test_keep_alive_timeout_v311_closes(srv: Srv) -> None:
    with Raw(srv, 4) as c:
        assert c.connect("ka4", keep_alive=1).reason_code == 0
        assert c.closed()  # after 1.5 s of silence, with nothing sent (3.1.1 has no DISCONNECT)
    still_serves(srv)


def test_qos2_resend_is_delivered_once(srv: Srv) -> None:
    with connected(srv) as sub, Raw(srv) as pub:
        sub.send(
            codec.Subscribe(
                packet_id=1, subscriptions=(codec.SubscriptionRequest(topic_filter="q2", qos=2),)
            ).encode()
        )
        sub.packet()
        pub.connect("pub")
        first = codec.Publish(topic="q2", payload=b"once", qos=2, packet_id=9)
        pub.send(first.encode())
        assert pub.raw_packet() == b"\x50\x02\x00\x09"
        pub.send(codec.Publish(topic="q2", payload=b"once", qos=2, packet_id=9, dup=True).encode())
        assert pub.raw_packet() == b"\x50\x02\x00\x09"
        pub.send(codec.PubRel(packet_id=9).encode())
        assert pub.raw_packet() == b"\x70\x02\x00\x09"
        pub.send(codec.PubRel(packet_id=9).encode())  # unknown now
        assert pub.raw_packet() == b"\x70\x03\x00\x09\x92"
        # The subscriber got it exactly once: its next packet is the PINGRESP.
        got = sub.packet()
        assert isinstance(got, codec.Publish) and got.payload == b"once"
        sub.send(codec.PubRec(packet_id=got.packet_id).encode())
        assert sub.raw_packet() == b"\x62\x02" + got.packet_id.to_bytes(2, "big")
        sub.send(codec.PubComp(packet_id=got.packet_id).encode())
        sub.send(b"\xc0\x00")
        assert sub.raw_packet() == b"\xd0\x00"
