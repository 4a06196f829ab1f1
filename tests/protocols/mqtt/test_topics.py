"""Topic filter validation and matching: MQTT's rules."""

from __future__ import annotations

import pytest

from mqkit.protocols.mqtt.topics import (
    compile_filter,
    covers,
    filter_is_valid,
    parse_shared,
    topic_is_valid,
)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("#", "anything/at/all", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("#", "$SYS/x", False),
        ("$SYS/#", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        ("a/b", "a/b", True),
        ("a/b", "a/B", False),
        ("a/+/c", "a//c", True),
    ],
)
def test_matching(topic_filter: str, topic: str, expected: bool) -> None:
    assert filter_is_valid(topic_filter)
    assert compile_filter(topic_filter)(topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "a/b+", "+a", "#/", "sport/tennis#"])
def test_invalid_filters(bad: str) -> None:
    assert not filter_is_valid(bad)


def test_topic_names() -> None:
    assert topic_is_valid("a/b")
    assert not topic_is_valid("")
    assert not topic_is_valid("a/+")
    assert not topic_is_valid("a/#")


def test_shared() -> None:
    shared = parse_shared("$share/group/a/+/c")
    assert shared is not None
    assert (shared.group, shared.topic_filter) == ("group", "a/+/c")
    assert parse_shared("a/b") is None
    for bad in ("$share/", "$share/g", "$share//a", "$share/g+/a", "$share/g/a/#/b"):
        with pytest.raises(ValueError):
            parse_shared(bad)


def test_acl_cover() -> None:
    assert covers("sensors/#", "sensors/+/temp")
    assert covers("sensors/#", "sensors")
    assert covers("sensors/+", "sensors/+")
    assert not covers("sensors/+", "sensors/#")
    assert not covers("sensors/+", "other/x")
    assert not covers("#", "$SYS/#")
    assert covers("a/b", "a/b")
    assert not covers("a/b", "a/b/c")
