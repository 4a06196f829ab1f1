"""MQTT topic names and topic filters: validation, matching, shared subscriptions, ACL cover.

The rules are MQTT's (both 3.1.1 and 5.0): levels are separated by ``/``; ``+`` matches exactly
one level and must fill a whole level; ``#`` matches any number of levels (the parent level
included: ``a/#`` matches ``a``) and must be the last level; a topic name contains neither.
Topics beginning with ``$`` are not matched by a filter whose first level is a wildcard.
A shared subscription is ``$share/<group>/<filter>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import attrs

__all__ = [
    "KEY_PREFIX",
    "SharedFilter",
    "compile_filter",
    "covers",
    "filter_is_valid",
    "parse_shared",
    "topic_is_valid",
]

MAX_TOPIC_BYTES = 65535

KEY_PREFIX: Final = "mqtt:"
"""Broker subscription keys of MQTT filters: ``mqtt:<filter>``."""


def topic_is_valid(topic: str) -> bool:
    """Whether ``topic`` is a valid topic name to publish to (no wildcards, not empty)."""
    return bool(topic) and "+" not in topic and "#" not in topic


def filter_is_valid(topic_filter: str) -> bool:
    """Whether ``topic_filter`` is a valid (non-shared) topic filter."""
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


@attrs.frozen(slots=True)
class SharedFilter:
    """A parsed ``$share/<group>/<filter>``."""

    group: str
    topic_filter: str


def parse_shared(topic_filter: str) -> SharedFilter | None:
    """Parse a shared subscription; None when ``topic_filter`` is not one.

    Raises ``ValueError`` for a malformed one (empty group, wildcard in the group, no filter).
    """
    if not topic_filter.startswith("$share/"):
        return None
    rest = topic_filter[len("$share/") :]
    group, sep, inner = rest.partition("/")
    if not sep or not group or "+" in group or "#" in group:
        raise ValueError(f"malformed shared subscription {topic_filter!r}")
    if not filter_is_valid(inner):
        raise ValueError(f"invalid topic filter in shared subscription {topic_filter!r}")
    return SharedFilter(group, inner)


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


def covers(rule: str, topic_filter: str) -> bool:
    """Whether every topic ``topic_filter`` can match is matched by the filter ``rule``.

    Used for ACLs: a subscription is allowed when a read rule covers it. ``+`` in the rule
    covers any one level (``+`` included, ``#`` not); ``#`` covers the rest.
    """
    r = rule.split("/")
    f = topic_filter.split("/")
    for i, level in enumerate(r):
        if level == "#":
            # "#" matches the parent level too, so "a/#" covers "a".
            return not (i == 0 and f[0][:1] == "$")
        if i >= len(f):
            return False
        got = f[i]
        if level == "+":
            if got == "#" or (i == 0 and got[:1] == "$"):
                return False
            continue
        if got != level:
            return False
    return len(f) == len(r)
