"""A sans-I/O MQTT 3.1.1 / 5.0 packet codec: packet classes, properties, encode and decode.

Nothing here touches a socket. :func:`decode` turns one packet (its first byte and its body)
into a frozen attrs object; each packet class has ``encode(version) -> bytes``;
:class:`PacketReader` cuts a byte stream into packets and refuses one whose remaining length is
malformed or exceeds the maximum packet size before its body is read.

Every format or rule violation raises :class:`MalformedPacket` carrying the MQTT 5 reason code
the peer should be told (``0x81`` Malformed Packet, ``0x82`` Protocol Error, ``0x95`` Packet too
large, ...). Version numbers are the protocol levels: 3 (3.1), 4 (3.1.1) and 5 (5.0).
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Iterator
from typing import Any, ClassVar, Final

import attrs

__all__ = [
    "AUTH",
    "CONNACK",
    "CONNECT",
    "DISCONNECT",
    "MAX_PACKET_SIZE",
    "NO_PROPERTIES",
    "PINGREQ",
    "PINGRESP",
    "PUBACK",
    "PUBCOMP",
    "PUBLISH",
    "PUBREC",
    "PUBREL",
    "SUBACK",
    "SUBSCRIBE",
    "UNSUBACK",
    "UNSUBSCRIBE",
    "Auth",
    "ConnAck",
    "Connect",
    "Disconnect",
    "MalformedPacket",
    "Packet",
    "PacketReader",
    "PacketTooLarge",
    "PingReq",
    "PingResp",
    "Properties",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "Reason",
    "SubAck",
    "Subscribe",
    "SubscriptionRequest",
    "UnsubAck",
    "Unsubscribe",
    "Will",
    "connect_level",
    "decode",
    "encode_publish",
    "encode_varint",
]

MAX_PACKET_SIZE: Final = 268_435_460
"""The largest packet MQTT can frame: a 268,435,455-byte body plus a 5-byte fixed header."""

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8, 9, 10, 11, 12, 13, 14, 15,
)  # fmt: skip


class Reason:
    """MQTT 5 reason codes (and the 3.1.1 CONNACK return codes) by name."""

    SUCCESS = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    REAUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2
    # MQTT 3.1.1 CONNACK return codes
    V3_UNACCEPTABLE_PROTOCOL_VERSION = 0x01
    V3_IDENTIFIER_REJECTED = 0x02
    V3_SERVER_UNAVAILABLE = 0x03
    V3_BAD_USER_NAME_OR_PASSWORD = 0x04
    V3_NOT_AUTHORIZED = 0x05


class MalformedPacket(Exception):
    """A packet breaks the format or a rule; ``reason_code`` is what to tell the peer (v5)."""

    def __init__(self, message: str, reason_code: int = Reason.MALFORMED_PACKET) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        """The MQTT 5 reason code for the DISCONNECT (or CONNACK) that answers it."""


class PacketTooLarge(MalformedPacket):
    """A packet's size exceeds the receiver's maximum packet size (reason ``0x95``)."""

    def __init__(self, size: int, maximum: int) -> None:
        super().__init__(
            f"packet of {size} bytes exceeds the maximum packet size {maximum}",
            Reason.PACKET_TOO_LARGE,
        )
        self.size = size
        """The packet's total size in bytes."""


def _protocol_error(message: str) -> MalformedPacket:
    return MalformedPacket(message, Reason.PROTOCOL_ERROR)


# -- primitive encoders --------------------------------------------------------------------------

_pack_h = struct.Struct("!H").pack
_pack_i = struct.Struct("!I").pack
_unpack_h = struct.Struct("!H").unpack_from
_unpack_i = struct.Struct("!I").unpack_from


def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (0 .. 268,435,455)."""
    if value < 128:
        return bytes((value,))
    if not 0 <= value <= 268_435_455:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 65535:
        raise ValueError("UTF-8 string longer than 65535 bytes")
    return _pack_h(len(raw)) + raw


def _bin(value: bytes) -> bytes:
    if len(value) > 65535:
        raise ValueError("binary data longer than 65535 bytes")
    return _pack_h(len(value)) + value


def _frame(first: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return bytes((first, n)) + body
    return bytes((first,)) + encode_varint(n) + body


def encode_publish(
    topic: bytes,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int,
    properties: bytes | None,
) -> bytes:
    """A PUBLISH from parts (the fast path): ``properties`` is a v5 property block or None."""
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    head = _pack_h(len(topic)) + topic
    if qos:
        head += _pack_h(packet_id)
    if properties is not None:
        head += properties
    return _frame(first, head + payload)


# -- primitive decoders --------------------------------------------------------------------------


class _Buf:
    """A cursor over one packet's body."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def byte(self) -> int:
        if self.pos >= self.end:
            raise MalformedPacket("packet ends early")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u16(self) -> int:
        if self.pos + 2 > self.end:
            raise MalformedPacket("packet ends early")
        (v,) = _unpack_h(self.data, self.pos)
        self.pos += 2
        return int(v)

    def u32(self) -> int:
        if self.pos + 4 > self.end:
            raise MalformedPacket("packet ends early")
        (v,) = _unpack_i(self.data, self.pos)
        self.pos += 4
        return int(v)

    def varint(self) -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                if b == 0 and shift:
                    raise MalformedPacket("variable byte integer not minimally encoded")
                return value
        raise MalformedPacket("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        n = self.u16()
        if self.pos + n > self.end:
            raise MalformedPacket("string or binary data runs past the packet")
        v = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return v

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise MalformedPacket("string is not well-formed UTF-8") from None
        if "\x00" in text:
            raise MalformedPacket("string contains U+0000")
        return text

    def rest(self) -> bytes:
        v = bytes(self.data[self.pos : self.end])
        self.pos = self.end
        return v


# -- properties ----------------------------------------------------------------------------------

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)

# id -> (field name, type, packet types it may appear in; 0 marks the will properties)
_PROPS: Final[dict[int, tuple[str, int, frozenset[int]]]] = {
    0x01: ("payload_format_indicator", _BYTE, frozenset({PUBLISH, 0})),
    0x02: ("message_expiry_interval", _U32, frozenset({PUBLISH, 0})),
    0x03: ("content_type", _STR, frozenset({PUBLISH, 0})),
    0x08: ("response_topic", _STR, frozenset({PUBLISH, 0})),
    0x09: ("correlation_data", _BIN, frozenset({PUBLISH, 0})),
    0x0B: ("subscription_identifiers", _VARINT, frozenset({PUBLISH, SUBSCRIBE})),
    0x11: ("session_expiry_interval", _U32, frozenset({CONNECT, CONNACK, DISCONNECT})),
    0x12: ("assigned_client_identifier", _STR, frozenset({CONNACK})),
    0x13: ("server_keep_alive", _U16, frozenset({CONNACK})),
    0x15: ("authentication_method", _STR, frozenset({CONNECT, CONNACK, AUTH})),
    0x16: ("authentication_data", _BIN, frozenset({CONNECT, CONNACK, AUTH})),
    0x17: ("request_problem_information", _BYTE, frozenset({CONNECT})),
    0x18: ("will_delay_interval", _U32, frozenset({0})),
    0x19: ("request_response_information", _BYTE, frozenset({CONNECT})),
    0x1A: ("response_information", _STR, frozenset({CONNACK})),
    0x1C: ("server_reference", _STR, frozenset({CONNACK, DISCONNECT})),
    0x1F: (
        "reason_string",
        _STR,
        frozenset({CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH}),
    ),
    0x21: ("receive_maximum", _U16, frozenset({CONNECT, CONNACK})),
    0x22: ("topic_alias_maximum", _U16, frozenset({CONNECT, CONNACK})),
    0x23: ("topic_alias", _U16, frozenset({PUBLISH})),
    0x24: ("maximum_qos", _BYTE, frozenset({CONNACK})),
    0x25: ("retain_available", _BYTE, frozenset({CONNACK})),
    0x26: ("user_properties", _PAIR, frozenset(range(16))),
    0x27: ("maximum_packet_size", _U32, frozenset({CONNECT, CONNACK})),
    0x28: ("wildcard_subscription_available", _BYTE, frozenset({CONNACK})),
    0x29: ("subscription_identifier_available", _BYTE, frozenset({CONNACK})),
    0x2A: ("shared_subscription_available", _BYTE, frozenset({CONNACK})),
}
_PROP_IDS: Final = {name: (pid, kind) for pid, (name, kind, _) in _PROPS.items()}
_BOOLEAN_PROPS: Final = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_NONZERO_PROPS: Final = frozenset({0x0B, 0x21, 0x27})


@attrs.frozen(slots=True, kw_only=True)
class Properties:
    """MQTT 5 properties; ``None`` (or empty) means absent. 3.1.1 packets carry none.

    ``user_properties`` keeps order and duplicates; ``subscription_identifiers`` holds the one
    identifier of a SUBSCRIBE, or every matching identifier of a server's PUBLISH.
    """

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def encode(self) -> bytes:
        """The property block: its length (a varint) and the properties."""
        if self is NO_PROPERTIES:
            return b"\x00"
        out = bytearray()
        for name, (pid, kind) in _PROP_IDS.items():
            value = getattr(self, name)
            if value is None or value == ():
                continue
            if kind == _PAIR:
                for k, v in value:
                    out.append(pid)
                    out += _str(k) + _str(v)
                continue
            if kind == _VARINT and isinstance(value, tuple):
                for v in value:
                    out.append(pid)
                    out += encode_varint(v)
                continue
            out.append(pid)
            if kind == _BYTE:
                out.append(value)
            elif kind == _U16:
                out += _pack_h(value)
            elif kind == _U32:
                out += _pack_i(value)
            elif kind == _STR:
                out += _str(value)
            elif kind == _BIN:
                out += _bin(value)
            else:  # pragma: no cover - every kind is handled above
                raise AssertionError(kind)
        return encode_varint(len(out)) + bytes(out)

    def size(self) -> int:
        """Encoded length of the property block, its length prefix included."""
        return len(self.encode())

    def without_diagnostics(self) -> Properties:
        """A copy without the reason string and user properties (to fit a size limit)."""
        return attrs.evolve(self, reason_string=None, user_properties=())


NO_PROPERTIES: Final = Properties()


def _decode_properties(buf: _Buf, packet_type: int) -> Properties:
    length = buf.varint()
    if buf.pos + length > buf.end:
        raise MalformedPacket("property length runs past the packet")
    if length == 0:
        return NO_PROPERTIES
    end = buf.pos + length
    sub = _Buf(buf.data, buf.pos, end)
    buf.pos = end
    values: dict[str, Any] = {}
    pairs: list[tuple[str, str]] = []
    ids: list[int] = []
    while sub.pos < end:
        pid = sub.varint()
        spec = _PROPS.get(pid)
        if spec is None:
            raise MalformedPacket(f"unknown property identifier 0x{pid:02x}")
        name, kind, allowed = spec
        if packet_type not in allowed:
            raise MalformedPacket(f"property {name} is not allowed in this packet")
        if kind == _PAIR:
            pairs.append((sub.string(), sub.string()))
            continue
        if kind == _BYTE:
            value: Any = sub.byte()
        elif kind == _U16:
            value = sub.u16()
        elif kind == _U32:
            value = sub.u32()
        elif kind == _VARINT:
            value = sub.varint()
        elif kind == _STR:
            value = sub.string()
        else:
            value = sub.binary()
        if pid in _BOOLEAN_PROPS and value > 1:
            raise _protocol_error(f"property {name} must be 0 or 1")
        if pid in _NONZERO_PROPS and value == 0:
            raise _protocol_error(f"property {name} must not be 0")
        if pid == 0x0B:
            if ids and packet_type == SUBSCRIBE:
                raise _protocol_error("subscription identifier given twice")
            ids.append(value)
            continue
        if name in values:
            raise _protocol_error(f"property {name} given twice")
        values[name] = value
    if pairs:
        values["user_properties"] = tuple(pairs)
    if ids:
        values["subscription_identifiers"] = tuple(ids)
    return Properties(**values)


# -- packets -------------------------------------------------------------------------------------


class Packet(abc.ABC):
    """Base of every packet class; ``packet_type`` is the control packet type (1-15)."""

    __slots__ = ()
    packet_type: ClassVar[int]

    @abc.abstractmethod
    def encode(self, version: int = 5) -> bytes:
        """The packet's bytes in protocol ``version`` (3/4: 3.1/3.1.1, 5: 5.0)."""


@attrs.frozen(slots=True, kw_only=True)
class Will:
    """The Will Message of a CONNECT."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@attrs.frozen(slots=True, kw_only=True)
class Connect(Packet):
    """CONNECT: the first packet of a connection."""

    packet_type: ClassVar[int] = CONNECT
    client_id: str = ""
    protocol_name: str = "MQTT"
    protocol_level: int = 5
    clean_start: bool = True
    keep_alive: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = NO_PROPERTIES

    def encode(self, version: int | None = None) -> bytes:
        """Encode; the protocol level decides the format (``version`` is ignored)."""
        v5 = self.protocol_level >= 5
        flags = 0x02 if self.clean_start else 0
        will = self.will
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        if self.username is not None:
            flags |= 0x80
        if self.password is not None:
            flags |= 0x40
        body = bytearray(_str(self.protocol_name))
        body += bytes((self.protocol_level, flags)) + _pack_h(self.keep_alive)
        if v5:
            body += self.properties.encode()
        body += _str(self.client_id)
        if will is not None:
            if v5:
                body += will.properties.encode()
            body += _str(will.topic) + _bin(will.payload)
        if self.username is not None:
            body += _str(self.username)
        if self.password is not None:
            body += _bin(self.password)
        return _frame(0x10, bytes(body))


@attrs.frozen(slots=True, kw_only=True)
class ConnAck(Packet):
    """CONNACK: the answer to CONNECT (``reason_code`` is the 3.1.1 return code in v3/v4)."""

    packet_type: ClassVar[int] = CONNACK
    session_present: bool = False
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    def encode(self, version: int = 5) -> bytes:
        """Encode for ``version``."""
        body = bytes((1 if self.session_present else 0, self.reason_code))
        if version >= 5:
            body += self.properties.encode()
        return _frame(0x20, body)


@attrs.frozen(slots=True, kw_only=True)
class Publish(Packet):
    """PUBLISH: an application message (either direction)."""

    packet_type: ClassVar[int] = PUBLISH
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0
    properties: Properties = NO_PROPERTIES

    def encode(self, version: int = 5) -> bytes:
        """Encode for ``version``."""
        first = 0x30 | (self.qos << 1)
        if self.retain:
            first |= 1
        if self.dup:
            first |= 8
        head = _str(self.topic)
        if self.qos:
            head += _pack_h(self.packet_id)
        if version >= 5:
            head += self.properties.encode()
        return _frame(first, head + self.payload)


@attrs.frozen(slots=True, kw_only=True)
class _Ack(Packet):
    """PUBACK, PUBREC, PUBREL, PUBCOMP: a packet id and (v5) a reason code and properties."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    _first: ClassVar[int] = 0

    def encode(self, version: int = 5) -> bytes:
        """Encode for ``version`` (v5 omits a success code with no properties)."""
        body = _pack_h(self.packet_id)
        if version >= 5 and (self.reason_code or self.properties is not NO_PROPERTIES):
            body += bytes((self.reason_code,))
            if self.properties is not NO_PROPERTIES:
                body += self.properties.encode()
        return _frame(self._first, body)


@attrs.frozen(slots=True, kw_only=True)
class PubAck(_Ack):
    """PUBACK: QoS 1 acknowledgement."""

    packet_type: ClassVar[int] = PUBACK
    _first: ClassVar[int] = 0x40


@attrs.frozen(slots=True, kw_only=True)
class PubRec(_Ack):
    """PUBREC: QoS 2 delivery, part 1."""

    packet_type: ClassVar[int] = PUBREC
    _first: ClassVar[int] = 0x50


@attrs.frozen(slots=True, kw_only=True)
class PubRel(_Ack):
    """PUBREL: QoS 2 delivery, part 2."""

    packet_type: ClassVar[int] = PUBREL
    _first: ClassVar[int] = 0x62


@attrs.frozen(slots=True, kw_only=True)
class PubComp(_Ack):
    """PUBCOMP: QoS 2 delivery, part 3."""

    packet_type: ClassVar[int] = PUBCOMP
    _first: ClassVar[int] = 0x70


@attrs.frozen(slots=True, kw_only=True)
class SubscriptionRequest:
    """One topic filter of a SUBSCRIBE and its options."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0

    def options_byte(self) -> int:
        """The subscription options byte (v5 layout; 3.1.1 uses only the QoS bits)."""
        return (
            self.qos
            | (4 if self.no_local else 0)
            | (8 if self.retain_as_published else 0)
            | (self.retain_handling << 4)
        )


@attrs.frozen(slots=True, kw_only=True)
class Subscribe(Packet):
    """SUBSCRIBE: one or more topic filters."""

    packet_type: ClassVar[int] = SUBSCRIBE
    packet_id: int
    subscriptions: tuple[SubscriptionRequest, ...]
    properties: Properties = NO_PROPERTIES

    def encode(self, version: int = 5) -> bytes:
        """Encode for ``version``."""
        body = bytearray(_pack_h(self.packet_id))
        if version >= 5:
            body += self.properties.encode()
        for s in self.subscriptions:
            body += _str(s.topic_filter)
            body.append(s.options_byte() if version >= 5 else s.qos)
        return _frame(0x82, bytes(body))


@attrs.frozen(slots=True, kw_only=True)
class SubAck(Packet):
    """SUBACK: a reason code (granted QoS or failure) per requested filter."""

    packet_type: ClassVar[int] = SUBACK
    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES

    def encode(self, version: int = 5) -> bytes:
        """Encode for ``version``."""
        body = _pack_h(self.packet_id)
        if version >= 5:
            body += self.properties.encode()
        return _frame(0x90, body + bytes(self.reason_codes))


@attrs.frozen(slots=True, kw_only=True)
class Unsubscribe(Packet):
    """UNSUBSCRIBE: one or more topic filters."""

    packet_type: ClassVar[int] = UNSUBSCRIBE
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES

    def encode(self, version: int = 5) -> bytes:
        """Encode for ``version``."""
        body = bytearray(_pack_h(self.packet_id))
        if version >= 5:
            body += self.properties.encode()
        for f in self.topic_filters:
            body += _str(f)
        return _frame(0xA2, bytes(body))


@attrs.frozen(slots=True, kw_only=True)
class UnsubAck(Packet):
    """UNSUBACK: (v5) a reason code per filter; 3.1.1 carries only the packet id."""

    packet_type: ClassVar[int] = UNSUBACK
    packet_id: int
    reason_codes: tuple[int, ...] = ()
    properties: Properties = NO_PROPERTIES

    def encode(self, version: int = 5) -> bytes:
        """Encode for ``version``."""
        body = _pack_h(self.packet_id)
        if version >= 5:
            body += self.properties.encode() + bytes(self.reason_codes)
        return _frame(0xB0, body)


@attrs.frozen(slots=True)
class PingReq(Packet):
    """PINGREQ."""

    packet_type: ClassVar[int] = PINGREQ

    def encode(self, version: int = 5) -> bytes:
        """Encode (the same in every version)."""
        return b"\xc0\x00"


@attrs.frozen(slots=True)
class PingResp(Packet):
    """PINGRESP."""

    packet_type: ClassVar[int] = PINGRESP

    def encode(self, version: int = 5) -> bytes:
        """Encode (the same in every version)."""
        return b"\xd0\x00"


@attrs.frozen(slots=True, kw_only=True)
class Disconnect(Packet):
    """DISCONNECT (either direction in v5; client to server only in 3.1.1)."""

    packet_type: ClassVar[int] = DISCONNECT
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    def encode(self, version: int = 5) -> bytes:
        """Encode for ``version``."""
        if version < 5 or (self.reason_code == 0 and self.properties is NO_PROPERTIES):
            return b"\xe0\x00"
        body = bytes((self.reason_code,))
        if self.properties is not NO_PROPERTIES:
            body += self.properties.encode()
        return _frame(0xE0, body)


@attrs.frozen(slots=True, kw_only=True)
class Auth(Packet):
    """AUTH (v5 only): a step of enhanced authentication."""

    packet_type: ClassVar[int] = AUTH
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    def encode(self, version: int = 5) -> bytes:
        """Encode (v5)."""
        if self.reason_code == 0 and self.properties is NO_PROPERTIES:
            return b"\xf0\x00"
        return _frame(0xF0, bytes((self.reason_code,)) + self.properties.encode())


# -- decoding ------------------------------------------------------------------------------------

_PUBLISH_NO_PROPS_V5: Final = b"\x00"
_ACK_REASONS: Final = {
    PUBACK: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    PUBREC: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    PUBREL: frozenset({0x00, 0x92}),
    PUBCOMP: frozenset({0x00, 0x92}),
}
_DISCONNECT_REASONS: Final = frozenset(
    {0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
     0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2}
)  # fmt: skip
_ACK_CLASSES: Final[dict[int, type[_Ack]]] = {
    PUBACK: PubAck,
    PUBREC: PubRec,
    PUBREL: PubRel,
    PUBCOMP: PubComp,
}
_FIXED_FLAGS: Final = {
    CONNECT: 0, CONNACK: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBSCRIBE: 2,
    SUBACK: 0, UNSUBSCRIBE: 2, UNSUBACK: 0, PINGREQ: 0, PINGRESP: 0, DISCONNECT: 0, AUTH: 0,
}  # fmt: skip


def decode(first: int, body: bytes, version: int = 5) -> Packet:
    """Decode one packet from its first byte and its body (the remaining-length bytes).

    ``version`` is the connection's protocol level (CONNECT decodes its own). Raises
    :class:`MalformedPacket` for anything the specification forbids.
    """
    ptype = first >> 4
    flags = first & 0x0F
    if ptype == PUBLISH:
        return _decode_publish(flags, body, version)
    if ptype == 0 or (ptype == AUTH and version < 5):
        raise MalformedPacket(f"reserved packet type {ptype}")
    if flags != _FIXED_FLAGS[ptype]:
        raise MalformedPacket(f"reserved flags 0x{flags:x} of packet type {ptype}")
    if ptype in _ACK_CLASSES:
        return _decode_ack(ptype, body, version)
    if ptype == CONNECT:
        return _decode_connect(body)
    if ptype == SUBSCRIBE:
        return _decode_subscribe(body, version)
    if ptype == UNSUBSCRIBE:
        return _decode_unsubscribe(body, version)
    if ptype in (PINGREQ, PINGRESP):
        if body:
            raise MalformedPacket("PINGREQ/PINGRESP must have no body")
        return PingReq() if ptype == PINGREQ else PingResp()
    if ptype == DISCONNECT:
        return _decode_disconnect(body, version)
    if ptype == AUTH:
        return _decode_auth(body)
    if ptype == CONNACK:
        return _decode_connack(body, version)
    if ptype == SUBACK:
        return _decode_suback(body, version)
    return _decode_unsuback(body, version)


def _decode_publish(flags: int, body: bytes, version: int) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(flags & 8)
    if dup and not qos:
        raise MalformedPacket("PUBLISH with QoS 0 and DUP set")
    n = len(body)
    if n < 2:
        raise MalformedPacket("packet ends early")
    tlen = (body[0] << 8) | body[1]
    pos = 2 + tlen
    if pos > n:
        raise MalformedPacket("topic runs past the packet")
    try:
        topic = body[2:pos].decode()
    except UnicodeDecodeError:
        raise MalformedPacket("topic is not well-formed UTF-8") from None
    if "\x00" in topic:
        raise MalformedPacket("topic contains U+0000")
    packet_id = 0
    if qos:
        if pos + 2 > n:
            raise MalformedPacket("packet ends early")
        packet_id = (body[pos] << 8) | body[pos + 1]
        pos += 2
        if packet_id == 0:
            raise _protocol_error("PUBLISH with QoS > 0 and packet identifier 0")
    props = NO_PROPERTIES
    if version >= 5:
        if pos < n and body[pos] == 0:
            pos += 1
        else:
            buf = _Buf(body, pos)
            props = _decode_properties(buf, PUBLISH)
            pos = buf.pos
    return Publish(
        topic=topic,
        payload=bytes(body[pos:]),
        qos=qos,
        retain=bool(flags & 1),
        dup=dup,
        packet_id=packet_id,
        properties=props,
    )


def _decode_ack(ptype: int, body: bytes, version: int) -> _Ack:
    buf = _Buf(body)
    packet_id = buf.u16()
    if packet_id == 0:
        raise _protocol_error("packet identifier 0")
    reason = 0
    props = NO_PROPERTIES
    if version >= 5:
        if buf.remaining():
            reason = buf.byte()
            if reason not in _ACK_REASONS[ptype]:
                raise _protocol_error(f"reason code 0x{reason:02x} not allowed here")
        if buf.remaining():
            props = _decode_properties(buf, ptype)
    if buf.remaining():
        raise MalformedPacket("trailing bytes")
    return _ACK_CLASSES[ptype](packet_id=packet_id, reason_code=reason, properties=props)


def _decode_connect(body: bytes) -> Connect:
    buf = _Buf(body)
    name = buf.string()
    level = buf.byte()
    if name not in ("MQTT", "MQIsdp"):
        raise MalformedPacket(f"unknown protocol name {name!r}")
    if (name, level) not in (("MQTT", 4), ("MQTT", 5), ("MQIsdp", 3)):
        raise MalformedPacket(
            f"unsupported protocol level {level}", Reason.UNSUPPORTED_PROTOCOL_VERSION
        )
    v5 = level >= 5
    flags = buf.byte()
    if flags & 1:
        raise MalformedPacket("CONNECT reserved flag is set")
    keep_alive = buf.u16()
    props = _decode_properties(buf, CONNECT) if v5 else NO_PROPERTIES
    client_id = buf.string()
    will = None
    will_qos = (flags >> 3) & 3
    will_retain = bool(flags & 0x20)
    if flags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("will QoS 3")
        will_props = _decode_properties(buf, 0) if v5 else NO_PROPERTIES
        will_topic = buf.string()
        will_payload = buf.binary()
        will = Will(
            topic=will_topic,
            payload=will_payload,
            qos=will_qos,
            retain=will_retain,
            properties=will_props,
        )
    elif will_qos or will_retain:
        raise MalformedPacket("will QoS or retain set without a will")
    username = buf.string() if flags & 0x80 else None
    if flags & 0x40:
        if not v5 and username is None:
            raise MalformedPacket("password without user name")
        password: bytes | None = buf.binary()
    else:
        password = None
    if buf.remaining():
        raise MalformedPacket("trailing bytes after the CONNECT payload")
    return Connect(
        client_id=client_id,
        protocol_name=name,
        protocol_level=level,
        clean_start=bool(flags & 2),
        keep_alive=keep_alive,
        will=will,
        username=username,
        password=password,
        properties=props,
    )


def connect_level(body: bytes) -> int | None:
    """The protocol level a CONNECT body announces, if its header can be read (best effort)."""
    if len(body) >= 2:
        n = (body[0] << 8) | body[1]
        if len(body) > 2 + n:
            return body[2 + n]
    return None


def _decode_connack(body: bytes, version: int) -> ConnAck:
    buf = _Buf(body)
    ack_flags = buf.byte()
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK reserved flags set")
    reason = buf.byte()
    props = _decode_properties(buf, CONNACK) if version >= 5 else NO_PROPERTIES
    if buf.remaining():
        raise MalformedPacket("trailing bytes")
    return ConnAck(session_present=bool(ack_flags), reason_code=reason, properties=props)


def _decode_subscribe(body: bytes, version: int) -> Subscribe:
    buf = _Buf(body)
    packet_id = buf.u16()
    if packet_id == 0:
        raise _protocol_error("packet identifier 0")
    props = _decode_properties(buf, SUBSCRIBE) if version >= 5 else NO_PROPERTIES
    subs: list[SubscriptionRequest] = []
    while buf.remaining():
        topic_filter = buf.string()
        opts = buf.byte()
        if version >= 5:
            if opts & 0xC0:
                raise MalformedPacket("subscription options reserved bits set")
            if (opts >> 4) & 3 == 3:
                raise _protocol_error("retain handling 3")
        elif opts & 0xFC:
            raise MalformedPacket("requested QoS byte reserved bits set")
        if opts & 3 == 3:
            raise MalformedPacket("requested QoS 3")
        subs.append(
            SubscriptionRequest(
                topic_filter=topic_filter,
                qos=opts & 3,
                no_local=bool(opts & 4),
                retain_as_published=bool(opts & 8),
                retain_handling=(opts >> 4) & 3,
            )
        )
    if not subs:
        raise _protocol_error("SUBSCRIBE with no topic filter")
    return Subscribe(packet_id=packet_id, subscriptions=tuple(subs), properties=props)


def _decode_suback(body: bytes, version: int) -> SubAck:
    buf = _Buf(body)
    packet_id = buf.u16()
    props = _decode_properties(buf, SUBACK) if version >= 5 else NO_PROPERTIES
    return SubAck(packet_id=packet_id, reason_codes=tuple(buf.rest()), properties=props)


def _decode_unsubscribe(body: bytes, version: int) -> Unsubscribe:
    buf = _Buf(body)
    packet_id = buf.u16()
    if packet_id == 0:
        raise _protocol_error("packet identifier 0")
    props = _decode_properties(buf, UNSUBSCRIBE) if version >= 5 else NO_PROPERTIES
    filters: list[str] = []
    while buf.remaining():
        filters.append(buf.string())
    if not filters:
        raise _protocol_error("UNSUBSCRIBE with no topic filter")
    return Unsubscribe(packet_id=packet_id, topic_filters=tuple(filters), properties=props)


def _decode_unsuback(body: bytes, version: int) -> UnsubAck:
    buf = _Buf(body)
    packet_id = buf.u16()
    if version >= 5:
        props = _decode_properties(buf, UNSUBACK)
        return UnsubAck(packet_id=packet_id, reason_codes=tuple(buf.rest()), properties=props)
    if buf.remaining():
        raise MalformedPacket("trailing bytes")
    return UnsubAck(packet_id=packet_id)


def _decode_disconnect(body: bytes, version: int) -> Disconnect:
    if version < 5:
        if body:
            raise MalformedPacket("DISCONNECT must have no body in MQTT 3.1.1")
        return Disconnect()
    buf = _Buf(body)
    reason = buf.byte() if buf.remaining() else 0
    if reason not in _DISCONNECT_REASONS:
        raise _protocol_error(f"reason code 0x{reason:02x} not allowed in DISCONNECT")
    props = _decode_properties(buf, DISCONNECT) if buf.remaining() else NO_PROPERTIES
    if buf.remaining():
        raise MalformedPacket("trailing bytes")
    return Disconnect(reason_code=reason, properties=props)


def _decode_auth(body: bytes) -> Auth:
    buf = _Buf(body)
    reason = buf.byte() if buf.remaining() else 0
    if reason not in (0x00, 0x18, 0x19):
        raise _protocol_error(f"reason code 0x{reason:02x} not allowed in AUTH")
    props = _decode_properties(buf, AUTH) if buf.remaining() else NO_PROPERTIES
    if buf.remaining():
        raise MalformedPacket("trailing bytes")
    return Auth(reason_code=reason, properties=props)


# -- stream framing ------------------------------------------------------------------------------


class PacketReader:
    """Cuts a byte stream into packets: ``feed(data)``, then iterate ``frames()``.

    A remaining length that is not a valid varint raises :class:`MalformedPacket`; a packet
    whose total size exceeds ``max_packet_size`` raises :class:`PacketTooLarge` as soon as its
    fixed header is read (its body is never buffered).
    """

    __slots__ = ("_buf", "_pos", "max_packet_size")

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        self.max_packet_size = max_packet_size
        """The largest packet (fixed header included) accepted, in bytes."""
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def buffered(self) -> int:
        """Bytes received but not yet returned as packets."""
        return len(self._buf) - self._pos

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next complete packet as ``(first byte, body)``, or None if more bytes are needed."""
        buf = self._buf
        pos = self._pos
        n = len(buf)
        if n - pos < 2:
            return None
        length = 0
        shift = 0
        i = pos + 1
        while True:
            if i >= n:
                if i - pos > 4:
                    raise MalformedPacket("remaining length longer than 4 bytes")
                return None
            b = buf[i]
            length |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                if b == 0 and shift:
                    raise MalformedPacket("remaining length not minimally encoded")
                break
            shift += 7
            if shift > 21:
                raise MalformedPacket("remaining length longer than 4 bytes")
        total = i - pos + length
        if total > self.max_packet_size:
            raise PacketTooLarge(total, self.max_packet_size)
        if i + length > n:
            return None
        first = buf[pos]
        body = bytes(buf[i : i + length])
        self._pos = i + length
        if self._pos == n:
            buf.clear()
            self._pos = 0
        return first, body

    def peek_body(self) -> bytes:
        """The bytes after the current packet's fixed header received so far (best effort)."""
        buf = self._buf
        i = self._pos + 1
        while i < len(buf) and buf[i] & 0x80:
            i += 1
        return bytes(buf[i + 1 : i + 64])

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """Every complete packet buffered now."""
        while True:
            frame = self.next_frame()
            if frame is None:
                return
            yield frame
