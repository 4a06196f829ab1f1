"""How AMQP messages and mqkit :class:`~mqkit.Message` objects map onto each other.

**AMQP to mqkit.** A ``basic.publish`` becomes a :class:`~mqkit.Message` whose ``data`` is
the body as ``bytes``, whose ``id`` is the ``message-id`` property (a generated id without
one), whose ``type`` is the ``type`` property, and whose ``meta`` holds the other facts:

=========================  ==============================================================
``amqp.exchange``          the exchange it was published to (``""``: the default exchange)
``amqp.routing_key``       its routing key
``amqp.content_type``      ``content-type``
``amqp.content_encoding``  ``content-encoding``
``amqp.delivery_mode``     ``delivery-mode`` (``"1"`` or ``"2"``)
``amqp.priority``          ``priority`` (0..255)
``amqp.correlation_id``    ``correlation-id``
``amqp.reply_to``          ``reply-to``
``amqp.expiration``        ``expiration`` (milliseconds, as published)
``amqp.message_id``        ``message-id`` (also the message's ``id``)
``amqp.timestamp``         ``timestamp`` (POSIX seconds)
``amqp.user_id``           ``user-id``
``amqp.app_id``            ``app-id``
``amqp.headers``           the ``headers`` table as JSON, when a value is not a string
any other key              a header whose value is a string: name -> value
=========================  ==============================================================

A message with an ``expiration`` (or entering a queue with ``x-message-ttl``) is a
:class:`~mqkit.TTLMessage` (``expires_at`` = arrival + the smaller of the two); in a queue
declared with ``x-max-priority`` it is a :class:`~mqkit.PriorityMessage` whose ``priority``
is the AMQP priority capped at the maximum (0 without one), so mqkit's priority buffer orders
it. Other queues stay FIFO whatever the priority property says, as in RabbitMQ.

**mqkit to AMQP.** A message published in-process reaches AMQP consumers with the body as
bytes (``bytes``-like as is, ``str`` UTF-8 encoded, anything else as compact JSON of the
store's serializer with content type ``application/json``), the properties of the
``amqp.*`` keys above, the other ``meta`` keys as string headers, ``message-id`` = the
message's ``id`` (for messages that did not come from AMQP), ``type`` = its ``type``, the
priority of a ``PriorityMessage`` (clamped to 0..255) and an ``expiration`` of the time left
until ``expires_at``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pamqp import commands

from mqkit.core.message import Message, PriorityMessage, PriorityTTLMessage, TTLMessage
from mqkit.plugins.persistence.serializer import encode_payload, to_json

__all__ = [
    "META_PREFIX",
    "body_of",
    "body_size",
    "message_from_publish",
    "properties_of",
    "publish_meta",
    "with_queue_rules",
]

META_PREFIX: Final = "amqp."
K_EXCHANGE: Final = "amqp.exchange"
K_ROUTING_KEY: Final = "amqp.routing_key"
K_HEADERS: Final = "amqp.headers"
K_PRIORITY: Final = "amqp.priority"
K_EXPIRATION: Final = "amqp.expiration"
K_MESSAGE_ID: Final = "amqp.message_id"
K_IN_PROCESS: Final = "amqp.in_process"
"""Set on an in-process message the gateway routed through ``amq.topic``."""

_SIMPLE: Final = (
    ("content_type", "amqp.content_type"),
    ("content_encoding", "amqp.content_encoding"),
    ("correlation_id", "amqp.correlation_id"),
    ("reply_to", "amqp.reply_to"),
    ("expiration", K_EXPIRATION),
    ("message_id", K_MESSAGE_ID),
    ("user_id", "amqp.user_id"),
    ("app_id", "amqp.app_id"),
)
_INTS: Final = (("delivery_mode", "amqp.delivery_mode"), ("priority", K_PRIORITY))

_ids = itertools.count(1)
_ID_PREFIX: Final = f"amqp-{os.getpid():x}-{os.urandom(3).hex()}-"


def jsonable(value: Any) -> Any:
    """``value`` (a field table, say) as JSON-ready data (bytes as text, times as seconds)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "as_tuple"):  # Decimal
        return str(value)
    return value


def message_from_publish(
    exchange: str,
    routing_key: str,
    props: commands.Basic.Properties,
    body: bytes,
    facts: Mapping[str, str] | None = None,
) -> Message:
    """The mqkit message of an AMQP publication (see the module docstring).

    ``facts`` is ``publish_meta(props)`` when the caller has it already.
    """
    meta: dict[str, str] = {K_EXCHANGE: exchange, K_ROUTING_KEY: routing_key}
    meta.update(publish_meta(props) if facts is None else facts)
    message_id = props.message_id or f"{_ID_PREFIX}{next(_ids)}"
    return Message(message_id, body, type=props.message_type or "", meta=meta)


def publish_meta(props: commands.Basic.Properties) -> dict[str, str]:
    """The ``meta`` entries of AMQP properties (all but exchange and routing key)."""
    meta: dict[str, str] = {}
    for attr, key in _SIMPLE:
        value = getattr(props, attr)
        if value is not None:
            meta[key] = str(value)
    for attr, key in _INTS:
        value = getattr(props, attr)
        if value is not None:
            meta[key] = str(int(value))
    if props.timestamp is not None:
        stamp = props.timestamp
        seconds = stamp.timestamp() if isinstance(stamp, datetime) else float(stamp)
        meta["amqp.timestamp"] = str(int(seconds))
    headers = props.headers
    if headers:
        if all(isinstance(v, str) and not k.startswith(META_PREFIX) for k, v in headers.items()):
            meta.update({k: str(v) for k, v in headers.items()})
        else:
            meta[K_HEADERS] = json.dumps(jsonable(headers), separators=(",", ":"))
    return meta


def _death_times(deaths: Any) -> None:
    """The ``time`` of each ``x-death`` entry as a timestamp again (JSON kept its seconds)."""
    if isinstance(deaths, list):
        for death in deaths:
            if isinstance(death, dict) and isinstance(death.get("time"), int):
                with contextlib.suppress(ValueError, OverflowError, OSError):
                    death["time"] = datetime.fromtimestamp(death["time"], UTC)


def expiration_seconds(text: str | None) -> float | None:
    """The seconds of an ``expiration`` property, None when absent; ``ValueError`` when bad."""
    if text is None:
        return None
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value / 1000.0


def with_queue_rules(
    message: Message, now: datetime, ttl: float | None, max_priority: int | None
) -> Message:
    """``message`` as a queue holds it: expiry (``expiration``, ``x-message-ttl``), priority."""
    meta = message.meta
    expiry: float | None = None
    try:
        expiry = expiration_seconds(meta.get(K_EXPIRATION))
    except ValueError:
        expiry = None
    if ttl is not None:
        expiry = ttl if expiry is None else min(expiry, ttl)
    old_expiry = getattr(message, "expires_at", None)
    expires_at = now + timedelta(seconds=expiry) if expiry is not None else old_expiry
    if max_priority is None and expires_at is None:
        return message
    common: dict[str, Any] = {"type": message.type, "meta": meta}
    if max_priority is not None:
        try:
            wanted = int(meta.get(K_PRIORITY, "0"))
        except ValueError:
            wanted = 0
        priority = max(0, min(wanted, max_priority))
        if expires_at is not None:
            return PriorityTTLMessage(
                message.id, message.data, priority=priority, expires_at=expires_at, **common
            )
        return PriorityMessage(message.id, message.data, priority=priority, **common)
    assert expires_at is not None
    return TTLMessage(message.id, message.data, expires_at=expires_at, **common)


def body_of(message: Message) -> tuple[bytes, str | None]:
    """The AMQP body of ``message`` and the content type that says how it was encoded."""
    data = message.data
    if isinstance(data, bytes):
        return data, None
    if isinstance(data, bytearray | memoryview):
        return bytes(data), None
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass"), "text/plain"
    return to_json(encode_payload(data)).encode(), "application/json"


def body_size(message: Message) -> int:
    """The length of the AMQP body ``message`` is delivered with."""
    data = message.data
    if isinstance(data, bytes | bytearray):
        return len(data)
    return len(body_of(message)[0])


def properties_of(message: Message, now: datetime) -> tuple[commands.Basic.Properties, bytes]:
    """The properties and body AMQP consumers receive ``message`` with."""
    body, content_type = body_of(message)
    meta: Mapping[str, str] = message.meta
    values: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    from_amqp = K_EXCHANGE in meta and K_IN_PROCESS not in meta
    for attr, key in _SIMPLE:
        if key in meta:
            values[attr] = meta[key]
    for attr, key in _INTS:
        if key in meta:
            try:
                number = int(meta[key])
            except ValueError:
                continue
            if 0 <= number <= 255:
                values[attr] = number
    if "priority" not in values:
        priority = getattr(message, "priority", None)
        if isinstance(priority, int):
            values["priority"] = max(0, min(int(priority), 255))
    if "amqp.timestamp" in meta:
        with contextlib.suppress(ValueError, OverflowError, OSError):
            values["timestamp"] = datetime.fromtimestamp(int(meta["amqp.timestamp"]), UTC)
    if K_HEADERS in meta:
        try:
            table = json.loads(meta[K_HEADERS])
            if isinstance(table, dict):
                headers.update(table)
                if "x-death" in table:
                    _death_times(table["x-death"])
        except ValueError:
            pass
    for key, value in meta.items():
        if not key.startswith(META_PREFIX):
            headers[key] = value
    if headers:
        values["headers"] = headers
    if not from_amqp:
        values.setdefault("message_id", message.id)
        if content_type is not None:
            values.setdefault("content_type", content_type)
    if message.type:
        values["message_type"] = message.type
    expires_at = getattr(message, "expires_at", None)
    if isinstance(expires_at, datetime) and not from_amqp:
        left = (expires_at - now).total_seconds()
        values["expiration"] = str(max(0, math.ceil(left * 1000)))
    return commands.Basic.Properties(**values), body
