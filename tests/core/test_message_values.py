"""Messages behave like values: hashable, picklable, copyable; reading one changes nothing."""

from __future__ import annotations

import copy
import pickle
import threading
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import attrs
import pytest

import mqkit
from mqkit.core.message import estimate_size, posix_time
from mqkit.testing import FakeClock


@attrs.frozen
class Parcel(mqkit.Message):
    """A user's own slotted message class (the documented way: ``@attrs.frozen``)."""

    weight: int = attrs.field(default=0, kw_only=True)


@attrs.frozen(slots=False)
class LooseParcel(mqkit.PriorityMessage):
    """A user's own class whose new fields live in a ``__dict__``."""

    weight: int = attrs.field(default=0, kw_only=True)


LATER = datetime(2030, 1, 1, tzinfo=UTC)

CLASSES: list[tuple[type[mqkit.Message], dict[str, Any]]] = [
    (mqkit.Message, {}),
    (mqkit.PriorityMessage, {"priority": mqkit.Priority.HIGH}),
    (mqkit.TTLMessage, {"expires_at": LATER}),
    (mqkit.AckMessage, {"ack_timeout": 5.0}),
    (mqkit.PriorityTTLMessage, {"priority": 7, "expires_at": LATER}),
    (mqkit.AckTTLMessage, {"expires_at": LATER}),
    (Parcel, {"weight": 3}),
    (LooseParcel, {"weight": 4, "priority": 1}),
]
IDS = [cls.__name__ for cls, _ in CLASSES]


def _received(
    make_broker: Any, cls: type[mqkit.Message], extra: dict[str, Any], **fields: Any
) -> mqkit.Message:
    """Publish a ``cls`` message through a broker; return the stamped copy a subscriber gets."""
    broker = make_broker("ack", "memory", config=mqkit.Config(max_memory_usage=10**6))
    sub = broker.subscribe("orders.eu")
    broker.publish("orders.eu", cls("m-1", fields.pop("data", "payload"), **extra, **fields))
    got = sub.get_nowait()
    assert got.time is not None and got.topic == "orders.eu"
    return got


# -- hashing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "extra"), CLASSES, ids=IDS)
def test_equal_messages_hash_equal(cls: type[mqkit.Message], extra: dict[str, Any]) -> None:
    when = datetime(2026, 3, 4, 5, 6, 7, 89, tzinfo=UTC)
    a = cls("m", ("x", 1), topic="t", time=when, meta={"k": "v"}, **extra)
    b = cls("m", ("x", 1), topic="t", time=when, meta=MappingProxyType({"k": "v"}), **extra)
    assert a == b and hash(a) == hash(b)
    assert hash(cls("m", **extra)) == hash(cls("m", **extra))
    assert len({a, b, cls("m", ("x", 2), topic="t", time=when, **extra)}) == 2
    assert a != attrs.evolve(a, meta={"k": "w"})
    assert a != attrs.evolve(a, attempt=2)


def test_a_message_is_hashable_when_its_data_and_meta_are() -> None:
    assert hash(mqkit.Message("x")) == hash(mqkit.Message("x"))
    assert hash(mqkit.Message("x", b"raw", meta={"a": "b"})) is not None
    with pytest.raises(TypeError):
        hash(mqkit.Message("x", {"a": 1}))  # a dict payload is not hashable
    with pytest.raises(TypeError):
        hash(mqkit.Message("x", meta={"a": ["not", "hashable"]}))  # type: ignore[dict-item]


@pytest.mark.parametrize(("cls", "extra"), CLASSES, ids=IDS)
def test_received_copies_hash_like_the_message_they_equal(
    make_broker: Any, fake_clock: FakeClock, cls: type[mqkit.Message], extra: dict[str, Any]
) -> None:
    got = _received(make_broker, cls, extra, meta={"k": "v"})
    before = hash(got)
    estimate_size(got)
    assert got.time == fake_clock.now()
    assert hash(got) == before  # reading a message changes nothing
    same = attrs.evolve(got)
    assert same == got and hash(same) == hash(got)
    assert {got: 1}[same] == 1


# -- pickling and copying --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize(("cls", "extra"), CLASSES, ids=IDS)
def test_every_message_class_pickles_to_an_equal_message(
    make_broker: Any, cls: type[mqkit.Message], extra: dict[str, Any], protocol: int
) -> None:
    got = _received(make_broker, cls, extra)
    back = pickle.loads(pickle.dumps(got, protocol))
    assert type(back) is cls
    assert back == got
    assert (back.topic, back.time, back.attempt) == (got.topic, got.time, got.attempt)
    assert posix_time(back) == posix_time(got)
    assert getattr(back, "ack_id", None) == getattr(got, "ack_id", None)
    if hasattr(got, "ack_id"):
        assert back.ack_id  # type: ignore[attr-defined]  # the generated one, kept
    assert estimate_size(back) == estimate_size(got)
    with pytest.raises(TypeError):
        back.meta["k"] = "v"  # type: ignore[index]  # meta stays read-only
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        back.topic = "elsewhere"  # type: ignore[misc]


def test_a_pickled_message_keeps_its_meta_and_payload() -> None:
    message = mqkit.PriorityMessage(
        "m", {"rows": [1, 2]}, type="order", meta=MappingProxyType({"k": "v"}), attempt=3
    )
    back = pickle.loads(pickle.dumps(message))
    assert back == message and back.meta == {"k": "v"} and back.attempt == 3
    with pytest.raises(TypeError):
        back.meta["k"] = "w"  # type: ignore[index]
    given = mqkit.Message("m", meta={"k": "v"})  # a dict the publisher gave: still a dict
    assert pickle.loads(pickle.dumps(given)).meta == {"k": "v"}


def test_an_unpickled_message_can_be_published_again(make_broker, fake_clock: FakeClock) -> None:
    broker = make_broker("ack")
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.AckMessage("m", "x"))
    got = sub.get_nowait()
    sub.ack(got.ack_id)
    fake_clock.advance(1)
    broker.publish("t", pickle.loads(pickle.dumps(got)))
    again = sub.get_nowait()
    assert again.ack_id == got.ack_id and again.time == fake_clock.now() != got.time


@pytest.mark.parametrize(("cls", "extra"), CLASSES, ids=IDS)
def test_copy_and_deepcopy_give_equal_messages(
    make_broker: Any, cls: type[mqkit.Message], extra: dict[str, Any]
) -> None:
    got = _received(make_broker, cls, extra, data=["a", ["b"]], meta={"k": "v"})
    shallow = copy.copy(got)
    deep = copy.deepcopy(got)
    for twin in (shallow, deep):
        assert type(twin) is cls and twin == got and twin is not got
        assert (twin.topic, twin.time, twin.attempt) == (got.topic, got.time, got.attempt)
        assert estimate_size(twin) == estimate_size(got)
    assert shallow.data is got.data
    assert deep.data == got.data and deep.data is not got.data


def test_reading_a_message_leaves_it_as_it_was(make_broker) -> None:
    got = _received(make_broker, mqkit.Message, {}, data=[1, 2, 3])
    before = pickle.dumps(got)
    assert got.time is not None
    estimate_size(got)
    assert pickle.dumps(got) == before


# -- Message.time: one representation --------------------------------------------------------------


def test_time_reads_as_an_aware_utc_datetime_however_given() -> None:
    when = datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    elsewhere = when.astimezone(timezone(timedelta(hours=2)))
    for given in (when, elsewhere, when.timestamp()):
        message = mqkit.Message("m", time=given)
        assert message.time == when and message.time.tzinfo is UTC
        assert posix_time(message) == when.timestamp()
        assert message == mqkit.Message("m", time=when)
        assert hash(message) == hash(mqkit.Message("m", time=when))
    naive = datetime(2025, 5, 6, 7, 8, 9, 123456)  # taken as UTC, as the store does
    assert mqkit.Message("m", time=naive).time == when


def test_time_of_any_microsecond_until_2106_reads_back_exactly() -> None:
    start = datetime(1969, 12, 31, 23, 59, 58, tzinfo=UTC)
    for when in (
        start,
        datetime(2026, 12, 7, 10, 11, 12, 999999, tzinfo=UTC),
        datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        *(start + timedelta(days=241 * i, microseconds=104729 * i) for i in range(1, 200)),
    ):
        assert mqkit.Message("m", time=when).time == when


def test_a_time_that_is_no_instant_is_refused() -> None:
    for bad in ("yesterday", True, float("nan"), [1]):
        with pytest.raises(
            mqkit.InvalidMessageError, match="invalid message: time must be a datetime"
        ):
            mqkit.Message("m", time=bad)  # type: ignore[arg-type]


def test_time_is_read_alike_from_many_threads(make_broker, fake_clock: FakeClock) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.Message("m"))
    got = sub.get_nowait()
    seen: list[datetime | None] = []
    start = threading.Barrier(4)

    def read() -> None:
        start.wait(timeout=10)
        seen.extend(got.time for _ in range(500))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == [fake_clock.now()] * 2000


@pytest.mark.parametrize("cls", [mqkit.Message, Parcel, LooseParcel])
def test_the_memory_count_holds_when_a_buffered_payload_changes(
    make_broker, cls: type[mqkit.Message]
) -> None:
    broker = make_broker("memory", config=mqkit.Config(max_memory_usage=10**6))
    subs = [broker.subscribe("t") for _ in range(2)]
    rows = [1, 2]
    broker.publish("t", cls("m", rows))
    held = broker.memory_usage()
    rows.extend(range(100))  # the publisher changes the shared payload while it is buffered
    assert broker.memory_usage() == held
    subs[0].get_nowait()
    rows.clear()
    subs[1].get_nowait()
    assert broker.memory_usage() == 0


@pytest.mark.parametrize("cls", [mqkit.AckMessage, mqkit.AckTTLMessage])
def test_a_redelivered_copy_is_a_new_equal_value(
    make_broker, fake_clock: FakeClock, cls: type[mqkit.Message]
) -> None:
    broker = make_broker("ack", "memory", config=mqkit.Config(max_memory_usage=10**6))
    sub = broker.subscribe("t")
    extra = {"expires_at": LATER} if cls is mqkit.AckTTLMessage else {}
    broker.publish("t", cls("m", ["x"], **extra))
    first = sub.get_nowait()
    held = broker.memory_usage()
    sub.nack(first.ack_id)  # type: ignore[attr-defined]
    again = sub.get_nowait()
    assert again is not first and again.attempt == first.attempt + 1
    assert again == attrs.evolve(first, attempt=first.attempt + 1)
    assert pickle.loads(pickle.dumps(again)) == again
    assert broker.memory_usage() == held
    sub.ack(again.ack_id)  # type: ignore[attr-defined]
    assert broker.memory_usage() == 0
