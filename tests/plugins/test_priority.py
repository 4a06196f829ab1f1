"""The ``priority`` plugin: buffers ordered by priority, FIFO within a level, under every policy."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mqkit
from mqkit import Backpressure, Message, Priority, PriorityMessage, SubOptions
from mqkit.testing import FakeClock, make_broker

from .helpers import drain, drain_ids, drops

P = Priority


def pm(name: str, priority: int) -> PriorityMessage:
    return PriorityMessage(name, priority=priority)


def test_highest_priority_first_fifo_within_a_level(make_broker) -> None:
    broker = make_broker("priority")
    sub = broker.subscribe("jobs")
    for name, prio in [
        ("low-1", P.LOW),
        ("normal-1", P.NORMAL),
        ("highest-1", P.HIGHEST),
        ("low-2", P.LOW),
        ("high-1", P.HIGH),
        ("highest-2", P.HIGHEST),
        ("lowest-1", P.LOWEST),
        ("normal-2", P.NORMAL),
    ]:
        broker.publish_priority("jobs", pm(name, prio))
    assert drain_ids(sub) == [
        "highest-1",
        "highest-2",
        "high-1",
        "normal-1",
        "normal-2",
        "low-1",
        "low-2",
        "lowest-1",
    ]


def test_any_int_is_a_priority(make_broker) -> None:
    broker = make_broker("priority")
    sub = broker.subscribe("jobs")
    prios = [-5, 0, 41, 1000, -100, 20, 41, 7]
    for i, prio in enumerate(prios):
        broker.publish("jobs", pm(f"m{i}", prio))
    got = drain(sub)
    assert [m.priority for m in got] == [1000, 41, 41, 20, 7, 0, -5, -100]
    assert [m.id for m in got][1:3] == ["m2", "m6"]  # FIFO among the two 41s


def test_subscriber_receives_the_published_type(make_broker) -> None:
    broker = make_broker("priority")
    sub = broker.subscribe("jobs")
    broker.publish_priority("jobs", pm("p", P.HIGH))
    got = sub.get_nowait()
    assert type(got) is PriorityMessage
    assert (got.id, got.priority, got.topic) == ("p", P.HIGH, "jobs")


def test_plain_message_counts_as_normal(make_broker) -> None:
    broker = make_broker("priority")
    sub = broker.subscribe("jobs")
    broker.publish("jobs", pm("normal-before", P.NORMAL))
    broker.publish("jobs", pm("low", P.LOW))
    broker.publish("jobs", Message("plain"))
    broker.publish("jobs", pm("high", P.HIGH))
    broker.publish("jobs", pm("normal-after", P.NORMAL))
    broker.publish("jobs", pm("just-above-normal", P.NORMAL + 1))
    assert drain_ids(sub) == [
        "high",
        "just-above-normal",
        "normal-before",
        "plain",
        "normal-after",
        "low",
    ]


def test_priority_ordering_is_per_subscription(make_broker) -> None:
    broker = make_broker("priority")
    first = broker.subscribe("jobs")
    broker.publish("jobs", pm("low", P.LOW))
    second = broker.subscribe("jobs")
    broker.publish("jobs", pm("high", P.HIGH))
    assert drain_ids(first) == ["high", "low"]
    assert drain_ids(second) == ["high"]


def test_pattern_subscription_is_priority_ordered(make_broker) -> None:
    broker = make_broker("priority")
    sub = broker.subscribe_pattern("jobs.*")
    broker.publish("jobs.a", pm("a-low", P.LOW))
    broker.publish("jobs.b", pm("b-high", P.HIGH))
    broker.publish("jobs.a", pm("a-high", P.HIGH))
    assert [(m.id, m.topic) for m in drain(sub)] == [
        ("b-high", "jobs.b"),
        ("a-high", "jobs.a"),
        ("a-low", "jobs.a"),
    ]


def test_publishing_never_waits_for_a_consumer(make_broker) -> None:
    broker = make_broker("priority")
    sub = broker.subscribe("jobs", SubOptions(buffer_size=100))
    for i in range(100):
        broker.publish("jobs", pm(f"m{i:03}", i % 5))
    assert sub.stats().queue_len == 100
    got = drain(sub)
    assert [m.priority for m in got] == sorted((i % 5 for i in range(100)), reverse=True)
    for level in range(5):
        ids = [m.id for m in got if m.priority == level]
        assert ids == sorted(ids)


def test_priority_queue_off_gives_fifo(make_broker) -> None:
    broker = make_broker()  # no priority plugin
    assert not broker.has_plugin("priority")
    sub = broker.subscribe("jobs")
    for name, prio in [("a", P.LOW), ("b", P.HIGHEST), ("c", P.NORMAL), ("d", 1000)]:
        broker.publish("jobs", pm(name, prio))
    assert drain_ids(sub) == ["a", "b", "c", "d"]


def test_enable_priority_queue_false_gives_fifo() -> None:
    with mqkit.Broker(mqkit.Config(enable_priority_queue=False)) as broker:
        assert not broker.has_plugin("priority")
        sub = broker.subscribe("jobs")
        broker.publish("jobs", pm("a", P.LOWEST))
        broker.publish("jobs", pm("b", P.HIGHEST))
        assert drain_ids(sub) == ["a", "b"]


def test_priority_queue_is_on_by_default() -> None:
    with mqkit.Broker() as broker:
        assert broker.has_plugin("priority")
        sub = broker.subscribe("jobs")
        broker.publish("jobs", pm("a", P.LOWEST))
        broker.publish("jobs", pm("b", P.HIGHEST))
        assert drain_ids(sub) == ["b", "a"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-(10**6), max_value=10**6), max_size=40))
def test_delivery_order_is_a_stable_sort_by_priority(prios: list[int]) -> None:
    broker = make_broker("priority", clock=FakeClock())
    try:
        sub = broker.subscribe("jobs", SubOptions(buffer_size=64))
        for i, prio in enumerate(prios):
            broker.publish("jobs", pm(str(i), prio))
        expected = sorted(range(len(prios)), key=lambda i: -prios[i])  # sorted() is stable
        assert drain_ids(sub) == [str(i) for i in expected]
    finally:
        broker.close()


# -- backpressure with priorities ------------------------------------------------------------------


def full_buffer(broker: mqkit.Broker, policy: Backpressure, **opts: float) -> mqkit.Subscription:
    """A subscription of capacity 3 holding low-a, high-b, low-c."""
    sub = broker.subscribe("jobs", SubOptions(buffer_size=3, policy=policy, **opts))
    broker.publish("jobs", pm("low-a", P.LOW))
    broker.publish("jobs", pm("high-b", P.HIGH))
    broker.publish("jobs", pm("low-c", P.LOW))
    assert sub.stats().queue_len == 3
    return sub


def test_drop_oldest_drops_the_oldest_of_the_lowest_priority(make_broker, hook_recorder) -> None:
    broker = make_broker("priority", objects=[hook_recorder])
    sub = full_buffer(broker, Backpressure.DROP_OLDEST)
    broker.publish("jobs", pm("normal-d", P.NORMAL))
    assert drops(hook_recorder) == [("low-a", "drop_oldest")]
    assert sub.stats().dropped == 1
    assert drain_ids(sub) == ["high-b", "normal-d", "low-c"]


def test_drop_oldest_never_thins_urgent_work_for_a_flood_of_low(make_broker) -> None:
    broker = make_broker("priority")
    sub = broker.subscribe("jobs", SubOptions(buffer_size=3))
    for name in ("urgent-1", "urgent-2"):
        broker.publish("jobs", pm(name, P.HIGHEST))
    for i in range(10):
        broker.publish("jobs", pm(f"low-{i}", P.LOW))
    assert sub.stats().dropped == 9
    assert drain_ids(sub) == ["urgent-1", "urgent-2", "low-9"]


def test_drop_oldest_new_message_of_the_lowest_level_drops_older_of_that_level(
    make_broker, hook_recorder
) -> None:
    broker = make_broker("priority", objects=[hook_recorder])
    sub = full_buffer(broker, Backpressure.DROP_OLDEST)
    broker.publish("jobs", pm("low-d", P.LOW))
    assert drops(hook_recorder) == [("low-a", "drop_oldest")]
    assert drain_ids(sub) == ["high-b", "low-c", "low-d"]


def test_drop_oldest_drops_the_new_message_when_it_is_lower_than_all(
    make_broker, hook_recorder
) -> None:
    broker = make_broker("priority", "metrics", objects=[hook_recorder])
    sub = full_buffer(broker, Backpressure.DROP_OLDEST)
    broker.publish("jobs", pm("lowest-d", P.LOWEST))
    broker.publish("jobs", Message("plain-normal"))  # NORMAL: above LOW, evicts low-a
    # lowest-d never entered the buffer: dropped as the newest (never counted as buffered)
    assert drops(hook_recorder) == [("lowest-d", "drop_newest"), ("low-a", "drop_oldest")]
    assert sub.stats() == mqkit.SubscriptionStats(received=4, dropped=2, queue_len=3, queue_cap=3)
    assert drain_ids(sub) == ["high-b", "plain-normal", "low-c"]
    assert broker.metrics().topics["jobs"].dropped == 2


def test_drop_newest_drops_the_new_message_whatever_its_priority(
    make_broker, hook_recorder
) -> None:
    broker = make_broker("priority", objects=[hook_recorder])
    sub = full_buffer(broker, Backpressure.DROP_NEWEST)
    broker.publish("jobs", pm("highest-d", P.HIGHEST))
    assert drops(hook_recorder) == [("highest-d", "drop_newest")]
    assert drain_ids(sub) == ["high-b", "low-a", "low-c"]
    broker.publish("jobs", pm("highest-e", P.HIGHEST))  # room again
    assert drain_ids(sub) == ["highest-e"]


def test_close_subscriber_drops_new_and_closes_buffer_drains_in_priority_order(
    make_broker, hook_recorder
) -> None:
    broker = make_broker("priority", objects=[hook_recorder])
    sub = full_buffer(broker, Backpressure.CLOSE_SUBSCRIBER)
    broker.publish("jobs", pm("highest-d", P.HIGHEST))
    assert drops(hook_recorder) == [("highest-d", "close_subscriber")]
    assert sub.closed
    assert [sub.get_nowait().id for _ in range(3)] == ["high-b", "low-a", "low-c"]
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get_nowait()


def test_block_with_timeout_drops_the_new_message_when_no_room_comes(
    make_broker, hook_recorder
) -> None:
    broker = make_broker("priority", objects=[hook_recorder])
    sub = full_buffer(broker, Backpressure.BLOCK_WITH_TIMEOUT, block_timeout=0.0)
    broker.publish("jobs", pm("highest-d", P.HIGHEST))
    assert drops(hook_recorder) == [("highest-d", "block_with_timeout")]
    assert drain_ids(sub) == ["high-b", "low-a", "low-c"]


def test_block_with_timeout_blocked_publisher_enters_by_priority_when_room_comes(
    make_broker,
) -> None:
    broker = make_broker("priority")
    sub = full_buffer(broker, Backpressure.BLOCK_WITH_TIMEOUT, block_timeout=60.0)
    published = threading.Event()

    def publisher() -> None:
        broker.publish("jobs", pm("highest-d", P.HIGHEST))
        published.set()

    thread = threading.Thread(target=publisher)
    thread.start()
    # Whether or not the publisher is already waiting, this get makes the room it needs; the
    # buffer held no highest-d yet, so the get returns the best of the first three.
    assert sub.get(timeout=10).id == "high-b"
    assert published.wait(10)
    thread.join(10)
    assert sub.stats().dropped == 0
    assert drain_ids(sub) == ["highest-d", "low-a", "low-c"]
