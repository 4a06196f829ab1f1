"""MQTT topic names and topic filters: validation, matching, shared subscriptions, ACL cover.

Filter validation and matching are the core's (:mod:`mqkit.core.topics`: in-process
subscribers use the same filters); this module adds what only the gateway needs.

The rules are MQTT's (both 3.1.1 and 5.0): levels are separated by ``/``; ``+`` matches exactly
one level and must fill a whole level; ``#`` matches any number of levels (the parent level
included: ``a/#`` matches ``a``) and must be the last level; a topic name contains neither.
Topics beginning with ``$`` are not matched by a filter whose first level is a wildcard.
A shared subscription is ``$share/<group>/<filter>``.
"""

from __future__ import annotations

from typing import Final

import attrs

from mqkit.core.topics import compile_filter, filter_is_valid

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
