"""Messages and payloads <-> JSON: the one serializer of every mqkit store.

What the persistence store, the MQTT session store (and its retained messages), ``mqkit
inspect`` and the MQTT gateway's JSON payloads write and read goes through here:

- :func:`encode_payload` / :func:`decode_payload`: a payload as JSON-ready data and back
  (plain data, ``bytes``, datetimes, tuples, non-string keys, non-finite floats, and the attrs
  classes and dataclasses registered with :func:`register_payload_type` - each comes back as its
  own type);
- :func:`message_to_dict` / :func:`message_from_dict`: a message as JSON-ready data (its class
  name, its fields, the encoded payload) and back;
- :func:`check_fields`: refuses, before anything is written, a message whose fields would not
  read back;
- :func:`to_json` / :func:`stored_json`: the compact JSON text (orjson's with the ``fast``
  extra).

The fields go through mqkit's one cattrs converter (:data:`mqkit.core.convert.converter`);
payloads never do (their tags are this module's). Imports only :mod:`mqkit.core`.
"""

from __future__ import annotations

import base64
import enum
import functools
import json
import math
import operator
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import attrs

from mqkit.core.convert import converter
from mqkit.core.errors import SerializationError

__all__ = [
    "check_fields",
    "decode_message",
    "decode_payload",
    "encode_message",
    "encode_payload",
    "message_from_dict",
    "message_to_dict",
    "register_payload_type",
    "stored_json",
    "to_json",
]

# -- JSON text ------------------------------------------------------------------------------------


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_to_json() -> Callable[[object], str]:
    if c_make_encoder is None:  # not CPython
        encode: Callable[[object], str] = json.JSONEncoder(separators=(",", ":")).encode
        return encode
    encoder = c_make_encoder(
        None, _not_json, encode_basestring_ascii, None, ":", ",", False, False, True
    )

    def to_json(value: object) -> str:
        return "".join(encoder(value, 0))

    return to_json


to_json: Callable[[object], str] = _make_to_json()
"""Compact JSON text (``json.dumps(value, separators=(",", ":"))``, the same text), faster.

``json.dumps`` builds a new C encoder on every call, which costs more than encoding a small
message; this one is made once. It has no circular-reference check: give it JSON-ready data
(what :func:`message_to_dict` and :func:`encode_payload` return); too deep a nesting still
raises ``RecursionError``.
"""

try:  # the ``fast`` extra: the same JSON data in about a tenth of the stdlib encoder's time
    import orjson as _orjson  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the install
    _orjson = None  # type: ignore[assignment,unused-ignore]

fast_json: Callable[[object], bytes] | None = None if _orjson is None else _orjson.dumps
"""orjson's ``dumps`` with the ``fast`` extra installed, else None (see :func:`stored_json`)."""


def stored_json(value: object, *, fast: bool) -> str:
    """JSON text of ``value`` for a store; ``json.loads`` reads the data ``to_json(value)`` gives.

    With the ``fast`` extra and ``fast`` true (what :func:`check_fields` returned for the
    messages in ``value``: no default, so no caller skips the check), orjson writes it; what
    orjson refuses (a lone surrogate, an integer beyond 64 bits, nesting deeper than 254) goes
    through :func:`to_json`, as everything does without the extra. The texts differ only in how
    non-ASCII characters are written (UTF-8, not ``\\u`` escapes).
    """
    dumps = fast_json
    if fast and dumps is not None:
        try:
            return dumps(value).decode()
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return to_json(value)


_NONE = type(None)
_ONLY_BY_TYPE: dict[object, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    bool: (bool,),
    float: (float, int),
    datetime: (datetime,),
    str | None: (str, _NONE),
    int | None: (int, _NONE),
    float | None: (float, int, _NONE),
    datetime | None: (datetime, _NONE),
}
"""Annotations whose values read back by their type alone: instances of these (``bool`` only
where it is named: the converter reads ``True`` as no integer)."""
_STR_KIND: frozenset[type] = frozenset({str})


@attrs.define
class _Fields:
    """What :func:`check_fields` needs of a message class: its fields but data, meta and time."""

    names: tuple[str, ...]
    hints: tuple[Any, ...]
    accepts: tuple[tuple[type, ...] | None, ...]  # types that read back whatever the value
    values: Callable[[Any], tuple[Any, ...]]  # a C-level getter of the fields' values
    floats: tuple[int, ...]  # positions of the fields that may hold a float
    opaque: bool  # a field of another annotation: the stdlib encoder writes the class
    shapes: set[tuple[type, ...]] = attrs.field(factory=set)  # value types known to read back


class _FieldsByClass(dict[type, _Fields]):
    def __missing__(self, cls: type) -> _Fields:
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:  # cattrs could not write such a class either
            raise SerializationError.because(
                f"cannot store a message of class {cls.__qualname__}: its annotations do not "
                f"resolve ({exc!r})"
            ) from exc
        # ``time`` reads as a datetime or None (or raises: its property converts what the slot
        # holds), which message_to_dict writes; ``data`` is encode_payload's; ``meta`` apart.
        skip = ("data", "meta", "time")
        fields = [f for f in attrs.fields(cls) if f.init and f.name not in skip]
        names = tuple(f.name for f in fields)
        types = tuple(hints.get(f.name, f.type) for f in fields)
        accepts = tuple(_accepts(t) for t in types)
        found = _Fields(
            names=names,
            hints=types,
            accepts=accepts,
            values=_getter(names),
            floats=tuple(i for i, ok in enumerate(accepts) if ok is not None and float in ok),
            opaque=any(ok is None for ok in accepts),
        )
        self[cls] = found
        return found


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) > 1:
        return operator.attrgetter(*names)  # C: one call for all the fields
    return lambda message: tuple(getattr(message, name) for name in names)


def _accepts(hint: object) -> tuple[type, ...] | None:
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        return (hint,)
    try:
        return _ONLY_BY_TYPE.get(hint)
    except TypeError:  # an unhashable annotation
        return None


_fields = _FieldsByClass()


def check_fields(messages: Iterable[Any]) -> bool:
    """Refuse a message whose fields a store could not read back; say if orjson may write them.

    Every field but ``data`` (its payload: :func:`encode_payload`) must hold a value the
    converter reads back as its annotation says - attrs does not check annotations, so a float
    ``priority`` or a number in ``meta`` would be stored and then be unreadable:
    ``SerializationError`` names the message and the field. Values are checked by type where the
    type decides (a set of the value types seen per class: one lookup per message), else by a
    round trip through the converter and JSON. Returns False when orjson could write a field
    differently from the stdlib encoder (a non-finite float; a field of a class's own type).
    """
    fast = True
    by_class = _fields
    for message in messages:
        fields = by_class[message.__class__]
        values = fields.values(message)
        shape = tuple(map(type, values))
        if shape not in fields.shapes:
            _check_values(message, fields, values, shape)
        if fields.opaque:
            fast = False
        elif fields.floats:
            for i in fields.floats:
                value = values[i]
                if type(value) is float and not math.isfinite(value):
                    fast = False
        meta = message.meta
        if meta and not (set(map(type, meta)) | set(map(type, meta.values()))) <= _STR_KIND:
            raise SerializationError.because(
                f"message {message.id!r} cannot be stored: meta must map strings to strings, "
                f"got {dict(meta)!r}"
            )
    return fast


def _check_values(
    message: Any, fields: _Fields, values: tuple[Any, ...], shape: tuple[type, ...]
) -> None:
    by_type = True
    for name, hint, ok, value in zip(
        fields.names, fields.hints, fields.accepts, values, strict=True
    ):
        if ok is not None and isinstance(value, ok) and (type(value) is not bool or bool in ok):
            continue
        by_type = False
        try:  # what the store does with it: written, read, structured
            converter.structure(json.loads(to_json(converter.unstructure(value, hint))), hint)
        except Exception as exc:
            raise SerializationError.because(
                f"message {message.id!r} cannot be stored: its field {name!r} holds {value!r}, "
                f"which does not read back as {getattr(hint, '__name__', hint)}"
            ) from exc
    if by_type:
        fields.shapes.add(shape)


# -- payloads and messages (persistence, wire protocols) ------------------------------------------

_payload_types: dict[str, type] = {}
_payload_names: dict[type, str] = {}
_INF = float("inf")
_NEG_INF = float("-inf")


def register_payload_type(cls: type, name: str | None = None) -> None:
    """Let payloads of ``cls`` (an attrs class or dataclass) be stored and come back as ``cls``.

    A subclass of :class:`~mqkit.Message` is registered the same way, so that messages of it
    can be stored (persistence) and come back as that class.

    ``name`` (default: ``module.QualName``) is what is written to the store; keep it stable.
    """
    key = name or f"{cls.__module__}.{cls.__qualname__}"
    _payload_types[key] = cls
    _payload_names[cls] = key


def encode_payload(value: Any) -> Any:
    """Turn a payload into JSON-ready data that :func:`decode_payload` turns back.

    Supported: None, bool, int, float, str, bytes, lists, tuples and dicts of them (any
    hashable supported keys), timezone-aware or naive datetimes, and registered attrs classes or
    dataclasses - exactly these types, so that each comes back as itself: a subclass (an
    ``IntEnum``, a named tuple, an ``OrderedDict``) or anything else raises
    :class:`~mqkit.SerializationError`, and so does a circular or too deeply nested payload.
    The result may share containers with ``value`` (a dict that is JSON-ready already is
    returned as it is): encode it to text, do not change it.
    """
    try:
        return _encode(value)
    except RecursionError:
        raise SerializationError.because(
            "cannot store a payload that is circular or too deeply nested"
        ) from None


_AS_IS: frozenset[type] = frozenset({str, int, bool, type(None)})  # JSON-ready as they are
_STR_ONLY: frozenset[type] = frozenset({str})


def _encode(value: Any) -> Any:
    kind = type(value)
    if kind in _AS_IS:
        return value
    if kind is dict:
        # String keys are written as they are, unless the dict could be read as one of the
        # tagged forms below (one "$" key, or "$type" and "value"); other keys need "$dict".
        if set(map(type, value)) <= _STR_ONLY and (
            len(value) > 2 or not any(k[:1] == "$" for k in value)
        ):
            if set(map(type, value.values())) <= _AS_IS:
                return value  # already JSON-ready: shared, not copied (nothing changes it)
            return {k: v if type(v) in _AS_IS else _encode(v) for k, v in value.items()}
        return {"$dict": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if kind is list:
        return [v if type(v) in _AS_IS else _encode(v) for v in value]
    if kind is float:
        if value != value or value in (_INF, _NEG_INF):
            return {"$float": repr(value)}
        return value
    if kind is bytes:
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if kind is datetime:
        return {"$datetime": value.isoformat()}
    if kind is tuple:
        return {"$tuple": [_encode(v) for v in value]}
    name = _payload_names.get(kind)
    if name is not None:
        try:
            fields = converter.unstructure(value)
        except RecursionError:
            raise
        except Exception as exc:  # a field whose value does not fit its declared type
            raise SerializationError.because(
                f"cannot store a payload of type {kind.__qualname__}: {exc!r}"
            ) from exc
        return {"$type": name, "value": _encode(fields)}
    raise SerializationError.because(
        f"cannot store a payload of type {kind.__qualname__} "
        "(register it with mqkit.register_payload_type)"
    )


def decode_payload(data: Any) -> Any:
    """The inverse of :func:`encode_payload`; ``SerializationError`` for malformed data."""
    try:
        if isinstance(data, list):
            return [decode_payload(v) for v in data]
        if not isinstance(data, dict):
            return data
        if len(data) == 1:
            ((tag, inner),) = data.items()
            if tag == "$bytes":
                return base64.b64decode(inner, validate=True)
            if tag == "$datetime":
                return datetime.fromisoformat(inner)
            if tag == "$tuple":
                return tuple(decode_payload(v) for v in inner)
            if tag == "$dict":
                return {_hashable(decode_payload(k)): decode_payload(v) for k, v in inner}
            if tag == "$float":
                return float(inner)
        if set(data) == {"$type", "value"}:
            cls = _payload_types.get(data["$type"])
            if cls is None:
                raise SerializationError.because(f"unknown payload type {data['$type']!r}")
            return converter.structure(decode_payload(data["value"]), cls)
        return {k: decode_payload(v) for k, v in data.items()}
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError.because(f"malformed stored payload: {exc!r}") from exc


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


_message_unstructurers: dict[type, tuple[str, Callable[[Any], dict[str, Any]]]] = {}


def _meta_dict(meta: Mapping[str, str]) -> dict[str, str]:
    return dict(meta) if meta else {}


def message_to_dict(message: Any) -> dict[str, Any]:
    """A message as JSON-ready data: its class name, fields, and the encoded payload.

    The payload goes through :func:`encode_payload` only (cattrs never walks it). The class is
    a built-in message class or one registered with :func:`register_payload_type`; any other
    raises :class:`~mqkit.SerializationError` (it could not be read back).
    """
    cls = type(message)
    known = _message_unstructurers.get(cls)
    if known is None:
        from cattrs.gen import make_dict_unstructure_fn, override

        from mqkit.core import message as messages

        name = cls.__name__ if getattr(messages, cls.__name__, None) is cls else None
        name = name or _payload_names.get(cls)
        if name is None:
            raise SerializationError.because(
                f"cannot store a message of class {cls.__qualname__} "
                "(register it with mqkit.register_payload_type)"
            )
        fields = make_dict_unstructure_fn(
            cls, converter, data=override(omit=True), meta=override(unstruct_hook=_meta_dict)
        )
        known = (name, fields)
        _message_unstructurers[cls] = known
    name, unstructure_fields = known
    data = unstructure_fields(message)
    data["data"] = encode_payload(message.data)
    data["$class"] = name
    return data


def message_from_dict(data: dict[str, Any]) -> Any:
    """The inverse of :func:`message_to_dict` (built-in and registered message classes)."""
    from mqkit.core import message as messages

    fields = dict(data)
    name = str(fields.pop("$class", "Message"))
    cls = getattr(messages, name, None) or _payload_types.get(name)
    if not (isinstance(cls, type) and issubclass(cls, messages.Message)):
        raise SerializationError.because(f"unknown message class {name!r}")
    payload = decode_payload(fields.pop("data", None))
    untyped = _data_is_any(typing.cast(type, cls))  # (mypy: a class object is hashable)
    if untyped:  # cattrs hands an ``Any`` field its value as it is: no second object
        fields["data"] = payload
    try:
        message = converter.structure(fields, cls)
    except Exception as exc:
        raise SerializationError.because(f"malformed stored message: {exc!r}") from exc
    return message if untyped else attrs.evolve(message, data=payload)


@functools.cache
def _data_is_any(cls: type) -> bool:
    """Whether the message class's ``data`` field is typed ``Any`` (cattrs passes it through)."""
    field = attrs.fields_dict(cls).get("data")
    return field is not None and field.type in (Any, "Any")


def decode_message(text: str | bytes) -> Any:
    """The message of a stored JSON text (``str``, or UTF-8 ``bytes`` as Redis returns it).

    ``json.loads`` reads it, not orjson: orjson reads an integer beyond 64 bits as a float,
    and telling such a text apart costs about what orjson would save.
    """
    return message_from_dict(json.loads(text))


def encode_message(message: Any) -> str:
    """A message's stored JSON text; ``SerializationError`` (naming it) when it cannot be stored.

    :func:`check_fields`, then :func:`stored_json` of :func:`message_to_dict`: what the
    persistence store writes for a message stored alone.
    """
    try:
        fast = check_fields((message,))
        return stored_json(message_to_dict(message), fast=fast)
    except SerializationError:
        raise
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise SerializationError.because(f"message {message.id!r} cannot be stored: {exc}") from exc
