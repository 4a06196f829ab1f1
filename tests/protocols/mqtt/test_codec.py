"""The packet codec: round trips, exact bytes, framing, and fuzzing with hypothesis."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqkit.protocols.mqtt import codec
from mqkit.protocols.mqtt.codec import (
    MalformedPacket,
    PacketReader,
    PacketTooLarge,
    Properties,
    Reason,
)

text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
short_bytes = st.binary(max_size=40)
u16 = st.integers(1, 65535)

properties = st.builds(
    Properties,
    payload_format_indicator=st.none() | st.sampled_from([0, 1]),
    message_expiry_interval=st.none() | st.integers(0, 2**32 - 1),
    content_type=st.none() | text,
    response_topic=st.none() | text,
    correlation_data=st.none() | short_bytes,
    user_properties=st.lists(st.tuples(text, text), max_size=3).map(tuple),
)
publishes = st.builds(
    lambda topic, payload, qos, retain, dup, pid, props: codec.Publish(
        topic=topic,
        payload=payload,
        qos=qos,
        retain=retain,
        dup=dup and qos > 0,
        packet_id=pid if qos else 0,
        properties=props,
    ),
    text.filter(bool),
    short_bytes,
    st.integers(0, 2),
    st.booleans(),
    st.booleans(),
    u16,
    properties,
)
subscribes = st.builds(
    lambda pid, reqs: codec.Subscribe(packet_id=pid, subscriptions=tuple(reqs)),
    u16,
    st.lists(
        st.builds(
            codec.SubscriptionRequest,
            topic_filter=text,
            qos=st.integers(0, 2),
            no_local=st.booleans(),
            retain_as_published=st.booleans(),
            retain_handling=st.integers(0, 2),
        ),
        min_size=1,
        max_size=4,
    ),
)
connects = st.builds(
    lambda cid, clean, ka, user, pw, will, props: codec.Connect(
        client_id=cid,
        clean_start=clean,
        keep_alive=ka,
        username=user,
        password=pw,
        will=will,
        properties=Properties(session_expiry_interval=props),
    ),
    text,
    st.booleans(),
    st.integers(0, 65535),
    st.none() | text,
    st.none() | short_bytes,
    st.none()
    | st.builds(
        codec.Will,
        topic=text,
        payload=short_bytes,
        qos=st.integers(0, 2),
        retain=st.booleans(),
    ),
    st.none() | st.integers(0, 2**32 - 1),
)
acks = st.builds(
    lambda cls, pid, rc: cls(packet_id=pid, reason_code=rc),
    st.sampled_from([codec.PubAck, codec.PubRec]),
    u16,
    st.sampled_from([0x00, 0x10, 0x80, 0x87, 0x97]),
)
packets = st.one_of(publishes, subscribes, connects, acks)


def roundtrip(packet: codec.Packet, version: int = 5) -> codec.Packet:
    raw = packet.encode(version)
    reader = PacketReader()
    reader.feed(raw)
    frame = reader.next_frame()
    assert frame is not None
    assert reader.buffered() == 0
    return codec.decode(frame[0], frame[1], version)


@settings(max_examples=300, deadline=None)
@given(packets)
def test_encode_decode_roundtrip_v5(packet: codec.Packet) -> None:
    assert roundtrip(packet) == packet


@settings(max_examples=200, deadline=None)
@given(publishes)
def test_publish_roundtrip_v311(packet: codec.Publish) -> None:
    plain = codec.Publish(
        topic=packet.topic,
        payload=packet.payload,
        qos=packet.qos,
        retain=packet.retain,
        dup=packet.dup,
        packet_id=packet.packet_id,
    )
    assert roundtrip(plain, 4) == plain


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=64), st.sampled_from([4, 5]))
def test_decoding_garbage_raises_only_malformed(first: int, body: bytes, version: int) -> None:
    try:
        packet = codec.decode(first, body, version)
    except MalformedPacket as exc:
        assert exc.reason_code >= 0x80
    else:
        # Whatever decodes must encode back to a packet that decodes to the same thing.
        assert roundtrip(packet, version) == packet


@settings(max_examples=300, deadline=None)
@given(st.lists(packets, min_size=1, max_size=5), st.data())
def test_reader_frames_any_chunking(items: list[codec.Packet], data: st.DataObject) -> None:
    stream = b"".join(p.encode(5) for p in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = PacketReader()
    got: list[codec.Packet] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[last:cut])
        last = cut
        got += [codec.decode(f, b, 5) for f, b in reader.frames()]
    assert got == items


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_reader_on_garbage_raises_only_malformed(stream: bytes) -> None:
    reader = PacketReader(max_packet_size=100)
    reader.feed(stream)
    try:
        for first, body in reader.frames():
            with contextlib.suppress(MalformedPacket):
                codec.decode(first, body, 5)
    except MalformedPacket as exc:
        assert exc.reason_code in (Reason.MALFORMED_PACKET, Reason.PACKET_TOO_LARGE)


def test_exact_bytes() -> None:
    assert codec.Publish(topic="a/b", payload=b"hello", qos=1, retain=True, packet_id=7).encode(
        4
    ) == bytes.fromhex("330c0003612f62000768656c6c6f")
    assert codec.ConnAck(reason_code=1).encode(4) == b"\x20\x02\x00\x01"
    assert codec.PubAck(packet_id=1).encode(5) == b"\x40\x02\x00\x01"
    assert codec.PubAck(packet_id=1, reason_code=0x87).encode(5) == b"\x40\x03\x00\x01\x87"
    assert codec.Disconnect(reason_code=0x95).encode(5) == b"\xe0\x01\x95"
    assert codec.PingReq().encode() == b"\xc0\x00"


def test_remaining_length_limits() -> None:
    reader = PacketReader()
    reader.feed(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(MalformedPacket):
        reader.next_frame()
    reader = PacketReader()
    reader.feed(b"\x30\x80\x00")  # not minimally encoded
    with pytest.raises(MalformedPacket):
        reader.next_frame()
    reader = PacketReader(max_packet_size=100)
    reader.feed(b"\x30\xe8\x07")  # 1000 bytes announced: refused before the body arrives
    with pytest.raises(PacketTooLarge) as info:
        reader.next_frame()
    assert info.value.reason_code == Reason.PACKET_TOO_LARGE


@pytest.mark.parametrize(
    ("first", "body", "reason"),
    [
        (0x36, b"\x00\x01a\x00\x01", Reason.MALFORMED_PACKET),  # QoS 3
        (0x38, b"\x00\x01a", Reason.MALFORMED_PACKET),  # DUP with QoS 0
        (0x32, b"\x00\x01a\x00\x00\x00", Reason.PROTOCOL_ERROR),  # packet id 0
        (0x80, b"\x00\x01\x00\x00\x01a\x00", Reason.MALFORMED_PACKET),  # SUBSCRIBE flags
        (0x82, b"\x00\x01\x00", Reason.PROTOCOL_ERROR),  # SUBSCRIBE with no filter
        (0x82, b"\x00\x01\x00\x00\x01a\x30", Reason.PROTOCOL_ERROR),  # retain handling 3
        (0x82, b"\x00\x01\x00\x00\x01a\xc0", Reason.MALFORMED_PACKET),  # reserved option bits
        (0xC0, b"\x00", Reason.MALFORMED_PACKET),  # PINGREQ with a body
        (0x30, b"\x00\x02\xc3\x28", Reason.MALFORMED_PACKET),  # bad UTF-8
        (0x30, b"\x00\x01\x00", Reason.MALFORMED_PACKET),  # U+0000
        (0x30, b"\x00\x01a\x02\x23\x00", Reason.MALFORMED_PACKET),  # property runs short
        (0x30, b"\x00\x01a\x02\x7f\x00", Reason.MALFORMED_PACKET),  # unknown property
        (0x30, b"\x00\x01a\x02\x11\x00", Reason.MALFORMED_PACKET),  # not allowed in PUBLISH
        (0x30, b"\x00\x01a\x04\x01\x01\x01\x01", Reason.PROTOCOL_ERROR),  # given twice
        (0x00, b"", Reason.MALFORMED_PACKET),  # reserved type 0
    ],
)
def test_malformed_packets(first: int, body: bytes, reason: int) -> None:
    with pytest.raises(MalformedPacket) as info:
        codec.decode(first, body, 5)
    assert info.value.reason_code == reason
