"""Topic rules (the seed's): strip, non-empty, at most 1024 UTF-8 bytes; glob patterns.

A topic must also have a UTF-8 form without U+0000 (no lone surrogate): MQTT, AMQP and the
store all carry topics as UTF-8 strings, and MQTT forbids U+0000 in them. The broker validates
a topic string once and remembers it (its route cache), so the check costs nothing per publish.

Patterns follow Go's ``path.Match`` as the seed's pubsub uses it: ``*`` matches any run of
characters except ``/`` (so ``orders.*`` matches ``orders.created``), ``?`` one such character,
``[...]`` a class (``[^...]`` or ``[!...]`` negated, ``a-z`` ranges), ``\\`` escapes. A pattern
without any of these is an exact topic.

Filters follow MQTT's rules (3.1.1 and 5.0), for MQTT clients and in-process subscribers alike:
levels are separated by ``/``; ``+`` matches exactly one level and must fill a whole level; ``#``
matches any number of levels (the parent level included: ``a/#`` matches ``a``) and must be the
last level. Topics beginning with ``$`` are not matched by a filter whose first level is a
wildcard.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mqkit.core.config import MAX_TOPIC_LENGTH
from mqkit.core.errors import InvalidTopicError

__all__ = [
    "check_filter",
    "compile_filter",
    "compile_pattern",
    "filter_is_valid",
    "filter_matcher",
    "is_pattern",
    "normalize_topic",
    "pattern_matcher",
]

_GLOB_CHARS = frozenset("*?[\\")


def normalize_topic(topic: object) -> str:
    """Return the stripped topic, or raise :class:`InvalidTopicError` (seed texts)."""
    if not isinstance(topic, str):
        raise InvalidTopicError.because(f"topic must be a str, not {type(topic).__name__}")
    stripped = topic.strip()
    if not stripped:
        raise InvalidTopicError.because("cannot be empty")
    try:
        size = len(stripped.encode())
    except UnicodeEncodeError:  # a lone surrogate: the topic has no UTF-8 form
        raise InvalidTopicError.because("topic is not valid UTF-8") from None
    if "\x00" in stripped:
        raise InvalidTopicError.because("topic contains U+0000 (NUL)")
    if size > MAX_TOPIC_LENGTH:
        raise InvalidTopicError.because(f"topic too long (max {MAX_TOPIC_LENGTH} characters)")
    return stripped


def is_pattern(text: str) -> bool:
    """Whether ``text`` contains glob syntax."""
    return not _GLOB_CHARS.isdisjoint(text)


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """Compile a (normalized) glob pattern to a predicate on topics.

    Raises :class:`InvalidTopicError` for a malformed pattern (an unclosed ``[``, a trailing
    ``\\``, a reversed range).
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i + 1 >= n:
                raise InvalidTopicError.because(f"invalid pattern {pattern!r}: trailing escape")
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            i, cls = _parse_class(pattern, i + 1)
            out.append(cls)
        else:
            out.append(re.escape(c))
        i += 1
    try:
        regex = re.compile("".join(out), re.DOTALL)
    except re.error as exc:  # pragma: no cover - _parse_class rejects what re would
        raise InvalidTopicError.because(f"invalid pattern {pattern!r}: {exc}") from None
    match = regex.fullmatch
    return lambda topic: match(topic) is not None


def _parse_class(pattern: str, i: int) -> tuple[int, str]:
    """Parse ``[...]`` starting after the ``[``; return (index of ``]``, regex class)."""
    n = len(pattern)
    negate = i < n and pattern[i] in "^!"
    if negate:
        i += 1
    items: list[str] = []
    first = True
    while True:
        if i >= n:
            raise InvalidTopicError.because(f"invalid pattern {pattern!r}: unclosed '['")
        c = pattern[i]
        if c == "]" and not first:
            break
        first = False
        lo, i = _class_char(pattern, i)
        if i + 1 < n and pattern[i + 1] == "-" and i + 2 < n and pattern[i + 2] != "]":
            hi, i = _class_char(pattern, i + 2)
            if hi < lo:
                raise InvalidTopicError.because(f"invalid pattern {pattern!r}: bad range")
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
        else:
            items.append(re.escape(lo))
        i += 1
    body = "".join(items)
    return i, f"[^/{body}]" if negate else f"[{body}]"


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if pattern[i] == "\\":
        if i + 1 >= len(pattern):
            raise InvalidTopicError.because(f"invalid pattern {pattern!r}: trailing escape")
        return pattern[i + 1], i + 1
    return pattern[i], i


def filter_is_valid(topic_filter: str) -> bool:
    """Whether ``topic_filter`` is a valid MQTT topic filter (not a shared one)."""
    if not topic_filter:
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return True
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level == "#":
            if i != last:
                return False
        elif level != "+" and ("+" in level or "#" in level):
            return False
    return True


def check_filter(topic_filter: object) -> str:
    """Return the normalized filter, or raise :class:`InvalidTopicError` naming what is wrong."""
    text = normalize_topic(topic_filter)
    if not filter_is_valid(text):
        raise InvalidTopicError.because(
            f"invalid filter {text!r}: '+' must fill a whole level and '#' must be the whole "
            "last level (levels are separated by '/')"
        )
    return text


def filter_matcher(topic_filter: object) -> tuple[str, Callable[[str], bool] | None]:
    """Check a filter as ``subscribe_filter`` does; return it with its predicate.

    The predicate is None for a filter without ``+``/``#`` (an exact topic). Glob characters
    are refused (:class:`InvalidTopicError`): a filter is not a glob pattern.
    """
    text = check_filter(topic_filter)
    if is_pattern(text):
        raise InvalidTopicError.because(
            f"invalid filter {text!r}: glob characters (*?[\\) belong to subscribe_pattern"
        )
    if "+" not in text and "#" not in text:
        return text, None
    return text, compile_filter(text)


def pattern_matcher(pattern: object) -> tuple[str, Callable[[str], bool] | None]:
    """Check a glob pattern as ``subscribe_pattern`` does; return it with its predicate.

    The predicate is None for a pattern without glob syntax (an exact topic); a malformed
    pattern raises :class:`InvalidTopicError`.
    """
    text = normalize_topic(pattern)
    return text, compile_pattern(text) if is_pattern(text) else None


def compile_filter(topic_filter: str) -> Callable[[str], bool]:
    """A predicate telling whether a topic name matches ``topic_filter`` (a valid filter)."""
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter.__eq__
    if topic_filter == "#":
        return lambda topic: not topic.startswith("$")
    if topic_filter.endswith("/#") and "+" not in topic_filter:
        prefix = topic_filter[:-2]
        with_slash = prefix + "/"
        return lambda topic: topic == prefix or topic.startswith(with_slash)
    levels = topic_filter.split("/")
    if levels[-1] == "#":
        head = levels[:-1]
        tail = "(?:/.*)?" if head else ".*"  # "a/#" also matches "a"
    else:
        head, tail = levels, ""
    pattern = "/".join("[^/]*" if lv == "+" else re.escape(lv) for lv in head) + tail
    regex = re.compile(pattern, re.DOTALL)
    match = regex.fullmatch
    if levels[0] in ("+", "#"):
        return lambda topic: not topic.startswith("$") and match(topic) is not None
    return lambda topic: match(topic) is not None
