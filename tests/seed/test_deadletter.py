"""Port of the seed's ``deadletter_test.go`` (seed-spec §4.3): the dead letter queue.

mqkit's dead letters carry ``x-original-topic``, ``x-dead-letter-reason`` and ``x-attempts`` in
``meta`` (seed defect §5.7: the seed dropped reason and origin) and are readable through
``dead_letters()``; the tests assert that on top of what the Go tests check.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

import mqkit
from mqkit.testing import FakeClock


@pytest.fixture
def dlq_broker(make_broker) -> mqkit.Broker:
    return make_broker("deadletter", config=mqkit.Config(dead_letter_topic="dlq"))


def test_dead_letter_manager_basic(dlq_broker: mqkit.Broker) -> None:
    broker = dlq_broker
    assert broker.has_feature("deadletter")  # Go: deadLetterManager != nil
    dlq = broker.subscribe("dlq", mqkit.SubOptions(buffer_size=10))
    broker.publish_to_dead_letter("original-topic", mqkit.Message("dead-1"), "test failure")
    stats = broker.dead_letter_stats()
    assert (stats.enabled, stats.topic, stats.total_messages, stats.current_count) == (
        True,
        "dlq",
        1,
        1,
    )
    got = dlq.get(timeout=0.2)
    assert (got.id, got.topic) == ("dead-1", "dlq")
    assert got.meta["x-original-topic"] == "original-topic"
    assert got.meta["x-dead-letter-reason"] == "test failure"
    [record] = broker.dead_letters()
    assert (record.message.id, record.original_topic, record.reason) == (
        "dead-1",
        "original-topic",
        "test failure",
    )


def test_dead_letter_multiple_messages(dlq_broker: mqkit.Broker, drain) -> None:
    broker = dlq_broker
    dlq = broker.subscribe("dlq", mqkit.SubOptions(buffer_size=10))
    for name in "abcde":
        broker.publish_to_dead_letter(f"topic-{name}", mqkit.Message(name), "failed")
    stats = broker.dead_letter_stats()
    assert (stats.total_messages, stats.current_count) == (5, 5)
    got = drain(dlq)
    assert [m.id for m in got] == list("abcde")
    assert [m.meta["x-original-topic"] for m in got] == [f"topic-{n}" for n in "abcde"]


def test_dead_letter_disabled(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.DeadLetterNotSupportedError, match="enable_dead_letter_queue=True"):
        broker.publish_to_dead_letter("original-topic", mqkit.Message("dead-1"), "failure")
    assert broker.dead_letter_stats().enabled is False


def test_dead_letter_default_topic(make_broker) -> None:
    broker = make_broker("deadletter", config=mqkit.Config(dead_letter_topic="dead-letter"))
    dlq = broker.subscribe("dead-letter")
    broker.publish_to_dead_letter("original-topic", mqkit.Message("dead-1"), "failure")
    assert dlq.get(timeout=0.2).id == "dead-1"
    assert broker.dead_letter_stats().topic == "dead-letter"


def test_dead_letter_close(dlq_broker: mqkit.Broker) -> None:
    broker = dlq_broker
    broker.publish_to_dead_letter("original-topic", mqkit.Message("dead-1"), "failure")
    assert broker.dead_letter_stats().total_messages == 1
    broker.close()
    with pytest.raises(mqkit.BrokerClosedError):
        broker.publish_to_dead_letter("original-topic", mqkit.Message("dead-2"), "failure")
    # Read-only queries keep answering after close (DESIGN, "After close").
    stats = broker.dead_letter_stats()
    assert (stats.enabled, stats.topic, stats.total_messages) == (True, "dlq", 1)


def test_dead_letter_concurrent(dlq_broker: mqkit.Broker, run_concurrently, drain) -> None:
    # The Go IDs are string(rune(i)) for i in 0..49: "\x00" is a valid (non-empty) id.
    broker = dlq_broker
    dlq = broker.subscribe("dlq", mqkit.SubOptions(buffer_size=100))
    ids = [chr(i) for i in range(50)]
    run_concurrently(
        50,
        lambda i: broker.publish_to_dead_letter("original-topic", mqkit.Message(ids[i]), "x"),
    )
    assert broker.dead_letter_stats().total_messages == 50
    assert sorted(m.id for m in drain(dlq)) == ids


def test_dead_letter_validation(dlq_broker: mqkit.Broker) -> None:
    broker = dlq_broker
    with pytest.raises(mqkit.InvalidMessageError, match="ID is required"):
        broker.publish_to_dead_letter("original-topic", mqkit.Message(""), "failure")
    assert broker.dead_letter_stats().total_messages == 0


def test_dead_letter_with_ack_timeout(make_broker, fake_clock: FakeClock, drain) -> None:
    # Go's test "cannot fail": it only logs when TotalMessages stays 0, which the seed ensures
    # (its ack retry fires once, defect §5.1). In mqkit an unacked message is dead-lettered
    # once its redeliveries are spent: here max_ack_retries=1, so after 2 deliveries.
    cfg = mqkit.Config(dead_letter_topic="dlq", max_ack_retries=1)
    broker = make_broker("ack", "deadletter", config=cfg)
    sub = broker.subscribe("test-topic")
    broker.publish_with_ack(
        "test-topic",
        mqkit.AckMessage("ack-timeout-dlq", ack_policy=mqkit.AckPolicy.TIMEOUT, ack_timeout=0.05),
    )
    assert sub.get_nowait().attempt == 1
    fake_clock.advance(0.05)
    assert sub.get_nowait().attempt == 2
    assert broker.dead_letter_stats().total_messages == 0
    fake_clock.advance(0.05)
    assert broker.dead_letter_stats().total_messages == 1
    [record] = broker.dead_letters()
    assert (record.message.id, record.original_topic, record.attempts) == (
        "ack-timeout-dlq",
        "test-topic",
        2,
    )
    assert record.reason == "ack timeout after 2 attempts"
    assert drain(sub) == []


def test_dead_letter_timestamp(dlq_broker: mqkit.Broker, fake_clock: FakeClock) -> None:
    broker = dlq_broker
    assert broker.dead_letter_stats().last_message_time is None
    before = fake_clock.now()
    fake_clock.advance(1.5)
    broker.publish_to_dead_letter("original-topic", mqkit.Message("dead-1"), "failure")
    at = fake_clock.now()
    fake_clock.advance(1.5)
    after = fake_clock.now()
    last = broker.dead_letter_stats().last_message_time
    assert last is not None
    assert before <= last <= after
    assert last == at == before + timedelta(seconds=1.5)
