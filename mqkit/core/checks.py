"""Checks of the numbers public calls take: finite seconds (timeouts, delays) and int limits.

NaN compares false with everything, so a NaN deadline is never reached (or always passed), and
an infinite one overflows a lock's timeout: both are refused where they come in, with
:class:`~mqkit.InvalidArgumentError` (a ``ValueError``) naming the argument and the value. Where
a timeout may wait for ever, ``None`` says so; infinity is refused like NaN.
"""

from __future__ import annotations

import sys
from typing import Final

from mqkit.core.errors import InvalidArgumentError

__all__ = ["as_finite", "describe", "finite_seconds", "int_limit"]

_FLOAT_MAX: Final = sys.float_info.max
_NOT_NUMBERS: Final = (str, bytes, bytearray, bool)


def describe(value: object) -> str:
    """``float nan``: a value's type and repr, for error texts."""
    return f"{type(value).__name__} {value!r}"


def as_finite(value: object) -> float | None:
    """``value`` if it is a finite real number (a float or int), else None.

    Plain ``float`` and ``int`` take two tests; other numbers (``Decimal``, ``Fraction``,
    NumPy's) are converted with ``float()``. A ``bool`` or text is no number here.
    """
    kind = value.__class__
    if kind is float:
        if value - value == 0.0:  # type: ignore[operator]  # false for NaN and +-inf
            return value  # type: ignore[return-value]
    elif kind is int:
        if -_FLOAT_MAX <= value <= _FLOAT_MAX:  # type: ignore[operator]
            return value  # type: ignore[return-value]
    elif not isinstance(value, _NOT_NUMBERS):
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            return None
        if seconds - seconds == 0.0:
            return seconds
    return None


def finite_seconds(value: object, name: str) -> float:
    """Return ``value`` (seconds) if it is a finite real number (:func:`as_finite`), else raise."""
    seconds = as_finite(value)
    if seconds is None:
        raise InvalidArgumentError.because(
            f"{name} must be a finite number of seconds, not {describe(value)}"
        )
    return seconds


def int_limit(value: object, name: str = "limit") -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``), else raise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidArgumentError.because(f"{name} must be an int, not {describe(value)}")
