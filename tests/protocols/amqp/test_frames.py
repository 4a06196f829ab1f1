"""The gateway's fast paths for its hottest frames agree with pamqp, byte for byte.

``basic.deliver`` and content frames built by ``mqkit.protocols.amqp.frames`` must be the
bytes ``pamqp.frame.marshal`` makes, and the ``basic.publish``/``basic.ack``/content header
it reads must equal what ``pamqp.frame.unmarshal`` reads, over many property combinations.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

from mqkit.protocols.amqp.frames import (
    content_frames,
    deliver_frame,
    deliver_parts,
    read_ack,
    read_header,
    read_publish,
)

_short = st.text(max_size=40)
_name = st.from_regex(r"[a-zA-Z0-9\-_.:]{0,60}", fullmatch=True)
_value = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**31), 2**31 - 1),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
)
_properties = st.fixed_dictionaries(
    {},
    optional={
        "content_type": _short,
        "content_encoding": _short,
        "headers": st.dictionaries(st.text(min_size=1, max_size=10), _value, max_size=4),
        "delivery_mode": st.sampled_from([1, 2]),
        "priority": st.integers(0, 255),
        "correlation_id": _short,
        "reply_to": _short,
        "expiration": st.integers(0, 10**9).map(str),
        "message_id": _short,
        "timestamp": st.integers(0, 2**32).map(lambda s: datetime.fromtimestamp(s, UTC)),
        "message_type": _short,
        "user_id": _short,
        "app_id": _short,
    },
)


def _pamqp_content(
    channel: int, props: commands.Basic.Properties, body: bytes, frame_max: int
) -> bytes:
    parts = [pframe.marshal(pheader.ContentHeader(0, len(body), props), channel)]
    step = frame_max - 8
    for start in range(0, len(body), step):
        parts.append(pframe.marshal(pbody.ContentBody(body[start : start + step]), channel))
    return b"".join(parts)


def _fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


@settings(max_examples=300, deadline=None)
@given(
    channel=st.integers(1, 65535),
    props=_properties,
    body=st.binary(max_size=300),
    frame_max=st.sampled_from([4096, 131072]) | st.integers(9, 200),
)
def test_content_frames_are_pamqps_bytes(
    channel: int, props: dict[str, Any], body: bytes, frame_max: int
) -> None:
    properties = commands.Basic.Properties(**props)
    expected = _pamqp_content(channel, properties, body, frame_max)
    assert content_frames(channel, properties.marshal(), body, frame_max) == expected


@settings(max_examples=300, deadline=None)
@given(
    channel=st.integers(1, 65535),
    consumer_tag=st.text(max_size=300),
    tag=st.integers(1, 2**64 - 1),
    redelivered=st.booleans(),
    exchange=_name | st.text(max_size=140),
    routing_key=st.text(max_size=300),
)
def test_deliver_frame_is_pamqps_bytes_or_left_to_pamqp(
    channel: int,
    consumer_tag: str,
    tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
) -> None:
    fields = (consumer_tag, tag, redelivered, exchange, routing_key)
    parts = deliver_parts(consumer_tag, exchange, routing_key)
    built = (
        None if parts is None or tag >= 2**63 else deliver_frame(channel, parts, tag, redelivered)
    )
    try:
        expected = pframe.marshal(commands.Basic.Deliver(*fields), channel)
    except (ValueError, TypeError):  # pamqp refuses it: so must the fast path (by deferring)
        assert built is None
        return
    assert built is None or built == expected
    if (
        tag < 2**63
        and re.fullmatch(r"[a-zA-Z0-9\-_.:]*", exchange)
        and len(exchange) <= 127
        and all(len(s.encode()) <= 255 for s in (consumer_tag, exchange, routing_key))
    ):
        assert built == expected  # the common case is never left to pamqp


def _payload(value: Any, channel: int = 1) -> bytes:
    return pframe.marshal(value, channel)[7:-1]


@settings(max_examples=300, deadline=None)
@given(
    exchange=_name,
    routing_key=st.text(max_size=255).filter(lambda k: len(k.encode()) <= 255),
    mandatory=st.booleans(),
    immediate=st.booleans(),
)
def test_read_publish_equals_pamqp(
    exchange: str, routing_key: str, mandatory: bool, immediate: bool
) -> None:
    method = commands.Basic.Publish(
        exchange=exchange, routing_key=routing_key, mandatory=mandatory, immediate=immediate
    )
    raw = pframe.marshal(method, 1)
    read = read_publish(raw[7:-1])
    assert read is not None
    assert type(read) is commands.Basic.Publish
    assert _fields(read) == _fields(pframe.unmarshal(raw)[2])


@settings(max_examples=200, deadline=None)
@given(tag=st.integers(0, 2**63 - 1), multiple=st.booleans())
def test_read_ack_equals_pamqp(tag: int, multiple: bool) -> None:
    raw = pframe.marshal(commands.Basic.Ack(tag, multiple), 1)
    read = read_ack(raw[7:-1])
    assert read is not None
    assert _fields(read) == _fields(pframe.unmarshal(raw)[2])


@settings(max_examples=200, deadline=None)
@given(props=_properties, size=st.integers(0, 2**40))
def test_read_header_equals_pamqp_or_defers(props: dict[str, Any], size: int) -> None:
    raw = pframe.marshal(pheader.ContentHeader(0, size, commands.Basic.Properties(**props)), 1)
    read = read_header(raw[7:-1])
    if raw[19:21] != b"\x00\x00":
        assert read is None  # properties are pamqp's to read
        return
    expected = pframe.unmarshal(raw)[2]
    assert read is not None
    assert (read.class_id, read.weight, read.body_size) == (
        expected.class_id,
        expected.weight,
        expected.body_size,
    )
    assert read.properties == expected.properties


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=40))
def test_fast_readers_never_disagree_with_pamqp_on_arbitrary_bytes(payload: bytes) -> None:
    for prefix in (b"\x00\x3c\x00\x28", b"\x00\x3c\x00\x50", b""):
        data = prefix + payload
        try:
            expected: Any = pframe.unmarshal(
                b"\x01\x00\x01" + len(data).to_bytes(4, "big") + data + b"\xce"
            )[2]
        except Exception:
            expected = None
        for reader in (read_publish, read_ack):
            try:
                read = reader(data)
            except UnicodeDecodeError:
                assert expected is None
                continue
            if read is not None:
                assert expected is not None
                assert _fields(read) == _fields(expected)
