"""The one cattrs converter of mqkit: config files and mappings, status records, messages.

Everything that turns mqkit's attrs classes into plain data (JSON-ready dicts) or back goes
through :data:`converter`. Its hooks are strict where Python is lax: ``"false"`` is not ``True``,
``True`` is not the integer ``1``, and a duration may be given as seconds or a ``timedelta``.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import attrs
import cattrs

from mqkit.core.errors import SerializationError

__all__ = ["converter", "parse_bool", "parse_seconds", "parse_str_tuple"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(value: object) -> bool:
    """Read a boolean: ``bool``, ``0``/``1``, or ``true/false/1/0/yes/no/on/off``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"expected a boolean (true/false/1/0), got {value!r}")


def parse_int(value: object) -> int:
    """Read an integer: an ``int`` (not a ``bool``) or a decimal string."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def parse_seconds(value: object) -> float:
    """Read a duration in seconds: a number, a ``timedelta`` or a numeric string."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration in seconds, got {value!r}")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a duration in seconds, got {value!r}")


def parse_str(value: object) -> str:
    """Read a string (no silent ``str()`` of other types)."""
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {value!r}")


def parse_str_tuple(value: object) -> tuple[str, ...]:
    """Read a list of strings: a list/tuple of strings or one comma-separated string."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple):
        return tuple(parse_str(v) for v in value)
    raise ValueError(f"expected a list of strings, got {value!r}")


def _structure_datetime(value: object, _: type) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    raise ValueError(f"expected an ISO 8601 datetime, got {value!r}")


_last_time: tuple[datetime | None, str] = (None, "")


def _datetime_text(value: datetime) -> str:
    """``value.isoformat()``, remembering the last one: a batch's messages share one instant."""
    global _last_time
    last, text = _last_time  # one read of an immutable pair: safe from any thread
    if value is not last:
        text = value.isoformat()
        _last_time = (value, text)
    return text


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(bool, lambda v, _: parse_bool(v))
    conv.register_structure_hook(int, lambda v, _: parse_int(v))
    conv.register_structure_hook(float, lambda v, _: parse_seconds(v))
    conv.register_structure_hook(str, lambda v, _: parse_str(v))
    # IntEnum comes before int in an IntEnum's MRO: without this, int's hook would take it.
    conv.register_structure_hook(enum.IntEnum, lambda v, t: t(v))
    conv.register_structure_hook(enum.Enum, lambda v, t: t(v))
    conv.register_structure_hook_func(
        lambda t: t == tuple[str, ...], lambda v, _: parse_str_tuple(v)
    )
    conv.register_structure_hook(datetime, _structure_datetime)
    conv.register_unstructure_hook(datetime, _datetime_text)
    conv.register_unstructure_hook(timedelta, lambda d: d.total_seconds())
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum),
        lambda e: e.value,
    )
    conv.register_unstructure_hook_func(
        lambda t: t is Mapping or getattr(t, "__origin__", None) is Mapping,
        lambda m: {k: conv.unstructure(v) for k, v in m.items()},
    )
    return conv


converter: cattrs.Converter = _make_converter()
"""The shared converter. ``converter.unstructure(obj)`` gives JSON-ready data."""


def describe_structure_error(exc: Exception) -> tuple[str, str | None]:
    """Turn a cattrs structuring error into ``(text, first offending field or None)``."""
    if isinstance(exc, cattrs.BaseValidationError):
        lines = cattrs.transform_error(exc, path="")
        fields = []
        for line in lines:
            path = line.rsplit(" @ ", 1)[-1] if " @ " in line else ""
            fields.append(path.lstrip(".").split(".")[0].split("[")[0] or None)
        first = next((f for f in fields if f), None)
        return "; ".join(lines), first
    return str(exc), None


def unstructure(obj: Any) -> Any:
    """Return ``obj`` as plain, JSON-ready data."""
    return converter.unstructure(obj)


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


def stored_json(value: object, messages: Iterable[Any]) -> str:
    """JSON text of ``value`` for a store; ``json.loads`` reads the data ``to_json(value)`` gives.

    ``value`` is JSON-ready data holding :func:`message_to_dict` of ``messages`` (and plain
    keys). With the ``fast`` extra, orjson writes it, unless a message holds a value orjson
    would write differently or refuses: a non-finite float in a field (orjson writes ``null``;
    payloads are safe, :func:`encode_payload` tags such floats), a field of any type other than
    strings, integers, finite floats, ``None`` and datetimes, a lone surrogate, an integer beyond
    64 bits. Those go through :func:`to_json`. The texts differ only in how non-ASCII characters
    are written (UTF-8, not ``\\u`` escapes).
    """
    dumps = fast_json
    if dumps is not None and _plain_fields(messages):
        try:
            return dumps(value).decode()
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return to_json(value)


class _FieldGetters(dict[type, Callable[[Any], tuple[Any, ...]]]):
    """Per message class: a C-level getter of its fields' values (but ``data``, ``meta``, ``time``).

    ``Message.time`` always reads as a ``datetime`` or None (its property converts): not checked.
    """

    def __missing__(self, cls: type) -> Callable[[Any], tuple[Any, ...]]:
        skip = ("data", "meta", "time")
        names = [f.name for f in attrs.fields(cls) if f.init and f.name not in skip]
        getter: Callable[[Any], tuple[Any, ...]] = (
            operator.attrgetter(*names)
            if len(names) > 1
            else lambda m: tuple(getattr(m, n) for n in names)
        )
        self[cls] = getter
        return getter


_field_values = _FieldGetters()
_PLAIN_KINDS: frozenset[type] = frozenset({str, int, bool, type(None), datetime})
_STR_KIND: frozenset[type] = frozenset({str})


def _plain_fields(messages: Iterable[Any]) -> bool:
    """Whether every field of every message (payloads aside) is written alike by both encoders.

    By value, not by annotation (attrs does not check types): each value's type must be a plain
    one, an ``int`` subclass (the enums), or a finite float; ``meta`` must map to strings.
    """
    for message in messages:
        values = _field_values[type(message)](message)
        kinds = set(map(type, values))
        if not kinds <= _PLAIN_KINDS:
            for kind in kinds - _PLAIN_KINDS:
                if not (issubclass(kind, int) or kind is float):
                    return False
            if float in kinds and not all(math.isfinite(v) for v in values if type(v) is float):
                return False
        meta = message.meta
        if meta and not set(map(type, meta.values())) <= _STR_KIND:
            return False
    return True


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
    try:
        message = converter.structure(fields, cls)
    except Exception as exc:
        raise SerializationError.because(f"malformed stored message: {exc!r}") from exc
    return attrs.evolve(message, data=payload)
