"""The ``deadletter`` plugin: the copy on the DLQ topic, the bounded readable queue, replay."""

from __future__ import annotations

import pytest

import mqkit
from mqkit import (
    AckMessage,
    AckTTLMessage,
    Config,
    DeadLetter,
    Message,
    PriorityMessage,
    TTLMessage,
)
from mqkit.core.message import estimate_size
from mqkit.plugins.memory import SLOT_BYTES
from mqkit.testing import FakeClock

from .helpers import DLQ, dead_letter_summary, drain, drain_ids, in_

DLQ_ON = Config(dead_letter_topic=DLQ)


@pytest.fixture
def broker(make_broker, hook_recorder) -> mqkit.Broker:
    return make_broker("deadletter", "metrics", config=DLQ_ON, objects=[hook_recorder])


def test_copy_on_the_dlq_topic_carries_the_meta_keys(broker: mqkit.Broker, hook_recorder) -> None:
    dlq = broker.subscribe(DLQ)
    original = Message("m", {"order": 7}, type="order.created", meta={"trace": "abc"})
    broker.publish_to_dead_letter("orders", original, "poison")
    copy = dlq.get_nowait()
    assert type(copy) is Message
    assert (copy.id, copy.data, copy.type, copy.topic) == ("m", {"order": 7}, "order.created", DLQ)
    assert dict(copy.meta) == {
        "trace": "abc",
        "x-original-topic": "orders",
        "x-dead-letter-reason": "poison",
        "x-attempts": "1",
    }
    assert original.meta == {"trace": "abc"}  # the caller's message is untouched
    calls = hook_recorder.of("mqkit_dead_letter")
    assert [(c.topic, c.message.id, c.reason) for c in calls] == [("orders", "m", "poison")]


@pytest.mark.parametrize(
    "message",
    [
        PriorityMessage("m", priority=40),
        AckMessage("m", ack_id="a"),
        AckTTLMessage("m", ack_id="a", expires_at=FakeClock().now()),
        TTLMessage("m", expires_at=FakeClock().now()),
    ],
    ids=["priority", "ack", "ack-ttl", "ttl-already-expired"],
)
def test_copy_is_a_plain_message(make_broker, message: Message) -> None:
    broker = make_broker("deadletter", "ttl", "ack", "priority", config=DLQ_ON)
    dlq = broker.subscribe(DLQ)
    broker.publish_to_dead_letter("orders", message, "given up")
    copy = dlq.get_nowait()
    assert type(copy) is Message
    assert copy.meta["x-original-topic"] == "orders"
    assert broker.dead_letters()[0].message == message  # the record keeps the original


def test_attempts_of_the_message_are_recorded(broker: mqkit.Broker) -> None:
    dlq = broker.subscribe(DLQ)
    broker.publish_to_dead_letter("orders", Message("m", attempt=3), "retries")
    assert dlq.get_nowait().meta["x-attempts"] == "3"
    assert broker.dead_letters()[0].attempts == 3


def test_dead_letters_reads_oldest_first_without_removing(
    broker: mqkit.Broker, fake_clock: FakeClock
) -> None:
    for i in range(4):
        broker.publish_to_dead_letter(f"topic-{i}", Message(f"m{i}"), f"reason {i}")
        fake_clock.advance(1)
    first_two = broker.dead_letters(2)
    assert all(isinstance(d, DeadLetter) for d in first_two)
    assert [(d.message.id, d.original_topic, d.reason) for d in first_two] == [
        ("m0", "topic-0", "reason 0"),
        ("m1", "topic-1", "reason 1"),
    ]
    assert [d.time for d in broker.dead_letters()] == [
        in_(fake_clock, -4),
        in_(fake_clock, -3),
        in_(fake_clock, -2),
        in_(fake_clock, -1),
    ]
    assert [d.message.id for d in broker.dead_letters(0)] == ["m0", "m1", "m2", "m3"]
    assert [d.message.id for d in broker.dead_letters(-1)] == ["m0", "m1", "m2", "m3"]
    assert [d.message.id for d in broker.dead_letters(100)] == ["m0", "m1", "m2", "m3"]
    assert broker.dead_letter_stats().current_count == 4


def test_dead_letter_stats(broker: mqkit.Broker, fake_clock: FakeClock) -> None:
    assert broker.dead_letter_stats() == mqkit.DeadLetterStats(enabled=True, topic=DLQ)
    broker.publish_to_dead_letter("orders", Message("a"), "r")
    fake_clock.advance(5)
    broker.publish_to_dead_letter("orders", Message("b"), "r")
    assert broker.dead_letter_stats() == mqkit.DeadLetterStats(
        enabled=True,
        topic=DLQ,
        total_messages=2,
        current_count=2,
        dropped=0,
        last_message_time=fake_clock.now(),
    )


def test_replay_removes_and_republishes_to_the_original_topics(
    broker: mqkit.Broker, hook_recorder
) -> None:
    orders, payments = broker.subscribe("orders"), broker.subscribe("payments")
    broker.publish_to_dead_letter("orders", Message("o1", "x"), "r")
    broker.publish_to_dead_letter("payments", Message("p1", "y"), "r")
    broker.publish_to_dead_letter("orders", Message("o2", "z"), "r")
    assert broker.replay_dead_letters(2) == 2
    assert [(m.id, m.data, m.topic) for m in drain(orders)] == [("o1", "x", "orders")]
    assert [(m.id, m.data, m.topic) for m in drain(payments)] == [("p1", "y", "payments")]
    assert dead_letter_summary(broker) == [("o2", "orders", "r", 1)]
    stats = broker.dead_letter_stats()
    assert (stats.total_messages, stats.current_count) == (3, 1)
    assert broker.replay_dead_letters() == 1
    assert drain_ids(orders) == ["o2"]
    assert broker.dead_letters() == []
    assert broker.replay_dead_letters() == 0


def test_replayed_message_starts_over(make_broker, fake_clock) -> None:
    broker = make_broker(
        "deadletter", "ack", config=DLQ_ON.replace(max_ack_retries=0, default_ack_timeout=1)
    )
    sub = broker.subscribe("t")
    broker.publish_with_ack("t", AckMessage("m", ack_id="R"))
    sub.get_nowait()
    fake_clock.advance(1)
    assert dead_letter_summary(broker) == [("m", "t", "ack timeout after 1 attempts", 1)]
    assert broker.replay_dead_letters() == 1
    again = sub.get_nowait()
    assert (type(again), again.id, again.ack_id, again.attempt) == (AckMessage, "m", "R", 1)
    sub.ack("R")


def test_max_dead_letters_bounds_the_queue(make_broker) -> None:
    broker = make_broker("deadletter", config=DLQ_ON.replace(max_dead_letters=3))
    for i in range(5):
        broker.publish_to_dead_letter("t", Message(f"m{i}"), "r")
    assert [d.message.id for d in broker.dead_letters()] == ["m2", "m3", "m4"]
    stats = broker.dead_letter_stats()
    assert (stats.total_messages, stats.current_count, stats.dropped) == (5, 3, 2)
    assert broker.replay_dead_letters() == 3  # replaying frees the bound
    broker.publish_to_dead_letter("t", Message("m5"), "r")
    assert broker.dead_letter_stats().dropped == 2


def test_dead_letter_copies_are_counted_under_their_topics(broker: mqkit.Broker) -> None:
    broker.subscribe(DLQ)
    broker.publish_to_dead_letter("orders", Message("m"), "r")
    metrics = broker.metrics()
    assert metrics.topics["orders"].dead_lettered == 1
    assert metrics.topics[DLQ].published == 1
    assert metrics.total_dead_lettered == 1


def test_dlq_off_reports_disabled(make_broker) -> None:
    broker = make_broker()
    assert broker.dead_letter_stats() == mqkit.DeadLetterStats(enabled=False)


@pytest.mark.parametrize("topic", ["", "   "])
def test_publish_to_dead_letter_needs_a_valid_original_topic(broker, topic: str) -> None:
    with pytest.raises(mqkit.InvalidTopicError):
        broker.publish_to_dead_letter(topic, Message("m"), "r")
    assert broker.dead_letters() == []
    assert broker.metrics().total_errors == 1


def test_original_topic_is_normalised_like_a_publish(broker: mqkit.Broker) -> None:
    orders = broker.subscribe("orders")
    broker.publish_to_dead_letter("  orders ", Message("m"), "r")
    assert broker.dead_letters()[0].original_topic == "orders"
    broker.replay_dead_letters()
    assert drain_ids(orders) == ["m"]


def test_a_failed_replay_keeps_what_was_not_republished(make_broker) -> None:
    record = estimate_size(Message("m0", "x" * 200))
    # room for two records, but not for a third message buffered next to them
    limit = 3 * record + SLOT_BYTES - 1
    broker = make_broker("deadletter", "memory", config=DLQ_ON.replace(max_memory_usage=limit))
    orders = broker.subscribe("orders")
    for i in range(2):
        broker.publish_to_dead_letter("orders", Message(f"m{i}", "x" * 200), "r")
    assert broker.memory_usage() == 2 * record
    # re-publishing needs room for a buffered copy while the records are still held
    with pytest.raises(mqkit.MemoryLimitExceededError):
        broker.replay_dead_letters()
    assert [d.message.id for d in broker.dead_letters()] == ["m0", "m1"]
    assert drain(orders) == []
    broker.update_config(broker.config.replace(max_memory_usage=10**6))
    assert broker.replay_dead_letters() == 2
    assert drain_ids(orders) == ["m0", "m1"]
