"""The one cattrs converter of mqkit: config files and mappings, status records, messages.

Everything that turns mqkit's attrs classes into plain data (JSON-ready dicts) or back goes
through :data:`converter`. Its hooks are strict where Python is lax: ``"false"`` is not ``True``,
``True`` is not the integer ``1``, and a duration may be given as seconds or a ``timedelta``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs
import cattrs

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
    conv.register_unstructure_hook(datetime, lambda d: d.isoformat())
    conv.register_unstructure_hook(timedelta, lambda d: d.total_seconds())
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum),
        lambda e: e.value,
    )
    conv.register_unstructure_hook_func(
        lambda t: t is Mapping or getattr(t, "__origin__", None) is Mapping,
        lambda m: dict(m),
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


# -- payloads and messages (persistence, wire protocols) ------------------------------------------

_payload_types: dict[str, type] = {}
_payload_names: dict[type, str] = {}


def register_payload_type(cls: type, name: str | None = None) -> None:
    """Let payloads of ``cls`` (an attrs class or dataclass) be stored and come back as ``cls``.

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
    """
    from mqkit.core.errors import SerializationError

    try:
        return _encode(value)
    except RecursionError:
        raise SerializationError.because(
            "cannot store a payload that is circular or too deeply nested"
        ) from None


def _encode(value: Any) -> Any:
    from mqkit.core.errors import SerializationError

    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            return {"$float": repr(value)}
        return value
    if kind is bytes:
        import base64

        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if kind is datetime:
        return {"$datetime": value.isoformat()}
    if kind is list:
        return [_encode(v) for v in value]
    if kind is tuple:
        return {"$tuple": [_encode(v) for v in value]}
    if kind is dict:
        if all(type(k) is str and not k.startswith("$") for k in value):
            return {k: _encode(v) for k, v in value.items()}
        return {"$dict": [[_encode(k), _encode(v)] for k, v in value.items()]}
    name = _payload_names.get(kind)
    if name is not None:
        return {"$type": name, "value": _encode(converter.unstructure(value))}
    raise SerializationError.because(
        f"cannot store a payload of type {kind.__qualname__} "
        "(register it with mqkit.register_payload_type)"
    )


def decode_payload(data: Any) -> Any:
    """The inverse of :func:`encode_payload`; ``SerializationError`` for malformed data."""
    from mqkit.core.errors import SerializationError

    try:
        if isinstance(data, list):
            return [decode_payload(v) for v in data]
        if not isinstance(data, dict):
            return data
        if len(data) == 1:
            ((tag, inner),) = data.items()
            if tag == "$bytes":
                import base64

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


def message_to_dict(message: Any) -> dict[str, Any]:
    """A message as JSON-ready data: its class name, fields, and the encoded payload."""
    data: dict[str, Any] = converter.unstructure(message)
    data["data"] = encode_payload(message.data)
    data["$class"] = type(message).__name__
    return data


def message_from_dict(data: dict[str, Any]) -> Any:
    """The inverse of :func:`message_to_dict` (built-in message classes)."""
    from mqkit.core import message as messages
    from mqkit.core.errors import SerializationError

    fields = dict(data)
    name = fields.pop("$class", "Message")
    cls = getattr(messages, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, messages.Message)):
        raise SerializationError.because(f"unknown message class {name!r}")
    payload = decode_payload(fields.pop("data", None))
    try:
        message = converter.structure(fields, cls)
    except Exception as exc:
        raise SerializationError.because(f"malformed stored message: {exc!r}") from exc
    return attrs.evolve(message, data=payload)
