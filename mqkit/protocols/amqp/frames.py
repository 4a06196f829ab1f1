"""Fast paths for the hottest frames: ``basic.publish``/``basic.ack`` in, ``basic.deliver`` out.

pamqp stays the codec: these functions read or write only the common, well-formed shapes of
those frames, with :mod:`struct`, and answer None (or defer to pamqp) for anything else, so
the frame goes through pamqp as every other frame does. What they build is byte-identical to
``pamqp.frame.marshal`` and what they read equals ``pamqp.frame.unmarshal``'s result (tests:
``tests/protocols/amqp/test_frames.py``).
"""

from __future__ import annotations

import struct
from typing import Final

from pamqp import commands, constants
from pamqp import header as pheader

__all__ = [
    "content_frames",
    "deliver_frame",
    "deliver_parts",
    "read_ack",
    "read_header",
    "read_publish",
]

_FRAME_HEAD: Final = struct.Struct(">BHI")
_PUBLISH: Final = b"\x00\x3c\x00\x28"
_ACK: Final = b"\x00\x3c\x00\x50"
_DELIVER: Final = b"\x00\x3c\x00\x3c"
_TAG: Final = struct.Struct(">q")  # pamqp writes a long-long as signed
_ACK_BODY: Final = struct.Struct(">qB")  # pamqp reads a long-long as signed
_HEADER_START: Final = struct.Struct(">HHQ")
_HEADER_EMPTY: Final = struct.Struct(">HHQH")
_EXCHANGE_NAME: Final = constants.DOMAIN_REGEX["exchange-name"]
_END: Final = b"\xce"


def read_publish(payload: bytes) -> commands.Basic.Publish | None:
    """The ``basic.publish`` of a method frame's payload, or None to let pamqp read it."""
    if payload[:4] != _PUBLISH or len(payload) < 9:
        return None
    n = payload[6]
    end = 7 + n
    if len(payload) <= end:
        return None
    m = payload[end]
    bits_at = end + 1 + m
    if len(payload) != bits_at + 1:
        return None
    bits = payload[bits_at]
    method = commands.Basic.Publish.__new__(commands.Basic.Publish)
    method.ticket = int.from_bytes(payload[4:6])
    method.exchange = payload[7:end].decode()
    method.routing_key = payload[end + 1 : bits_at].decode()
    method.mandatory = bool(bits & 1)
    method.immediate = bool(bits & 2)
    return method


def read_ack(payload: bytes) -> commands.Basic.Ack | None:
    """The ``basic.ack`` of a method frame's payload, or None to let pamqp read it."""
    if payload[:4] != _ACK or len(payload) != 13:
        return None
    tag, bits = _ACK_BODY.unpack_from(payload, 4)
    method = commands.Basic.Ack.__new__(commands.Basic.Ack)
    method.delivery_tag = tag
    method.multiple = bool(bits & 1)
    return method


def read_header(payload: bytes) -> pheader.ContentHeader | None:
    """A content header without properties, or None to let pamqp read it."""
    if len(payload) != 14:
        return None
    class_id, weight, size, flags = _HEADER_EMPTY.unpack(payload)
    if flags:
        return None
    head = pheader.ContentHeader(weight, size)
    head.class_id = class_id
    return head


def _short(text: str) -> bytes | None:
    raw = text.encode()
    return None if len(raw) > 255 else bytes((len(raw),)) + raw


def deliver_parts(consumer_tag: str, exchange: str, routing_key: str) -> tuple[bytes, bytes] | None:
    """A ``basic.deliver``'s bytes before and after its delivery tag and redelivered flag.

    None where pamqp must marshal (or refuse) the method.
    """
    if len(exchange) > 127 or not _EXCHANGE_NAME.fullmatch(exchange):
        return None
    ctag, ex, key = _short(consumer_tag), _short(exchange), _short(routing_key)
    if ctag is None or ex is None or key is None:
        return None
    return _DELIVER + ctag, ex + key


def deliver_frame(channel: int, parts: tuple[bytes, bytes], tag: int, redelivered: bool) -> bytes:
    """The ``basic.deliver`` frame of ``parts`` (:func:`deliver_parts`) and a delivery tag.

    The tag must be below 2**63 (pamqp writes it as a signed long-long).
    """
    head, tail = parts
    size = len(head) + len(tail) + 9
    return b"".join(
        (
            _FRAME_HEAD.pack(1, channel, size),
            head,
            _TAG.pack(tag),
            b"\x01" if redelivered else b"\x00",
            tail,
            _END,
        )
    )


def content_frames(channel: int, properties: bytes, body: bytes, frame_max: int) -> bytes:
    """The content header and body frames of a message (split at ``frame_max``).

    ``properties`` are the message's properties as pamqp marshals them
    (``Basic.Properties.marshal()``); the frames around them are packed here.
    """
    head = _HEADER_START.pack(60, 0, len(body)) + properties
    parts = [_FRAME_HEAD.pack(2, channel, len(head)), head, _END]
    step = frame_max - 8
    size = len(body)
    if size <= step:
        if size:
            parts += (_FRAME_HEAD.pack(3, channel, size), body, _END)
    else:
        for start in range(0, size, step):
            chunk = body[start : start + step]
            parts += (_FRAME_HEAD.pack(3, channel, len(chunk)), chunk, _END)
    return b"".join(parts)
