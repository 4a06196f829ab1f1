"""Input validation (issue 13, point 14): what the broker refuses before it does anything.

A message field the broker works with (``priority``, ``meta``, ``attempt``, ``ack_timeout``,
``ack_policy``) that holds what it cannot work with is refused at publish with
``InvalidMessageError``, on every publish path, with or without persistence (the same error:
the core checks before the store does). A number argument that is NaN, infinite or no number
(a ``get`` timeout, ``SubOptions``, a ``limit``) is refused with a ``ValueError``-compatible
``MQError``; nothing is delivered, stored, subscribed or consumed because of it.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mqkit
from mqkit.testing import broker_config

NAN, INF = float("nan"), float("inf")
LATER = datetime(2300, 1, 1, tzinfo=UTC)
FEATURES = ("priority", "ttl", "ack", "deadletter", "transactions")
topics = (f"t{i}" for i in itertools.count())


class Level(enum.IntEnum):
    """A user's own IntEnum: an int, so a valid priority."""

    LOW = 1
    HIGH = 9


class Text(str):
    """A str subclass: not a str for ``meta`` (a store writes exactly str)."""


# -- the brokers: with and without persistence (module-scoped: many cases, one broker each) --


@pytest.fixture(scope="module", params=["memory", "persistent"])
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[mqkit.Broker]:
    config = mqkit.Config(dead_letter_topic="dlq")
    plugins: tuple[str, ...] = FEATURES
    if request.param == "persistent":
        path = tmp_path_factory.mktemp("store")
        config = config.replace(persistence_path=str(path))
        plugins += ("persistence",)
    with mqkit.Broker(broker_config(*plugins, config=config)) as made:
        yield made


def is_persistent(broker: mqkit.Broker) -> bool:
    return broker.has_plugin("persistence")


# -- message classes and the fields each has -------------------------------------------------

ALL_CLASSES: list[type[mqkit.Message]] = [
    mqkit.Message,
    mqkit.PriorityMessage,
    mqkit.TTLMessage,
    mqkit.AckMessage,
    mqkit.PriorityTTLMessage,
    mqkit.AckTTLMessage,
]
PRIORITY_CLASSES = [c for c in ALL_CLASSES if attrs.has(c) and "priority" in attrs.fields_dict(c)]
ACK_CLASSES = [c for c in ALL_CLASSES if "ack_timeout" in attrs.fields_dict(c)]

TYPED_ENTRY = {
    mqkit.Message: None,
    mqkit.PriorityMessage: "publish_priority",
    mqkit.TTLMessage: "publish_ttl",
    mqkit.AckMessage: "publish_with_ack",
    mqkit.PriorityTTLMessage: "publish_priority_ttl",
    mqkit.AckTTLMessage: "publish_with_ack_ttl",
}


def make(cls: type[mqkit.Message], msg_id: str = "m", **fields: Any) -> mqkit.Message:
    if "expires_at" in attrs.fields_dict(cls):
        fields.setdefault("expires_at", LATER)
    return cls(msg_id, {"n": 1}, **fields)


BAD_PRIORITIES: list[object] = [
    None, "HIGH", "30", 2.5, 2.0, NAN, INF, -INF, True, False, Decimal(3), Fraction(3), b"3",
    [30], mqkit.AckPolicy,
]  # fmt: skip
BAD_METAS: list[object] = [
    {"k": 1}, {"k": None}, {"k": b"v"}, {"k": NAN}, {"k": ["v"]}, {"a": "b", "k": 2.5},
    {1: "v"}, {None: "v"}, {("k",): "v"}, {b"k": "v"}, {"k": Text("v")}, {Text("k"): "v"},
    None, "k=v", [("k", "v")], 7,
]  # fmt: skip
BAD_ATTEMPTS: list[object] = [0, -1, 1.5, 1.0, NAN, INF, "1", None, True]
BAD_ACK_TIMEOUTS: list[object] = [NAN, INF, -INF, -1, -0.5, "5", True, False, [1], 10**400]
BAD_ACK_POLICIES: list[object] = [1, 0, 7, -1, 1.0, NAN, "REQUIRED", None, True]


def bad_cases() -> list[Any]:
    cases: list[Any] = []
    for cls in PRIORITY_CLASSES:
        for value in BAD_PRIORITIES:
            cases.append(
                pytest.param(cls, "priority", value, id=f"{cls.__name__}-priority-{value!r}")
            )
    for cls in ALL_CLASSES:
        for value in BAD_METAS:
            cases.append(pytest.param(cls, "meta", value, id=f"{cls.__name__}-meta-{value!r}"))
        for value in BAD_ATTEMPTS:
            cases.append(
                pytest.param(cls, "attempt", value, id=f"{cls.__name__}-attempt-{value!r}")
            )
    for cls in ACK_CLASSES:
        for value in BAD_ACK_TIMEOUTS:
            cases.append(
                pytest.param(cls, "ack_timeout", value, id=f"{cls.__name__}-ack_timeout-{value!r}")
            )
        for value in BAD_ACK_POLICIES:
            cases.append(
                pytest.param(cls, "ack_policy", value, id=f"{cls.__name__}-ack_policy-{value!r}")
            )
    return cases


# -- the publish paths -----------------------------------------------------------------------

Publish = Callable[[mqkit.Broker, str, mqkit.Message], None]


def via_publish(broker: mqkit.Broker, topic: str, bad: mqkit.Message) -> None:
    broker.publish(topic, bad)


def via_batch(broker: mqkit.Broker, topic: str, bad: mqkit.Message) -> None:
    # all or nothing: the good messages around the bad one are not delivered either
    good = mqkit.Message("good-1")
    broker.publish_batch(topic, [good, bad, mqkit.Message("good-2")])


def via_typed(broker: mqkit.Broker, topic: str, bad: mqkit.Message) -> None:
    entry = TYPED_ENTRY[type(bad)]
    if entry is None:
        broker.publish(topic, bad)
    else:
        getattr(broker, entry)(topic, bad)


def via_transaction(broker: mqkit.Broker, topic: str, bad: mqkit.Message) -> None:
    with broker.transaction() as tx:
        tx.publish(topic, mqkit.Message("good"))
        tx.publish(topic, bad)


def via_transaction_id(broker: mqkit.Broker, topic: str, bad: mqkit.Message) -> None:
    tx_id = f"tx-{topic}"
    broker.publish_with_transaction(topic, mqkit.Message("good"), tx_id)
    try:
        broker.publish_with_transaction(topic, bad, tx_id)
    finally:
        broker.rollback_transaction(tx_id)


def via_dead_letter(broker: mqkit.Broker, topic: str, bad: mqkit.Message) -> None:
    broker.publish_to_dead_letter(topic, bad, "given up")


PATHS = [via_publish, via_batch, via_typed, via_transaction, via_transaction_id, via_dead_letter]


def assert_refused(broker: mqkit.Broker, publish: Publish, bad: mqkit.Message, field: str) -> None:
    topic = next(topics)
    sub = broker.subscribe(topic)
    dlq = broker.subscribe("dlq")
    dead_before = broker.dead_letter_stats().total_messages
    try:
        with pytest.raises(mqkit.InvalidMessageError) as info:
            publish(broker, topic, bad)
        text = str(info.value)
        assert text.startswith("mq: invalid message: ")
        assert field in text, text
        assert repr(bad.id) in text, text
        assert sub.stats().received == 0  # nothing delivered
        assert dlq.stats().received == 0
        assert broker.dead_letter_stats().total_messages == dead_before
        if is_persistent(broker):
            assert broker.recover_messages(topic) == []  # nothing stored
    finally:
        sub.cancel()
        dlq.cancel()


@pytest.mark.parametrize(("cls", "field", "value"), bad_cases())
def test_a_bad_field_is_refused_on_every_path(
    broker: mqkit.Broker, cls: type[mqkit.Message], field: str, value: object
) -> None:
    for publish in PATHS:
        assert_refused(broker, publish, make(cls, "bad", **{field: value}), field)


GOOD_FIELDS: list[Any] = (
    [
        pytest.param(cls, changes, id=f"{cls.__name__}-{changes!r}")
        for cls in ALL_CLASSES
        for changes in [
            {},
            {"meta": {}},
            {"meta": {"k": "v", "": ""}},
            {"meta": MappingProxyType({"k": "v"})},
            {"attempt": 3},
        ]
    ]
    + [
        pytest.param(cls, changes, id=f"{cls.__name__}-{changes!r}")
        for cls in PRIORITY_CLASSES
        for changes in [
            {"priority": mqkit.Priority.HIGH},
            {"priority": 0},
            {"priority": -5},
            {"priority": 10**30},
            {"priority": Level.HIGH},
        ]
    ]
    + [
        pytest.param(cls, changes, id=f"{cls.__name__}-{changes!r}")
        for cls in ACK_CLASSES
        for changes in [
            {"ack_timeout": None},
            {"ack_timeout": 0},
            {"ack_timeout": 2.5},
            {"ack_timeout": 10**6},
            {"ack_policy": mqkit.AckPolicy.NONE},
            {"ack_policy": mqkit.AckPolicy.TIMEOUT},
        ]
    ]
)


@pytest.mark.parametrize("publish", [via_publish, via_typed, via_dead_letter])
@pytest.mark.parametrize(("cls", "changes"), GOOD_FIELDS)
def test_valid_fields_are_accepted(
    broker: mqkit.Broker, publish: Publish, cls: type[mqkit.Message], changes: dict[str, Any]
) -> None:
    topic = next(topics)
    message = make(cls, "good", **changes)
    with broker.subscribe(topic) as sub:
        publish(broker, topic, message)
        if publish is via_dead_letter:
            assert broker.dead_letters()[-1].message == message
            return
        got = sub.get(timeout=10)
        assert got.id == "good"
        for name, value in changes.items():
            assert getattr(got, name) == value
        if hasattr(got, "ack_id") and got.ack_policy != mqkit.AckPolicy.NONE:  # type: ignore[attr-defined]
            sub.ack(got.ack_id)  # type: ignore[attr-defined]


def test_the_issues_priority_examples_are_refused_without_a_type_error(
    broker: mqkit.Broker,
) -> None:
    # with the priority plugin on, "HIGH" or None reached its heap: a bare TypeError
    for value in (None, "HIGH", 2.5, NAN):
        topic = next(topics)
        with broker.subscribe(topic) as sub:
            broker.publish(topic, mqkit.PriorityMessage("p1", priority=mqkit.Priority.LOW))
            with pytest.raises(mqkit.InvalidMessageError, match="priority"):
                broker.publish(topic, mqkit.PriorityMessage("p2", priority=value))  # type: ignore[arg-type]
            assert [sub.get_nowait().id] == ["p1"]
            assert sub.stats().queue_len == 0


def test_the_error_names_the_value(broker: mqkit.Broker) -> None:
    with pytest.raises(mqkit.InvalidMessageError) as info:
        broker.publish("t", mqkit.PriorityMessage("p", priority="HIGH"))  # type: ignore[arg-type]
    assert (
        str(info.value)
        == "mq: invalid message: message 'p': priority must be an int, not str 'HIGH'"
    )
    with pytest.raises(mqkit.InvalidMessageError) as info:
        broker.publish("t", mqkit.Message("m", meta={"k": 1}))  # type: ignore[dict-item]
    assert str(info.value) == (
        "mq: invalid message: message 'm': meta must map str to str, not str 'k': int 1"
    )


def test_a_user_subclass_without_slots_is_checked_too(broker: mqkit.Broker) -> None:
    @attrs.frozen(slots=False)
    class Loose(mqkit.PriorityMessage):
        note: str = attrs.field(default="", kw_only=True)

    topic = next(topics)
    with broker.subscribe(topic) as sub:
        with pytest.raises(mqkit.InvalidMessageError, match="priority"):
            broker.publish(topic, Loose("l", priority=NAN))  # type: ignore[arg-type]
        with pytest.raises(mqkit.InvalidMessageError, match="meta"):
            broker.publish(topic, Loose("l", meta={"k": 2}))  # type: ignore[dict-item]
        assert sub.stats().received == 0


any_non_int = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.decimals(allow_nan=True),
    st.fractions(),
    st.complex_numbers(),
    st.lists(st.integers(), max_size=2),
)
not_str = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=4), st.tuples()
)
bad_meta = st.one_of(
    st.dictionaries(st.text(max_size=3), not_str, min_size=1, max_size=3),
    st.dictionaries(not_str, st.text(max_size=3), min_size=1, max_size=3),
    st.lists(st.tuples(st.text(max_size=2), st.text(max_size=2)), min_size=1, max_size=2),
)


@settings(
    deadline=None, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(priority=any_non_int, meta=bad_meta, publish=st.sampled_from(PATHS))
def test_any_non_int_priority_and_any_non_str_meta_are_refused(
    broker: mqkit.Broker, priority: object, meta: object, publish: Publish
) -> None:
    assert_refused(
        broker, publish, make(mqkit.PriorityMessage, "bad", priority=priority), "priority"
    )
    assert_refused(broker, publish, make(mqkit.AckTTLMessage, "bad", meta=meta), "meta")


@settings(
    deadline=None, max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(priority=st.integers(), meta=st.dictionaries(st.text(max_size=3), st.text(max_size=3)))
def test_any_int_priority_and_str_meta_are_delivered(
    broker: mqkit.Broker, priority: int, meta: dict[str, str]
) -> None:
    topic = next(topics)
    with broker.subscribe(topic) as sub:
        broker.publish(topic, mqkit.PriorityMessage("p", priority=priority, meta=meta))
        got = sub.get(timeout=10)
    assert (got.priority, dict(got.meta)) == (priority, meta)  # type: ignore[attr-defined]


# -- number arguments: timeouts, options, limits --------------------------------------------

NOT_FINITE: list[object] = [NAN, INF, -INF, 10**400, Decimal("nan"), Decimal("inf")]
NOT_A_NUMBER: list[object] = ["1", b"1", [1], True, False, 1j]
BAD_TIMEOUTS = NOT_FINITE + NOT_A_NUMBER


def test_the_argument_error_is_a_value_error_and_an_mqerror() -> None:
    assert issubclass(mqkit.InvalidArgumentError, mqkit.MQError)
    assert issubclass(mqkit.InvalidArgumentError, ValueError)
    assert str(mqkit.InvalidArgumentError()) == "mq: invalid argument"


@pytest.mark.parametrize("buffered", [False, True], ids=["empty", "buffered"])
@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_get_refuses_a_timeout_that_is_no_finite_number(
    make_broker: Any, timeout: object, buffered: bool
) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    if buffered:
        broker.publish("t", mqkit.Message("m"))
    with pytest.raises(mqkit.InvalidArgumentError) as info:
        sub.get(timeout=timeout)  # nan: it used to spin a core for ever
    assert "timeout" in str(info.value)
    assert repr(timeout) in str(info.value)
    assert sub.stats().queue_len == (1 if buffered else 0)  # nothing consumed
    if buffered:
        assert sub.get(timeout=0).id == "m"


@pytest.mark.parametrize("buffered", [False, True], ids=["empty", "buffered"])
@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_aget_refuses_a_timeout_that_is_no_finite_number(
    make_broker: Any, timeout: object, buffered: bool
) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    if buffered:
        broker.publish("t", mqkit.Message("m"))

    async def main() -> None:
        with pytest.raises(mqkit.InvalidArgumentError, match="timeout"):
            await asyncio.wait_for(sub.aget(timeout=timeout), 10)

    asyncio.run(main())
    assert sub.stats().queue_len == (1 if buffered else 0)


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5, 0.001, Decimal("0.001"), Fraction(1, 1000)])
def test_get_keeps_accepting_finite_timeouts(make_broker: Any, timeout: object) -> None:
    # a negative timeout is no wait (as 0); None waits for ever
    sub = make_broker().subscribe("t")
    with pytest.raises(TimeoutError):
        sub.get(timeout=timeout)  # type: ignore[arg-type]

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await sub.aget(timeout=timeout)  # type: ignore[arg-type]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("option", "value"),
    [("block_timeout", v) for v in BAD_TIMEOUTS]
    + [("buffer_size", v) for v in [NAN, INF, 2.5, 2.0, "3", None, True, -1]]
    + [("policy", v) for v in ["drop_oldest", None, 0]]
    + [("filter", v) for v in ["x", 3]],
    ids=repr,
)
@pytest.mark.parametrize("entry", ["subscribe", "subscribe_pattern", "subscribe_batch"])
def test_suboptions_refuse_what_they_cannot_use(
    make_broker: Any, option: str, value: object, entry: str
) -> None:
    broker = make_broker()
    opts = mqkit.SubOptions(**{option: value})
    call = getattr(broker, entry)
    with pytest.raises(mqkit.InvalidConfigError) as info:
        call(["a", "b"] if entry == "subscribe_batch" else "a.*", opts)
    assert info.value.field == option
    assert option in str(info.value)
    assert broker.subscriptions() == []  # nothing subscribed


def test_a_block_timeout_of_zero_or_below_does_not_wait(make_broker: Any) -> None:
    broker = make_broker()
    for value in (0, -1, 0.0):
        sub = broker.subscribe(
            "t",
            mqkit.SubOptions(
                buffer_size=1, policy=mqkit.Backpressure.BLOCK_WITH_TIMEOUT, block_timeout=value
            ),
        )
        broker.publish("t", mqkit.Message("a"))
        broker.publish("t", mqkit.Message("b"))  # full: dropped at once
        assert sub.stats().dropped == 1
        sub.cancel()


BAD_LIMITS: list[object] = [NAN, INF, 2.5, 1.0, "3", None, True, Decimal(2)]


@pytest.mark.parametrize("limit", BAD_LIMITS, ids=repr)
@pytest.mark.parametrize("operation", ["dead_letters", "replay_dead_letters"])
def test_dead_letter_limits_must_be_ints(make_broker: Any, operation: str, limit: object) -> None:
    broker = make_broker("deadletter", config=mqkit.Config(dead_letter_topic="dlq"))
    broker.publish_to_dead_letter("t", mqkit.Message("m"), "why")
    with pytest.raises(mqkit.InvalidArgumentError, match="limit"):
        getattr(broker, operation)(limit)
    assert [r.message.id for r in broker.dead_letters()] == ["m"]  # still there


@pytest.mark.parametrize("limit", BAD_LIMITS, ids=repr)
@pytest.mark.parametrize("operation", ["recover_messages", "replay_messages"])
def test_store_limits_must_be_ints(
    make_broker: Any, tmp_path: Path, operation: str, limit: object
) -> None:
    broker = make_broker("persistence", config=mqkit.Config(persistence_path=str(tmp_path)))
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.Message("m"))
    with pytest.raises(mqkit.InvalidArgumentError, match="limit"):
        getattr(broker, operation)("t", limit)
    assert sub.stats().received == 1  # nothing replayed
    assert [m.id for m in broker.recover_messages("t", 0)] == ["m"]


@pytest.mark.parametrize("seconds", [NAN, INF, -INF, "1", None, True, 10**400], ids=repr)
def test_a_fake_clock_moves_by_finite_seconds(seconds: object) -> None:
    clock = mqkit.FakeClock()
    fired: list[int] = []
    with mqkit.Broker(broker_config(), clock=clock) as broker:
        broker.timers.call_later(5, lambda: fired.append(1))
        with pytest.raises(mqkit.InvalidArgumentError):
            clock.advance(seconds)  # type: ignore[arg-type]
        assert fired == []  # nan ran every timer; inf broke the clock
        assert clock.monotonic() == 1000.0
        with pytest.raises(mqkit.InvalidArgumentError):
            broker.timers.call_later(seconds, lambda: fired.append(2))  # type: ignore[arg-type]
        assert broker.timers.pending == 1
        clock.advance(5)
        assert fired == [1]
