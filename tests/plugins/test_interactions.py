"""Features meeting each other: priority + TTL, ack + TTL, transactions holding every kind,
ack retries with the dead letter queue off, memory with dead letters."""

from __future__ import annotations

import pytest

import mqkit
from mqkit import (
    AckMessage,
    AckTTLMessage,
    Config,
    Message,
    Priority,
    PriorityMessage,
    PriorityTTLMessage,
)
from mqkit.testing import FakeClock

from .helpers import DLQ, dead_letter_summary, drain, drain_ids, in_

ACK_TIMEOUT = 10.0


def test_expired_high_priority_message_is_skipped_for_the_next(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker("priority", "ttl", "metrics", objects=[hook_recorder])
    sub = broker.subscribe("jobs")
    broker.publish_priority("jobs", PriorityMessage("low", priority=Priority.LOW))
    broker.publish_priority_ttl(
        "jobs",
        PriorityTTLMessage("urgent", priority=Priority.HIGHEST, expires_at=in_(fake_clock, 0.5)),
    )
    broker.publish_priority("jobs", PriorityMessage("high", priority=Priority.HIGH))
    fake_clock.advance(0.6)  # expired, not yet swept
    assert sub.get_nowait().id == "high"
    assert sub.get_nowait().id == "low"
    assert [c.message.id for c in hook_recorder.of("mqkit_expire")] == ["urgent"]
    assert broker.metrics().total_expired == 1


def test_priority_ttl_message_in_time_comes_first(make_broker, fake_clock) -> None:
    broker = make_broker("priority", "ttl")
    sub = broker.subscribe("jobs")
    broker.publish("jobs", Message("normal"))
    broker.publish_priority_ttl(
        "jobs", PriorityTTLMessage("urgent", priority=99, expires_at=in_(fake_clock, 5))
    )
    assert drain_ids(sub) == ["urgent", "normal"]


def test_ack_message_expiring_while_waiting_for_redelivery_is_dead_lettered_expired(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker(
        "ack",
        "ttl",
        "deadletter",
        "metrics",
        config=Config(dead_letter_topic=DLQ, default_ack_timeout=ACK_TIMEOUT),
        objects=[hook_recorder],
    )
    sub = broker.subscribe("t")
    broker.publish_with_ack_ttl(
        "t", AckTTLMessage("m", ack_id="E", expires_at=in_(fake_clock, ACK_TIMEOUT + 0.5))
    )
    assert sub.get_nowait().attempt == 1
    fake_clock.advance(ACK_TIMEOUT)  # deadline missed: redelivered to the buffer (attempt 2)
    assert sub.stats().queue_len == 1
    fake_clock.advance(1)  # expires while waiting for the consumer
    assert drain(sub) == []
    assert [d[:3] for d in dead_letter_summary(broker)] == [("m", "t", "expired")]
    fake_clock.advance(ACK_TIMEOUT * 10)
    assert drain(sub) == []  # no further redelivery, no second dead letter
    assert len(broker.dead_letters()) == 1
    with pytest.raises(mqkit.AckNotFoundError):
        sub.ack("E")
    metrics = broker.metrics().topics["t"]
    assert (metrics.delivered, metrics.redelivered, metrics.expired, metrics.dead_lettered) == (
        1,
        1,
        1,
        1,
    )


def test_ack_message_expiring_before_a_nack_redelivery_is_read(make_broker, fake_clock) -> None:
    broker = make_broker(
        "ack", "ttl", "deadletter", config=Config(dead_letter_topic=DLQ, default_ack_timeout=60)
    )
    sub = broker.subscribe("t")
    broker.publish_with_ack_ttl("t", AckTTLMessage("m", expires_at=in_(fake_clock, 0.5)))
    got = sub.get_nowait()
    sub.nack(got.ack_id)
    fake_clock.advance(0.6)
    with pytest.raises(TimeoutError):
        sub.get_nowait()
    assert [d.reason for d in broker.dead_letters()] == ["expired"]


def test_transaction_holding_priority_ttl_and_ack_messages(
    make_broker, fake_clock: FakeClock
) -> None:
    broker = make_broker(
        "transactions",
        "priority",
        "ttl",
        "ack",
        "deadletter",
        config=Config(dead_letter_topic=DLQ, default_ack_timeout=ACK_TIMEOUT),
    )
    sub = broker.subscribe("t")
    with broker.transaction() as tx:
        tx.publish("t", PriorityMessage("low", priority=Priority.LOW))
        tx.publish("t", AckMessage("ack", ack_id="T"))  # NORMAL
        tx.publish(
            "t", PriorityTTLMessage("urgent-short", priority=99, expires_at=in_(fake_clock, 30))
        )
        tx.publish("t", PriorityMessage("high", priority=Priority.HIGH))
        tx.publish("t", Message("plain"))  # NORMAL
    assert sub.stats().queue_len == 5
    fake_clock.advance(ACK_TIMEOUT * 3 + 1)  # before any get: no ack deadline runs; urgent expires
    assert [m.id for m in drain(sub)] == ["high", "ack", "plain", "low"]
    assert [d[:3] for d in dead_letter_summary(broker)] == [("urgent-short", "t", "expired")]
    fake_clock.advance(ACK_TIMEOUT)  # the deadline started at get()
    again = sub.get_nowait()
    assert (again.id, again.attempt) == ("ack", 2)
    sub.ack("T")


def test_ack_retries_exhausted_with_the_dlq_off(make_broker, fake_clock, hook_recorder) -> None:
    broker = make_broker(
        "ack",
        "metrics",
        config=Config(default_ack_timeout=ACK_TIMEOUT, max_ack_retries=1),
        objects=[hook_recorder],
    )
    sub = broker.subscribe("t")
    broker.publish_with_ack("t", AckMessage("timeout"))
    broker.publish_with_ack("t", AckMessage("nacked"))
    assert sub.get_nowait().id == "timeout"
    fake_clock.advance(ACK_TIMEOUT)
    assert sub.get_nowait().attempt == 2
    fake_clock.advance(ACK_TIMEOUT)
    nacked = sub.get_nowait()
    sub.nack(nacked.ack_id, requeue=False)
    assert drain(sub) == []
    assert broker.dead_letter_stats() == mqkit.DeadLetterStats(enabled=False, dropped=2)
    health = broker.health_check()
    assert health.status == "degraded"
    assert health.problems == ("2 dead letter(s) dropped: the dead letter queue is off",)
    assert hook_recorder.of("mqkit_dead_letter") == []
    dropped = [c.message.id for c in hook_recorder.of("mqkit_drop")]
    assert dropped == ["timeout", "nacked"]
    assert broker.metrics().total_dead_lettered == 0


def test_dead_letter_refused_by_the_memory_limit_is_counted_as_lost(
    make_broker, fake_clock, hook_recorder
) -> None:
    broker = make_broker(
        "ack",
        "deadletter",
        "memory",
        config=Config(
            dead_letter_topic=DLQ,
            default_ack_timeout=1,
            max_ack_retries=0,
            max_memory_usage=1000,
        ),
        objects=[hook_recorder],
    )
    sub = broker.subscribe("t")
    broker.subscribe(DLQ)
    broker.publish_with_ack("t", AckMessage("m", "x" * 500))
    sub.get_nowait()
    fake_clock.advance(1)  # given up; its copy (with the x- meta keys) does not fit
    assert broker.dead_letters() == []
    assert broker.dead_letter_stats().dropped == 1
    assert broker.memory_usage() == 0
    health = broker.health_check()
    assert health.status == "degraded"
    assert health.problems == ("1 dead letter(s) lost: the dead letter queue refused them",)
    assert [(c.message.id, c.reason) for c in hook_recorder.of("mqkit_drop")] == [
        ("m", "dead letter refused")
    ]
