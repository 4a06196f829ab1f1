"""How MQTT application messages and mqkit :class:`~mqkit.Message` objects map onto each other.

**MQTT to mqkit.** A PUBLISH (or a will) from an MQTT client is published in-process as a
:class:`~mqkit.Message` (a :class:`~mqkit.TTLMessage` when it has a Message Expiry Interval,
``expires_at`` = arrival + interval) whose ``data`` is the payload as ``bytes`` and whose
``meta`` holds the MQTT facts:

==========================  =========================================================
``mqtt.qos``                the publication QoS, ``"0"``, ``"1"`` or ``"2"``
``mqtt.retain``             ``"1"`` when the RETAIN flag was set
``mqtt.client_id``          the publishing client's identifier
``mqtt.content_type``       Content Type (v5)
``mqtt.payload_format``     ``"1"`` when the Payload Format Indicator says UTF-8 (v5)
``mqtt.response_topic``     Response Topic (v5)
``mqtt.correlation_data``   Correlation Data, hex-encoded (v5)
``mqtt.message_expiry``     the Message Expiry Interval as published, seconds (v5)
``mqtt.user_properties``    every user property as a JSON list of pairs, only when a name
                            repeats or begins with ``mqtt.``
any other key               a user property (v5): name -> value
==========================  =========================================================

**mqkit to MQTT.** A message published in-process reaches MQTT subscribers with:

- the payload as bytes: ``bytes``/``bytearray``/``memoryview`` as is, ``str`` UTF-8 encoded
  (Payload Format Indicator 1), anything else serialised by the store's serializer
  (:func:`mqkit.plugins.persistence.serializer.encode_payload`, then compact JSON; Content
  Type ``application/json`` unless ``mqtt.content_type`` says otherwise);
- the QoS of ``mqtt.qos`` (default 1), capped by each subscription's QoS;
- properties (v5 subscribers) from the ``mqtt.*`` keys above, user properties from the
  other keys (``meta`` keys are user properties unless they begin with ``mqtt.``), and a
  Message Expiry Interval of the time left until ``expires_at`` (a message that expired is
  never sent).

A message MQTT cannot carry (:func:`wire_string`: a topic, or for MQTT 5 a property, that
holds a character MQTT forbids or exceeds 65,535 bytes) is not sent: :class:`Outgoing` says
why, once per message, and the session drops it for that client.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from mqkit.core.message import Message, TTLMessage
from mqkit.plugins.persistence.serializer import encode_payload, to_json
from mqkit.protocols.mqtt.codec import NO_PROPERTIES, Properties, encode_varint

__all__ = [
    "DEFAULT_QOS",
    "META_PREFIX",
    "Outgoing",
    "Unsendable",
    "message_from_publish",
    "new_message_id",
    "wire_string",
]

META_PREFIX: Final = "mqtt."
DEFAULT_QOS: Final = 1
"""The publication QoS of an in-process message without ``mqtt.qos``."""

K_QOS: Final = "mqtt.qos"
K_RETAIN: Final = "mqtt.retain"
K_CLIENT: Final = "mqtt.client_id"
K_CONTENT_TYPE: Final = "mqtt.content_type"
K_FORMAT: Final = "mqtt.payload_format"
K_RESPONSE: Final = "mqtt.response_topic"
K_CORRELATION: Final = "mqtt.correlation_data"
K_EXPIRY: Final = "mqtt.message_expiry"
K_USER: Final = "mqtt.user_properties"

_ids = itertools.count(1)
_ID_PREFIX: Final = f"mqtt-{os.getpid():x}-{os.urandom(3).hex()}-"


def new_message_id() -> str:
    """A process-unique id for a message that arrived over MQTT."""
    return f"{_ID_PREFIX}{next(_ids)}"


def message_from_publish(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    client_id: str,
    properties: Properties,
    now: datetime,
) -> Message:
    """The in-process message for an MQTT publication (see the module docstring)."""
    meta: dict[str, str] = {K_QOS: _QOS_TEXT[qos], K_CLIENT: client_id}
    if retain:
        meta[K_RETAIN] = "1"
    if properties is NO_PROPERTIES:
        return Message(new_message_id(), payload, topic=topic, meta=meta)
    p = properties
    if p.content_type is not None:
        meta[K_CONTENT_TYPE] = p.content_type
    if p.payload_format_indicator:
        meta[K_FORMAT] = "1"
    if p.response_topic is not None:
        meta[K_RESPONSE] = p.response_topic
    if p.correlation_data is not None:
        meta[K_CORRELATION] = p.correlation_data.hex()
    if p.user_properties:
        names = [k for k, _ in p.user_properties]
        if len(set(names)) != len(names) or any(n.startswith(META_PREFIX) for n in names):
            meta[K_USER] = json.dumps([list(kv) for kv in p.user_properties])
        for k, v in p.user_properties:
            if not k.startswith(META_PREFIX):
                meta[k] = v
    if p.message_expiry_interval is not None:
        meta[K_EXPIRY] = str(p.message_expiry_interval)
        return TTLMessage(
            new_message_id(),
            payload,
            topic=topic,
            meta=meta,
            expires_at=now + timedelta(seconds=p.message_expiry_interval),
        )
    return Message(new_message_id(), payload, topic=topic, meta=meta)


_QOS_TEXT: Final = ("0", "1", "2")


class Outgoing:
    """What an in-process message looks like on the wire (computed once per message).

    ``payload`` is the bytes to send, ``qos`` the publication QoS, ``retain`` the RETAIN flag
    as published, ``expires_at`` the expiry instant (or None), and ``props`` the v5 property
    bytes except the expiry interval and subscription identifiers (which vary per send).

    ``problem`` says why no MQTT client can be sent the message (its topic or payload breaks
    MQTT's rules, see :func:`wire_string`), ``v5_problem`` why an MQTT 5 client cannot (that,
    or a property: a ``meta`` key or value); None when it can be sent.
    """

    __slots__ = (
        "client_id",
        "expires_at",
        "message",
        "payload",
        "problem",
        "props",
        "qos",
        "retain",
        "topic_bytes",
        "v5_problem",
    )

    def __init__(self, message: Message) -> None:
        self.message = message
        meta: Mapping[str, str] = message.meta
        data: Any = message.data
        content_type = meta.get(K_CONTENT_TYPE)
        payload_format = meta.get(K_FORMAT) == "1"
        problem: str | None = None
        payload = b""
        try:
            if isinstance(data, bytes):
                payload = data
            elif isinstance(data, bytearray | memoryview):
                payload = bytes(data)
            elif isinstance(data, str):
                payload = data.encode()
                payload_format = True
            else:
                payload = to_json(encode_payload(data)).encode()
                payload_format = True
                if content_type is None:
                    content_type = "application/json"
        except UnicodeEncodeError:
            problem = "the payload (a str) holds a lone surrogate: it has no UTF-8 form"
        except Exception as exc:  # not serialisable: no client can be sent it
            problem = f"the payload cannot be serialised: {exc}"
        self.payload = payload
        try:
            self.topic_bytes = wire_string(message.topic, "the topic")
        except Unsendable as exc:
            self.topic_bytes = b""
            problem = problem or str(exc)
        qos_text = meta.get(K_QOS)
        self.qos = _QOS_TEXT.index(qos_text) if qos_text in _QOS_TEXT else DEFAULT_QOS
        self.retain = meta.get(K_RETAIN) == "1"
        self.client_id = meta.get(K_CLIENT)
        self.expires_at: datetime | None = getattr(message, "expires_at", None)
        self.problem = problem
        try:
            self.props = _property_block(meta, content_type, payload_format)
        except Unsendable as exc:
            self.props = b""
            problem = problem or str(exc)
        self.v5_problem = problem

    def properties(self, now: datetime | None, sub_ids: tuple[int, ...]) -> bytes | None:
        """The v5 property block for one send; None when the message has expired."""
        extra = b""
        if self.expires_at is not None and now is not None:
            left = (self.expires_at - now).total_seconds()
            if left <= 0:
                return None
            extra = b"\x02" + min(math.ceil(left), 0xFFFFFFFF).to_bytes(4, "big")
        for sid in sub_ids:
            extra += b"\x0b" + encode_varint(sid)
        body = self.props + extra if extra else self.props
        return encode_varint(len(body)) + body


class Unsendable(Exception):
    """A string MQTT cannot carry (its text names the string and the reason)."""


# What MQTT's UTF-8 strings (v5 1.5.4, 3.1.1 1.5.3) must not hold - U+0000 and surrogates - and
# what they should not, which a receiver may treat as malformed (libmosquitto does): control
# characters U+0001-U+001F and U+007F-U+009F, and the noncharacters.
_FORBIDDEN: Final = re.compile(
    "[\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff\\ufdd0-\\ufdef"
    + "".join(
        f"\\U{plane | 0xFFFE:08x}\\U{plane | 0xFFFF:08x}" for plane in range(0, 0x110000, 0x10000)
    )
    + "]"
)


def wire_string(text: object, what: str) -> bytes:
    """``text`` as MQTT string bytes (UTF-8, without its length prefix).

    Raises :class:`Unsendable` naming ``what`` when MQTT forbids the string: not a ``str``, a
    character of ``_FORBIDDEN``, or more than 65,535 bytes. It runs once per message
    (:class:`Outgoing` is cached): for printable ASCII, two C calls and the encode; else one
    regular expression search too.
    """
    try:
        return _utf8(text)
    except Unsendable as exc:
        raise Unsendable(f"{what} {exc}") from None


def _utf8(text: object) -> bytes:
    """:func:`wire_string` without the name (its error says only why)."""
    if not isinstance(text, str):
        raise Unsendable("is not a str")
    # Printable ASCII (the usual case) holds none of them; two C calls say so.
    if not (text.isascii() and text.isprintable()):
        bad = _FORBIDDEN.search(text)
        if bad is not None:
            raise Unsendable(f"contains {_describe(bad.group())}")
    raw = text.encode()
    if len(raw) > 65535:
        raise Unsendable("is longer than 65535 UTF-8 bytes")
    return raw


def _describe(char: str) -> str:
    code = ord(char)
    if code == 0:
        return "U+0000 (NUL)"
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate (U+{code:04X})"
    if code <= 0x9F:
        return f"a control character (U+{code:04X})"
    return f"a noncharacter (U+{code:04X})"


def _short(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:40] + "...")


def _str(text: object, what: str) -> bytes:
    raw = wire_string(text, what)
    return len(raw).to_bytes(2, "big") + raw


def _property_block(
    meta: Mapping[str, str], content_type: str | None, payload_format: bool
) -> bytes:
    """The v5 properties that come from ``meta`` (raises :class:`Unsendable`)."""
    out = bytearray()
    if payload_format:
        out += b"\x01\x01"
    if content_type is not None:
        out += b"\x03" + _str(content_type, f"meta {K_CONTENT_TYPE!r}")
    response = meta.get(K_RESPONSE)
    if response is not None:
        what = f"meta {K_RESPONSE!r}"
        out += b"\x08" + _str(response, what)
        if not response:
            raise Unsendable(f"{what} is not a topic name: it is empty")
        if "+" in response or "#" in response:
            raise Unsendable(f"{what} is not a topic name: it holds a wildcard")
    correlation = meta.get(K_CORRELATION)
    if correlation is not None:
        try:
            raw = bytes.fromhex(correlation)
        except ValueError:
            raw = wire_string(correlation, f"meta {K_CORRELATION!r}")
        if len(raw) > 65535:
            raise Unsendable(f"meta {K_CORRELATION!r} is longer than 65535 bytes")
        out += b"\x09" + len(raw).to_bytes(2, "big") + raw
    users = meta.get(K_USER)
    pairs: list[tuple[str, str]] | None = None
    if users is not None:
        try:
            pairs = [(str(k), str(v)) for k, v in json.loads(users)]
        except (ValueError, TypeError):
            pairs = None
    if pairs is None:
        pairs = [
            (k, v) for k, v in meta.items() if not k.startswith(META_PREFIX) and isinstance(v, str)
        ]
    for k, v in pairs:  # names are made only for an error: this loop runs for every message
        try:
            name = _utf8(k)
        except Unsendable as exc:
            raise Unsendable(f"meta key {_short(k)} {exc}") from None
        try:
            value = _utf8(v)
        except Unsendable as exc:
            raise Unsendable(f"meta {_short(k)} {exc}") from None
        out += b"\x26" + _pack_h(len(name)) + name + _pack_h(len(value)) + value
    return bytes(out)


_pack_h: Final = struct.Struct(">H").pack
