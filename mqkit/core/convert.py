"""The one cattrs converter of mqkit: config files and mappings, status records, messages.

Everything that turns mqkit's attrs classes into plain data (JSON-ready dicts) or back goes
through :data:`converter`; messages and payloads too: the store's serializer
(:mod:`mqkit.plugins.persistence.serializer`) builds on it, not on a converter of its own. Its
hooks are strict where Python is lax: ``"false"`` is not ``True``, ``True`` is not the integer
``1``, and a duration may be given as seconds or a ``timedelta``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import cattrs

__all__ = ["converter", "parse_bool", "parse_seconds", "parse_str_tuple"]

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


def parse_bool(value: object) -> bool:
    """Read a boolean: a ``bool``, the integers ``0``/``1``, or ``true/false/1/0`` as text.

    Text is read in any case and without surrounding white space (``TRUE``, ``" false"``);
    anything else - ``yes``, ``on``, ``2``, ``1.0``, an empty string - is an error, not a guess.
    """
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
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
        try:
            return float(value)
        except OverflowError:  # an int beyond a float's range
            raise ValueError(f"expected a duration in seconds, got {value!r}") from None
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


def _describe_value_error(exc: BaseException, kind: Any) -> str:
    """A structuring error's text: our parsers' own (it names the value), else cattrs'."""
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, kind)


def describe_structure_error(exc: Exception) -> tuple[str, str | None]:
    """Turn a cattrs structuring error into ``(text, first offending field or None)``."""
    if isinstance(exc, cattrs.BaseValidationError):
        lines = cattrs.transform_error(exc, path="", format_exception=_describe_value_error)
        fields = []
        texts = []
        for line in lines:
            text, _, path = line.rpartition(" @ ") if " @ " in line else (line, "", "")
            path = path.lstrip(".")
            fields.append(path.split(".")[0].split("[")[0] or None)
            texts.append(f"{path}: {text}" if path else text)  # "max_topics: expected an ..."
        first = next((f for f in fields if f), None)
        return "; ".join(texts), first
    return str(exc), None


def unstructure(obj: Any) -> Any:
    """Return ``obj`` as plain, JSON-ready data."""
    return converter.unstructure(obj)
