"""Payload and message serialisation (``mqkit.plugins.persistence.serializer``), by property.

Round trips go through ``message_to_dict -> json.dumps -> json.loads -> message_from_dict``
and through a real persistent broker (stored, then recovered from disk, also after a reopen).
Equality is strict: the same types all the way down (``True`` is not ``1``, a tuple is not a
list), NaN equals NaN, ``-0.0`` keeps its sign, datetimes keep their offset (or its absence).
An unsupported payload is refused at publish with ``SerializationError``: nothing delivered,
nothing stored.
"""

from __future__ import annotations

import collections
import dataclasses
import decimal
import enum
import itertools
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mqkit
from mqkit.plugins.persistence import serializer
from mqkit.plugins.persistence.serializer import (
    check_fields,
    decode_message,
    decode_payload,
    encode_message,
    encode_payload,
    message_from_dict,
    message_to_dict,
    stored_json,
    to_json,
)

# -- registered payload and message types ---------------------------------------------------------


@attrs.frozen
class Point:
    x: int
    y: float
    label: str = ""
    tags: tuple[str, ...] = ()
    when: datetime | None = None
    blob: bytes = b""


@dataclasses.dataclass(frozen=True)
class Order:
    sku: str
    qty: int
    prices: list[float]
    extra: dict[str, int]
    point: Point | None = None


@attrs.frozen
class OrderMessage(mqkit.Message):
    order_no: int = attrs.field(default=0, kw_only=True)


@attrs.frozen
class Unregistered:
    x: int = 0


@attrs.frozen
class UnregisteredMessage(mqkit.Message):
    pass


@attrs.frozen
class ScoredMessage(mqkit.Message):
    """A float field: non-finite values must survive the store (orjson would write null)."""

    score: float = attrs.field(default=0.0, kw_only=True)


@attrs.frozen
class SeriesMessage(mqkit.Message):
    """A field whose floats sit inside a list: not a plain field."""

    series: list[float] = attrs.field(factory=list, kw_only=True)


mqkit.register_payload_type(Point)
mqkit.register_payload_type(Order, "tests.Order")
mqkit.register_payload_type(OrderMessage)
mqkit.register_payload_type(ScoredMessage)
mqkit.register_payload_type(SeriesMessage)


class Colour(enum.IntEnum):
    RED = 1


# -- strict equality ------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, datetime):
        return a.isoformat() == b.isoformat() and a == b
    if attrs.has(type(a)):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in attrs.fields(type(a)))
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


def same_message(a: mqkit.Message, b: mqkit.Message) -> bool:
    if type(a) is not type(b):
        return False
    for field in attrs.fields(type(a)):
        if not field.eq:
            continue  # a memo, not a part of the message (estimate_size's, the store's number)
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name == "meta":
            x, y = dict(x), dict(y)
        if not same(x, y):
            return False
    return True


# -- strategies -----------------------------------------------------------------------------------

# Whole-second UTC offsets (as every real time zone has): CPython 3.11's fromisoformat reads
# an offset under one second, such as "+00:00:00.000001", as UTC.
offsets = st.integers(-86_399, 86_399).map(lambda s: timezone(timedelta(seconds=s)))
datetimes = st.datetimes(timezones=st.none() | st.just(UTC) | offsets)
aware = st.datetimes(timezones=st.just(UTC) | offsets)
future = st.datetimes(min_value=datetime(2200, 1, 1), timezones=st.just(UTC) | offsets)
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.none() | st.booleans() | st.integers() | floats | st.text() | st.binary() | datetimes
points = st.builds(
    Point,
    x=st.integers(),
    y=floats,
    label=st.text(),
    tags=st.lists(st.text(), max_size=3).map(tuple),
    when=st.none() | datetimes,
    blob=st.binary(max_size=20),
)
orders = st.builds(
    Order,
    sku=st.text(),
    qty=st.integers(),
    prices=st.lists(floats, max_size=3),
    extra=st.dictionaries(st.text(), st.integers(), max_size=3),
    point=st.none() | points,
)
hashables = st.recursive(
    scalars | points,
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=6,
)
keys = st.text() | st.text().map(lambda s: "$" + s) | hashables
payloads = st.recursive(
    scalars | points | orders,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(), inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=25,
)


@st.composite
def messages(draw: st.DrawFn, expiries: st.SearchStrategy[datetime] = aware) -> mqkit.Message:
    kind = draw(
        st.sampled_from(
            [
                mqkit.Message,
                mqkit.PriorityMessage,
                mqkit.TTLMessage,
                mqkit.AckMessage,
                mqkit.PriorityTTLMessage,
                mqkit.AckTTLMessage,
                OrderMessage,
            ]
        )
    )
    fields: dict[str, Any] = {
        "topic": draw(st.text()),
        "type": draw(st.text()),
        "time": draw(st.none() | aware),
        "meta": draw(st.dictionaries(st.text(), st.text(), max_size=3)),
        "attempt": draw(st.integers(1, 10)),
    }
    names = {f.name for f in attrs.fields(kind)}
    if "priority" in names:
        fields["priority"] = draw(st.integers())
    if "expires_at" in names:
        fields["expires_at"] = draw(expiries)
    if "ack_id" in names:
        fields["ack_id"] = draw(st.text())
        fields["ack_policy"] = draw(st.sampled_from(mqkit.AckPolicy))
        fields["ack_timeout"] = draw(st.none() | st.floats(0, 1e9))
    if "order_no" in names:
        fields["order_no"] = draw(st.integers())
    return kind(draw(st.text(min_size=1)), draw(payloads), **fields)


def via_json(message: mqkit.Message) -> mqkit.Message:
    text = json.dumps(message_to_dict(message))
    back: mqkit.Message = message_from_dict(json.loads(text))
    return back


# -- the converter --------------------------------------------------------------------------------


@given(payloads)
def test_payload_round_trips_through_json(payload: Any) -> None:
    back = decode_payload(json.loads(json.dumps(encode_payload(payload), allow_nan=False)))
    assert same(payload, back), (payload, back)


@given(messages())
def test_message_round_trips_through_json(message: mqkit.Message) -> None:
    back = via_json(message)
    assert same_message(message, back), (message, back)


@pytest.mark.parametrize(
    "payload",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        -0.0,
        10**40,
        True,
        {"$bytes": "looks like a tag"},
        {"$type": "tests.Order", "value": 1},
        {1: "a", "1": "b", (1,): "c", None: "d"},
        [b"", (), {}, [], ""],
        {"s": {"t": ("u", [b"v"])}},
        datetime(2026, 1, 1, 12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 1, 1, 12, 30),
        Point(1, float("nan"), tags=("a", "b,c"), when=datetime(2026, 1, 1, tzinfo=UTC)),
        Order("sku", 2, [1.5, float("inf")], {"a": 1}, Point(0, -0.0)),
        {Point(1, 2.0): Order("k", 1, [], {})},
        "\ud800 lone surrogate",
    ],
    ids=repr,
)
def test_notable_payloads_round_trip(payload: Any) -> None:
    message = mqkit.Message("m", payload, topic="t", time=datetime.now(UTC))
    assert same(payload, via_json(message).data)


UNSUPPORTED: list[Any] = [
    object(),
    {1, 2},
    frozenset({1}),
    1j,
    decimal.Decimal("1.5"),
    bytearray(b"x"),
    memoryview(b"x"),
    Colour.RED,
    collections.namedtuple("Pair", "a b")(1, 2),
    collections.OrderedDict(a=1),
    collections.defaultdict(list),
    date(2026, 1, 1),
    timedelta(seconds=1),
    Unregistered(),
    range(3),
    print,
    Path("/tmp"),
]


def wrap(bad: Any, how: int, good: Any) -> Any:
    """Put ``bad`` somewhere inside otherwise supported data."""
    if how == 0:
        return bad
    if how == 1:
        return [good, bad]
    if how == 2:
        return {"ok": good, "bad": (1, [bad])}
    if how == 3:
        return (good, {"nested": [[bad]]})
    try:
        return {bad: good}
    except TypeError:  # not hashable
        return {"$k": bad}


unsupported = st.builds(wrap, st.sampled_from(UNSUPPORTED), st.integers(0, 4), payloads)


@given(payloads)
def test_to_json_writes_what_json_dumps_writes(payload: Any) -> None:
    data = message_to_dict(mqkit.Message("m", payload))
    assert to_json(data) == json.dumps(data, separators=(",", ":"))


@given(unsupported)
def test_unsupported_payload_raises_serialization_error(payload: Any) -> None:
    with pytest.raises(mqkit.SerializationError):
        message_to_dict(mqkit.Message("m", payload))


def test_registered_class_holding_what_its_fields_cannot_store() -> None:
    """attrs does not check field types; what cannot be stored is refused, not crashed on."""
    wrong: Any = object()
    for payload in (Point(1, 2.0, label=wrong), Point(1, 2.0, when=wrong)):
        with pytest.raises(mqkit.SerializationError, match=r"Point|object"):
            message_to_dict(mqkit.Message("m", payload))


def test_circular_and_deep_payloads_raise_serialization_error() -> None:
    circular: list[Any] = []
    circular.append(circular)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    for payload in (circular, {"k": circular}, deep):
        with pytest.raises(mqkit.SerializationError, match="circular or too deeply nested"):
            message_to_dict(mqkit.Message("m", payload))


def test_message_class_must_be_known() -> None:
    with pytest.raises(mqkit.SerializationError, match="UnregisteredMessage"):
        message_to_dict(UnregisteredMessage("m"))
    back = via_json(OrderMessage("m", order_no=7))
    assert type(back) is OrderMessage
    assert back.order_no == 7


@pytest.mark.parametrize(
    "data",
    [
        {"id": "m", "$class": "Nope"},
        {"id": "m", "$class": "Point"},
        {"id": "m", "$class": "tests.Order"},
        {"id": "m", "unknown_field": 1},
        {"id": 5},
        {"id": "m", "data": {"$tuple": 5}},
        {"id": "m", "data": {"$datetime": "never"}},
        {"id": "m", "data": {"$float": "x"}},
        {"id": "m", "data": {"$type": "tests.Order", "value": {"sku": 1}}},
    ],
    ids=repr,
)
def test_malformed_data_raises_serialization_error(data: dict[str, Any]) -> None:
    with pytest.raises(mqkit.SerializationError):
        message_from_dict(data)


# -- through a real broker ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mqkit.Broker]:
    path = tmp_path_factory.mktemp("serialization")
    config = mqkit.Config(
        enable_persistence=True, persistence_path=str(path), enable_transactions=True
    )
    with mqkit.Broker(config) as b:
        yield b


topics = (f"topic-{i}" for i in itertools.count())


@pytest.fixture(params=["orjson", "stdlib"])
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store's JSON writer: orjson (the ``fast`` extra; ``dev`` installs it) or the stdlib."""
    if request.param == "stdlib":
        monkeypatch.setattr(serializer, "fast_json", None)
    else:
        assert serializer.fast_json is not None, "the dev extra installs orjson (the fast extra)"
    return str(request.param)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads)
def test_payload_round_trips_through_the_store(broker: mqkit.Broker, payload: Any) -> None:
    topic = next(topics)
    sub = broker.subscribe(topic)
    broker.publish(topic, mqkit.Message("m", payload))
    assert same(payload, sub.get(timeout=5).data)  # delivered as published
    (recovered,) = broker.recover_messages(topic)  # read back from disk
    assert same(payload, recovered.data), (payload, recovered.data)
    sub.cancel()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(messages(expiries=future), min_size=1, max_size=5), st.booleans())
def test_messages_round_trip_through_a_reopened_store(
    encoder: str, batch: list[mqkit.Message], as_batch: bool
) -> None:
    with tempfile.TemporaryDirectory() as path:
        config = mqkit.Config(enable_persistence=True, persistence_path=path)
        with mqkit.Broker(config) as first:
            if as_batch:  # one store entry for them all
                first.publish_batch("t", batch)
            else:
                for message in batch:
                    first.publish("t", message)
            stored = first.recover_messages("t")
        with mqkit.Broker(config) as second:
            recovered = second.recover_messages("t")
    assert len(recovered) == len(batch)
    for original, back, before in zip(batch, recovered, stored, strict=True):
        assert same_message(before, back)
        assert back.topic == "t"  # stamped by the broker
        assert back.time is not None
        expected = attrs.evolve(original, topic="t", time=back.time)
        if hasattr(original, "ack_id") and not original.ack_id:
            expected = attrs.evolve(expected, ack_id=back.ack_id)  # type: ignore[attr-defined]
        assert same_message(expected, back), (expected, back)


Publish = Callable[[mqkit.Broker, str, list[mqkit.Message]], None]


def publish_one(b: mqkit.Broker, topic: str, msgs: list[mqkit.Message]) -> None:
    b.publish(topic, msgs[-1])


def publish_batch(b: mqkit.Broker, topic: str, msgs: list[mqkit.Message]) -> None:
    b.publish_batch(topic, msgs)


def publish_transaction(b: mqkit.Broker, topic: str, msgs: list[mqkit.Message]) -> None:
    with b.transaction() as tx:
        for m in msgs:
            tx.publish(topic, m)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bad=unsupported,
    good=payloads,
    publish=st.sampled_from([publish_one, publish_batch, publish_transaction]),
)
def test_unsupported_payload_is_refused_at_publish(
    broker: mqkit.Broker, bad: Any, good: Any, publish: Publish
) -> None:
    topic = next(topics)
    sub = broker.subscribe(topic)
    msgs = [mqkit.Message("good", good), mqkit.Message("bad", bad)]
    with pytest.raises(mqkit.SerializationError):
        publish(broker, topic, msgs)
    assert sub.stats().queue_len == 0
    assert sub.stats().received == 0
    assert broker.recover_messages(topic) == []
    sub.cancel()


def test_unregistered_message_class_is_refused_at_publish(broker: mqkit.Broker) -> None:
    sub = broker.subscribe("unregistered")
    with pytest.raises(mqkit.SerializationError, match="register"):
        broker.publish("unregistered", UnregisteredMessage("m"))
    assert sub.stats().received == 0
    assert broker.recover_messages("unregistered") == []
    broker.publish("unregistered", OrderMessage("m", order_no=3))
    (recovered,) = broker.recover_messages("unregistered")
    assert type(recovered) is OrderMessage
    assert recovered.order_no == 3
    sub.cancel()


# -- the store's JSON writer (orjson with the ``fast`` extra, else the stdlib) ---------------------

non_finite = st.sampled_from([float("inf"), float("-inf"), float("nan")])


# Payloads orjson writes itself (no lone surrogates, integers within 64 bits): the batch takes
# the fast writer unless a field holds a non-finite float.
plain_payloads = (
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(st.characters(blacklist_categories=["Cs"]))
    | st.dictionaries(st.text(st.characters(blacklist_categories=["Cs"])), st.integers(0, 9))
)


@st.composite
def odd_messages(draw: st.DrawFn) -> mqkit.Message:
    """Messages whose fields may hold what orjson cannot write as the stdlib does."""
    kind = draw(st.sampled_from(["ack", "scored", "series", "priority", "meta", "plain"]))
    payload = draw(plain_payloads)
    # attrs does not check annotations: a float where an int or a str is declared
    if kind == "priority":
        return mqkit.PriorityMessage("p", payload, priority=draw(floats))  # type: ignore[arg-type]
    if kind == "meta":
        return mqkit.Message("m", payload, meta={"k": draw(floats)})  # type: ignore[dict-item]
    if kind == "ack":
        return mqkit.AckMessage("a", payload, ack_timeout=draw(st.none() | floats))
    if kind == "scored":
        return ScoredMessage("s", payload, score=draw(floats))
    if kind == "series":
        return SeriesMessage("l", payload, series=draw(st.lists(floats, max_size=3)))
    return mqkit.Message(draw(st.text(min_size=1)), payload, meta={"k": "\u00e9"})


def readable(message: mqkit.Message) -> bool:
    """Whether the stdlib encoder's text of ``message`` reads back as a message."""
    try:
        via_json(message)
    except Exception:
        return False
    return True


@settings(deadline=None)
@given(odd_messages() | messages())
@example(mqkit.Message("m", 1, meta={"k": float("nan")}))  # type: ignore[dict-item]
@example(mqkit.PriorityMessage("p", 1, priority=float("inf")))  # type: ignore[arg-type]
@example(mqkit.PriorityMessage("p", 1, priority=2.5))  # type: ignore[arg-type]
@example(mqkit.PriorityMessage("p", 1, priority=True))
@example(mqkit.AckMessage("a", 1, ack_policy=7))  # type: ignore[arg-type]
@example(mqkit.Message("m", 1, type=None))  # type: ignore[arg-type]
def test_check_fields_refuses_exactly_what_cannot_be_read_back(message: mqkit.Message) -> None:
    try:
        check_fields([message])
    except mqkit.SerializationError as exc:
        assert not readable(message)
        assert repr(message.id) in str(exc)
    else:
        assert readable(message)


@settings(deadline=None)
@given(st.lists(odd_messages(), min_size=1, max_size=4) | st.lists(messages(), max_size=4))
@example([ScoredMessage("s", 1, score=float("nan"))])
@example([mqkit.Message("m", 1), mqkit.AckMessage("a", 2, ack_timeout=float("-inf"))])
@example([mqkit.PriorityMessage("p", 1, priority=2.0)])  # type: ignore[arg-type]
def test_stored_json_reads_back_as_to_json(batch: list[mqkit.Message]) -> None:
    try:
        fast = check_fields(batch)
    except mqkit.SerializationError:
        return  # refused (the property above): never written
    value = [("t", m.id, i, message_to_dict(m)) for i, m in enumerate(batch)]
    expected = to_json(value)  # NaN and infinities are written as the stdlib writes them
    assert to_json(json.loads(stored_json(value, fast=fast))) == to_json(json.loads(expected))


@settings(deadline=None)
@given(odd_messages() | messages())
@example(ScoredMessage("s", 1, score=float("nan")))
@example(mqkit.AckMessage("a", 2, ack_timeout=float("-inf")))
@example(mqkit.Message("m", 2**70))
@example(mqkit.Message("m", "\ud800 lone"))
def test_decode_message_reads_what_encode_message_writes(message: mqkit.Message) -> None:
    # what the cluster plugin reads back from a stream entry (bytes) or a text: the same message
    try:
        text = encode_message(message)
    except mqkit.SerializationError:
        return
    expected = to_json(message_to_dict(message_from_dict(json.loads(text))))
    for stored in (text, text.encode()):  # (NaN != NaN: compared as JSON text)
        assert to_json(message_to_dict(decode_message(stored))) == expected


BAD_FIELDS: list[tuple[mqkit.Message, type[mqkit.MQError]]] = [
    # the fields the broker itself reads are refused by the core, with or without a store
    # (tests/core/test_validation.py); the store refuses what only it cannot write
    (mqkit.PriorityMessage("bad", 1, priority=2.5), mqkit.InvalidMessageError),  # type: ignore[arg-type]
    (mqkit.PriorityMessage("bad", 1, priority=float("nan")), mqkit.InvalidMessageError),  # type: ignore[arg-type]
    (mqkit.Message("bad", 1, type=None), mqkit.SerializationError),  # type: ignore[arg-type]
    (mqkit.Message("bad", 1, meta={"k": 1}), mqkit.InvalidMessageError),  # type: ignore[dict-item]
    (mqkit.AckMessage("bad", 1, ack_policy=7), mqkit.InvalidMessageError),  # type: ignore[arg-type]
]  # fmt: skip


@pytest.mark.parametrize(("bad", "error"), BAD_FIELDS, ids=repr)
@pytest.mark.parametrize("publish", [publish_one, publish_batch, publish_transaction])
def test_a_field_the_store_could_not_read_back_is_refused_at_publish(
    broker: mqkit.Broker, bad: mqkit.Message, error: type[mqkit.MQError], publish: Publish
) -> None:
    topic = next(topics)
    sub = broker.subscribe(topic)
    with pytest.raises(error, match="'bad'"):
        publish(broker, topic, [mqkit.Message("good", 1), bad])
    assert sub.stats().received == 0  # nothing delivered, nothing stored
    assert broker.recover_messages(topic) == []
    sub.cancel()


@pytest.mark.parametrize("as_batch", [False, True], ids=["publish", "publish_batch"])
def test_non_finite_float_fields_survive_the_store(encoder: str, as_batch: bool) -> None:
    nan, inf = float("nan"), float("inf")
    batch: list[mqkit.Message] = [
        # (a non-finite ack_timeout is refused at publish: tests/core/test_validation.py)
        mqkit.AckMessage("a1", 1, ack_timeout=1e308),
        mqkit.AckTTLMessage("a2", 2, ack_timeout=0.0, expires_at=datetime(2300, 1, 1, tzinfo=UTC)),
        ScoredMessage("s1", 3, score=-inf),
        ScoredMessage("s2", {"x": nan}, score=nan),
        SeriesMessage("l1", 4, series=[1.5, inf, nan]),
        mqkit.AckMessage("a3", 5, ack_timeout=2.5),
    ]
    with tempfile.TemporaryDirectory() as path:
        config = mqkit.Config(enable_persistence=True, persistence_path=path)
        with mqkit.Broker(config) as first:
            if as_batch:
                first.publish_batch("t", batch)
            else:
                for message in batch:
                    first.publish("t", message)
        with mqkit.Broker(config) as second:
            recovered = second.recover_messages("t")
    assert [m.id for m in recovered] == [m.id for m in batch]
    for original, back in zip(batch, recovered, strict=True):
        expected = attrs.evolve(original, topic="t", time=back.time)
        if hasattr(original, "ack_id"):
            expected = attrs.evolve(expected, ack_id=back.ack_id)  # type: ignore[attr-defined]
        assert same_message(expected, back), (expected, back)


def test_the_fast_writer_writes_utf8_and_the_stdlib_escapes(encoder: str) -> None:
    """Which writer ran is visible in the stored text; both read back the same message."""
    with tempfile.TemporaryDirectory() as path:
        config = mqkit.Config(enable_persistence=True, persistence_path=path)
        with mqkit.Broker(config) as broker:
            broker.publish("t", mqkit.Message("caf\u00e9", {"n": "\u00fc"}))
            broker.publish("t", mqkit.Message("lone", "\ud800"))  # orjson refuses: the stdlib
            plugin = broker.get_plugin("persistence")
            cache = plugin.cache  # type: ignore[union-attr]
            texts = {json.loads(cache[key])["id"]: cache[key] for key in cache.iterkeys()}
            recovered = broker.recover_messages("t")
    utf8 = '"data":{"n":"\u00fc"}'
    escaped = '"data":{"n":"\\u00fc"}'
    assert (utf8 in texts["caf\u00e9"]) is (encoder == "orjson")
    assert (escaped in texts["caf\u00e9"]) is (encoder == "stdlib")
    assert '"data":"\\ud800"' in texts["lone"]
    assert [(m.id, m.data) for m in recovered] == [
        ("caf\u00e9", {"n": "\u00fc"}),
        ("lone", "\ud800"),
    ]


def test_a_value_checked_by_value_is_checked_every_time() -> None:
    """The per-class cache holds only value types that read back whatever the value."""
    check_fields([mqkit.AckMessage("ok", 1, ack_policy=mqkit.AckPolicy.NONE)])
    check_fields([mqkit.PriorityMessage("ok", 1, priority=2.0)])  # type: ignore[arg-type]
    with pytest.raises(mqkit.SerializationError, match=r"'no' cannot be stored.*'ack_policy'"):
        check_fields([mqkit.AckMessage("no", 1, ack_policy=7)])  # type: ignore[arg-type]
    with pytest.raises(mqkit.SerializationError, match=r"'no' cannot be stored.*'priority'"):
        check_fields([mqkit.PriorityMessage("no", 1, priority=2.5)])  # type: ignore[arg-type]
