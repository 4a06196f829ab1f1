"""Topic rules (strip, non-empty, <= 1024 UTF-8 bytes) and glob patterns, through the broker."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mqkit
from mqkit.testing import make_broker as build_broker

# (pattern, topic, matches): Go path.Match semantics as the seed's pubsub uses them.
MATCHES = [
    ("orders.*", "orders.created", True),
    ("orders.*", "orders.", True),
    ("orders.*", "orders.eu.created", True),  # '*' matches '.' too
    ("orders.*", "orders/created", False),  # ... but not '/'
    ("orders.*", "orders.eu/created", False),
    ("orders.*", "order.created", False),
    ("orders.*", "xorders.created", False),
    ("orders.*", "orders", False),
    ("*", "anything.at.all", True),
    ("*", "a/b", False),
    ("*.created", "user.created", True),
    ("*.created", "user.deleted", False),
    ("orders.?", "orders.a", True),
    ("orders.?", "orders.ab", False),
    ("orders.?", "orders.", False),
    ("orders.?", "orders./", False),
    ("a?c", "a\u00e9c", True),  # '?' is one character, not one byte
    ("[a-c]x", "ax", True),
    ("[a-c]x", "bx", True),
    ("[a-c]x", "cx", True),
    ("[a-c]x", "dx", False),
    ("[a-c]x", "Ax", False),
    ("[abc]", "b", True),
    ("[abc]", "ab", False),
    ("[^x]y", "ay", True),
    ("[^x]y", "xy", False),
    ("[^a-c]", "d", True),
    ("[^a-c]", "b", False),
    ("[!x]y", "ay", True),
    ("[!x]y", "xy", False),
    ("[a-cx-z]", "y", True),
    ("[a-cx-z]", "m", False),
    ("\\*", "*", True),
    ("\\*", "a", False),
    ("a\\?b", "a?b", True),
    ("a\\?b", "axb", False),
    ("a\\[b", "a[b", True),
    ("a[\\]]b", "a]b", True),
    ("a[\\]]b", "axb", False),
    ("a\\\\b", "a\\b", True),
    ("a\\b", "ab", True),  # an escaped ordinary character is itself
    ("a.b", "a.b", True),  # no glob: exact
    ("a.b", "axb", False),  # '.' is literal
    ("a+b", "a+b", True),  # regex metacharacters are literal
    ("a+b", "aab", False),
    ("(x)|y", "(x)|y", True),
    ("(x)|y", "y", False),
    ("^a$", "^a$", True),
]

INVALID_PATTERNS = ["[", "a[b", "[a-", "[^", "a\\", "[z-a]", "[]", "x[\\"]


@pytest.fixture
def broker():
    b = build_broker()
    yield b
    b.close()


@pytest.mark.parametrize(("pattern", "topic", "matches"), MATCHES)
def test_pattern_matching(broker: mqkit.Broker, pattern: str, topic: str, matches: bool) -> None:
    sub = broker.subscribe_pattern(pattern)
    broker.publish(topic, mqkit.Message("m"))
    assert sub.stats().received == int(matches)
    if matches:
        assert sub.get_nowait().topic == topic


@pytest.mark.parametrize("pattern", INVALID_PATTERNS)
def test_invalid_patterns(broker: mqkit.Broker, pattern: str) -> None:
    with pytest.raises(mqkit.InvalidTopicError, match="invalid pattern"):
        broker.subscribe_pattern(pattern)
    assert broker.metrics().active_topics == 0


def test_invalid_pattern_seed_case(broker: mqkit.Broker) -> None:
    with pytest.raises(mqkit.InvalidTopicError) as info:
        broker.subscribe_pattern("[")
    assert str(info.value).startswith("mq: invalid topic: ")


def test_exact_subscribe_takes_glob_characters_literally(broker: mqkit.Broker) -> None:
    sub = broker.subscribe("orders.*")
    broker.publish("orders.created", mqkit.Message("1"))
    broker.publish("orders.*", mqkit.Message("2"))
    assert [sub.get_nowait().id] == ["2"]
    assert sub.stats().received == 1


def test_pattern_without_glob_is_an_exact_topic(broker: mqkit.Broker) -> None:
    sub = broker.subscribe_pattern("orders.created")
    broker.publish("orders.created", mqkit.Message("1"))
    assert sub.get_nowait().id == "1"
    assert broker.topics() == ["orders.created"]


def test_patterns_are_not_listed_as_topics(broker: mqkit.Broker) -> None:
    broker.subscribe_pattern("orders.*")
    broker.subscribe_pattern("orders.*")
    broker.subscribe("orders.created")
    assert broker.topics() == ["orders.created"]
    snap = broker.metrics()
    assert (snap.active_topics, snap.active_subscribers) == (2, 3)


def test_pattern_is_stripped(broker: mqkit.Broker) -> None:
    sub = broker.subscribe_pattern("  orders.*\n")
    assert sub.topic == "orders.*"
    broker.publish(" orders.x ", mqkit.Message("1"))
    assert sub.get_nowait().topic == "orders.x"


def test_pattern_added_after_a_publish_sees_later_messages(broker: mqkit.Broker) -> None:
    broker.publish("orders.a", mqkit.Message("before"))  # the route is cached with nobody
    sub = broker.subscribe_pattern("orders.*")
    broker.publish("orders.a", mqkit.Message("after"))
    assert sub.get_nowait().id == "after"
    assert sub.stats().received == 1


def test_cancelled_pattern_stops_matching(broker: mqkit.Broker) -> None:
    sub = broker.subscribe_pattern("orders.*")
    broker.publish("orders.a", mqkit.Message("1"))
    sub.cancel()
    broker.publish("orders.a", mqkit.Message("2"))
    assert [m.id for m in sub] == ["1"]
    assert broker.metrics().active_topics == 0


def test_overlapping_patterns_each_deliver_once(broker: mqkit.Broker) -> None:
    a = broker.subscribe_pattern("orders.*")
    b = broker.subscribe_pattern("*.created")
    c = broker.subscribe("orders.created")
    broker.publish("orders.created", mqkit.Message("1"))
    assert [s.stats().received for s in (a, b, c)] == [1, 1, 1]


def test_pattern_limits(broker: mqkit.Broker) -> None:
    broker.update_config(broker.config.replace(max_subscribers=1))
    broker.subscribe_pattern("o.*")
    with pytest.raises(mqkit.LimitExceededError):
        broker.subscribe_pattern("o.*")
    broker.subscribe_pattern("p.*")


# -- topic validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        ("a" * 1024, True),
        ("a" * 1025, False),
        ("\U0001f600" * 256, True),  # 1024 bytes
        ("\U0001f600" * 257, False),  # 1028 bytes
        ("\U0001f600" * 300, False),  # 300 characters, 1200 bytes
        ("\u00e9" * 512, True),
        ("\u00e9" * 513, False),
        ("\u20ac" * 341 + "a", True),  # 1024 bytes
        ("\u20ac" * 342, False),  # 1026 bytes
    ],
    ids=lambda v: f"{len(v)}ch-{len(v.encode())}B" if isinstance(v, str) else str(v),
)
def test_length_is_counted_in_utf8_bytes(broker: mqkit.Broker, topic: str, ok: bool) -> None:
    if ok:
        broker.subscribe(topic)
        broker.publish(topic, mqkit.Message("m"))
    else:
        with pytest.raises(mqkit.InvalidTopicError, match="topic too long"):
            broker.subscribe(topic)
        with pytest.raises(mqkit.InvalidTopicError, match="topic too long"):
            broker.publish(topic, mqkit.Message("m"))


def test_whitespace_is_stripped_everywhere(broker: mqkit.Broker) -> None:
    sub = broker.subscribe("\t topic \n")
    broker.publish("topic", mqkit.Message("1"))
    broker.publish("  topic", mqkit.Message("2"))
    broker.publish_batch("topic  ", [mqkit.Message("3")])
    got = [sub.get_nowait() for _ in range(3)]
    assert [(m.id, m.topic) for m in got] == [("1", "topic"), ("2", "topic"), ("3", "topic")]
    assert broker.topics() == ["topic"]


def test_unicode_whitespace_is_stripped(broker: mqkit.Broker) -> None:
    sub = broker.subscribe("\u00a0t\u2003")
    broker.publish("t", mqkit.Message("m"))
    assert sub.get_nowait().topic == "t"
    with pytest.raises(mqkit.InvalidTopicError, match="cannot be empty"):
        broker.subscribe("\u00a0\u2003\u3000")


def test_control_and_punctuation_characters_are_allowed(broker: mqkit.Broker) -> None:
    topic = "a\x01b:c/d#e+f"
    sub = broker.subscribe(topic)
    broker.publish(topic, mqkit.Message("m"))
    assert sub.get_nowait().topic == topic


def test_str_subclass_topic(broker: mqkit.Broker) -> None:
    class Topic(str):
        pass

    sub = broker.subscribe(Topic("t"))
    broker.publish(Topic(" t "), mqkit.Message("m"))
    assert sub.get_nowait().topic == "t"


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(topic=st.text(max_size=300) | st.text(alphabet="ab \u00e9\U0001f600", max_size=600))
def test_topic_property(broker: mqkit.Broker, topic: str) -> None:
    """Any string is either accepted as its stripped self or refused with InvalidTopicError."""
    stripped = topic.strip()
    try:
        encoded = len(stripped.encode())
    except UnicodeEncodeError:
        encoded = None
    valid = bool(stripped) and encoded is not None and encoded <= 1024 and "\x00" not in stripped
    if valid:
        sub = broker.subscribe(topic)
        assert sub.topic == stripped
        broker.publish(topic, mqkit.Message("m"))
        assert sub.get_nowait().topic == stripped
        sub.cancel()
    else:
        with pytest.raises(mqkit.InvalidTopicError):
            broker.subscribe(topic)
        with pytest.raises(mqkit.InvalidTopicError):
            broker.publish(topic, mqkit.Message("m"))


# -- characters no topic may hold (issue 13, point 4) ---------------------------------------------

_LATER = datetime(2100, 1, 1, tzinfo=UTC)


def _tx_block(b: mqkit.Broker, topic: str) -> None:
    with b.transaction() as tx:
        tx.publish("fine", mqkit.Message("ok"))
        tx.publish(topic, mqkit.Message("m"))


PUBLISH_PATHS: dict[str, Callable[[mqkit.Broker, str], object]] = {
    "publish": lambda b, t: b.publish(t, mqkit.Message("m", "x")),
    "publish_batch": lambda b, t: b.publish_batch(t, [mqkit.Message("m1"), mqkit.Message("m2")]),
    "publish_priority": lambda b, t: b.publish_priority(t, mqkit.PriorityMessage("m", priority=2)),
    "publish_ttl": lambda b, t: b.publish_ttl(t, mqkit.TTLMessage("m", expires_at=_LATER)),
    "publish_with_ack": lambda b, t: b.publish_with_ack(t, mqkit.AckMessage("m", ack_id="a")),
    "publish_priority_ttl": lambda b, t: b.publish_priority_ttl(
        t, mqkit.PriorityTTLMessage("m", expires_at=_LATER)
    ),
    "publish_with_ack_ttl": lambda b, t: b.publish_with_ack_ttl(
        t, mqkit.AckTTLMessage("m", ack_id="a", expires_at=_LATER)
    ),
    "publish_with_transaction": lambda b, t: b.publish_with_transaction(t, mqkit.Message("m"), "x"),
    "transaction": _tx_block,
    "publish_to_dead_letter": lambda b, t: b.publish_to_dead_letter(t, mqkit.Message("m"), "why"),
    "subscribe": lambda b, t: b.subscribe(t),
    "subscribe_pattern": lambda b, t: b.subscribe_pattern(t + "*"),
}

# U+0000 is refused by name; a lone surrogate has no UTF-8 form (no MQTT client, no store).
FORBIDDEN_TOPICS = [
    ("a\x00b", "U+0000"),
    ("\x00", "U+0000"),
    ("a/b\x00", "U+0000"),
    ("a\ud800b", "UTF-8"),
    ("\udfff", "UTF-8"),
]


@pytest.mark.parametrize("path", sorted(PUBLISH_PATHS))
@pytest.mark.parametrize(("topic", "named"), FORBIDDEN_TOPICS)
def test_topics_with_nul_or_lone_surrogates_are_refused_on_every_path(
    path: str, topic: str, named: str
) -> None:
    config = mqkit.Config(
        enable_priority_queue=True,
        enable_ack_support=True,
        enable_transactions=True,
        enable_dead_letter_queue=True,
        dead_letter_topic="dlq",
    )
    with mqkit.Broker(config) as b:
        catch_all = b.subscribe_pattern("*")  # would match a topic without '/'
        fine = b.subscribe("fine")
        with pytest.raises(mqkit.InvalidTopicError) as raised:
            PUBLISH_PATHS[path](b, topic)
        assert named in str(raised.value)
        assert str(raised.value).startswith("mq: invalid topic: ")
        # Refused whole: nothing was delivered (not even a transaction's other message).
        with pytest.raises(TimeoutError):
            catch_all.get(timeout=0)
        with pytest.raises(TimeoutError):
            fine.get(timeout=0)
        assert b.dead_letter_stats().total_messages == 0
        # The same topic without the character is fine.
        clean = topic.replace("\x00", "").replace("\ud800", "").replace("\udfff", "") or "c"
        b.publish(clean, mqkit.Message("after"))
