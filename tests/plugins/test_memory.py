"""The ``memory`` plugin: the bytes the broker holds, and ``max_memory_usage`` on every path."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import mqkit
from mqkit import (
    AckMessage,
    AckTTLMessage,
    Config,
    MemoryLimitExceededError,
    Message,
    PriorityMessage,
    PriorityTTLMessage,
    SubOptions,
    TTLMessage,
)
from mqkit.core.convert import message_to_dict
from mqkit.core.message import estimate_size
from mqkit.plugins.memory import SLOT_BYTES
from mqkit.testing import FakeClock, broker_config

from .helpers import DLQ, drain, drain_ids, in_

LIMIT = 1000
ALL = ("memory", "priority", "ttl", "ack", "transactions", "deadletter", "metrics")


def size(message: Message) -> int:
    return estimate_size(message)


@pytest.fixture
def broker(make_broker) -> mqkit.Broker:
    """Every message-holding feature on; a generous limit so accounting can be read exactly."""
    return make_broker(*ALL, config=Config(max_memory_usage=10**6, dead_letter_topic=DLQ))


def test_memory_goes_up_on_publish_and_down_when_consumed(broker: mqkit.Broker) -> None:
    assert broker.memory_usage() == 0
    sub = broker.subscribe("t")
    m = Message("m", "payload" * 10, meta={"k": "v"})
    broker.publish("t", m)
    assert broker.memory_usage() == size(m) + SLOT_BYTES
    n = Message("n", [1, 2, 3])
    broker.publish("t", n)
    assert broker.memory_usage() == size(m) + size(n) + 2 * SLOT_BYTES
    sub.get_nowait()
    assert broker.memory_usage() == size(n) + SLOT_BYTES
    sub.get_nowait()
    assert broker.memory_usage() == 0


def test_a_payload_changed_after_publish_is_released_as_it_was_counted(broker) -> None:
    # The estimate is measured once, at publish: what leaves a buffer is exactly what entered.
    sub = broker.subscribe("t")
    payload = {"k": "v"}
    broker.publish("t", Message("m", payload))
    payload["big"] = "x" * 10_000
    assert sub.get_nowait().data is payload
    assert broker.memory_usage() == 0


def test_the_size_memo_is_not_a_part_of_the_message() -> None:
    m = Message("m", {"k": "v"})
    fresh = Message("m", {"k": "v"})
    assert estimate_size(m) > 0
    assert m == fresh
    assert repr(m) == repr(fresh)
    assert message_to_dict(m) == message_to_dict(fresh)
    assert "_size" not in message_to_dict(m) and "size" not in message_to_dict(m)


def test_a_message_in_several_buffers_counts_once_per_buffer(broker) -> None:
    subs = [broker.subscribe("t") for _ in range(3)]
    m = Message("m", "x" * 100)
    broker.publish("t", m)
    one = size(m) + SLOT_BYTES
    assert broker.memory_usage() == 3 * one  # conservative: each buffered copy counts
    for i, sub in enumerate(subs):
        sub.get_nowait()
        assert broker.memory_usage() == (2 - i) * one


def test_the_limit_counts_every_buffer_a_publish_would_fill() -> None:
    m = Message("m", "x" * 100)
    one = size(m) + SLOT_BYTES
    with mqkit.Broker(broker_config("memory", config=Config(max_memory_usage=3 * one - 1))) as b:
        subs = [b.subscribe("t") for _ in range(3)]
        with pytest.raises(mqkit.MemoryLimitExceededError):
            b.publish("t", m)
        assert all(s.stats().queue_len == 0 for s in subs)
        b.publish("other", m)  # no subscriber: one copy's worth fits


def test_nothing_is_held_for_a_topic_without_subscribers(broker: mqkit.Broker) -> None:
    broker.publish("nobody", Message("m", "x" * 100))
    assert broker.memory_usage() == 0


def test_evicted_and_expired_messages_are_released(broker, fake_clock: FakeClock) -> None:
    sub = broker.subscribe("t", SubOptions(buffer_size=1))
    broker.publish("t", Message("a", "x" * 100))
    b = TTLMessage("b", expires_at=in_(fake_clock, 0.5))
    broker.publish("t", b)  # evicts a
    assert broker.memory_usage() == size(b) + SLOT_BYTES
    fake_clock.advance(1)  # b expires and is swept into the dead letter queue
    assert sub.stats().queue_len == 0
    assert broker.memory_usage() == size(b)  # the DLQ record


def test_open_transactions_are_held(broker: mqkit.Broker, fake_clock: FakeClock) -> None:
    sub = broker.subscribe("t")
    a, b = Message("a", "x" * 50), Message("b", "y" * 70)
    broker.publish_with_transaction("t", a, "tx1")
    broker.publish_with_transaction("t", b, "tx2")
    assert broker.memory_usage() == size(a) + size(b)
    broker.rollback_transaction("tx1")
    assert broker.memory_usage() == size(b)
    broker.commit_transaction("tx2")
    assert broker.memory_usage() == size(b) + SLOT_BYTES  # now in the buffer
    sub.get_nowait()
    broker.publish_with_transaction("t", a, "tx3")
    fake_clock.advance(broker.config.transaction_timeout)
    assert broker.memory_usage() == 0


def test_dead_letters_are_held(broker: mqkit.Broker) -> None:
    m = Message("m", "x" * 100)
    broker.publish_to_dead_letter("t", m, "r")
    assert broker.memory_usage() == size(m)
    dlq = broker.subscribe(DLQ)
    broker.publish_to_dead_letter("t", m, "r")
    copy_bytes = broker.memory_usage() - 2 * size(m)
    assert copy_bytes > size(m) + SLOT_BYTES  # the copy's meta adds to it
    dlq.get_nowait()
    assert broker.memory_usage() == 2 * size(m)
    assert broker.replay_dead_letters() == 2  # nobody subscribes to "t"
    assert broker.memory_usage() == 0


def test_unacked_deliveries_are_held(broker: mqkit.Broker, fake_clock: FakeClock) -> None:
    sub = broker.subscribe("t")
    m = AckMessage("m", "x" * 100, ack_id="A")
    broker.publish_with_ack("t", m)
    assert broker.memory_usage() == size(m) + SLOT_BYTES
    sub.get_nowait()
    assert broker.memory_usage() == size(m)  # kept for a redelivery
    sub.nack("A")
    assert broker.memory_usage() == size(m) + SLOT_BYTES  # back in the buffer
    sub.get_nowait()
    fake_clock.advance(broker.config.default_ack_timeout)
    assert broker.memory_usage() == size(m) + SLOT_BYTES
    sub.get_nowait()
    sub.ack("A")
    assert broker.memory_usage() == 0


def test_cancelled_subscription_releases_its_buffer(broker: mqkit.Broker) -> None:
    sub = broker.subscribe("t")
    broker.publish("t", Message("a", "x" * 100))
    sub.cancel()
    assert broker.memory_usage() == 0
    assert drain_ids(sub) == ["a"]
    assert broker.memory_usage() == 0


def test_health_reports_usage_and_limit(broker: mqkit.Broker) -> None:
    broker.subscribe("t")
    m = Message("m")
    broker.publish("t", m)
    health = broker.health_check()
    assert (health.memory_usage, health.memory_limit) == (size(m) + SLOT_BYTES, 10**6)


def test_memory_off_counts_nothing(make_broker) -> None:
    broker = make_broker()
    assert not broker.has_plugin("memory")
    broker.subscribe("t")
    broker.publish("t", Message("m", "x" * 10_000))
    assert broker.memory_usage() == 0
    assert broker.health_check().memory_limit == 0


# -- the limit -------------------------------------------------------------------------------------

BIG = "x" * 2000
Publish = Callable[[mqkit.Broker, FakeClock], None]

PATHS: dict[str, Publish] = {
    "publish": lambda b, c: b.publish("t", Message("big", BIG)),
    "publish_batch": lambda b, c: b.publish_batch(
        "t", [Message(f"m{i}", "x" * 300) for i in range(3)]
    ),
    "publish_priority": lambda b, c: b.publish_priority("t", PriorityMessage("big", BIG)),
    "publish_ttl": lambda b, c: b.publish_ttl("t", TTLMessage("big", BIG, expires_at=in_(c, 60))),
    "publish_priority_ttl": lambda b, c: b.publish_priority_ttl(
        "t", PriorityTTLMessage("big", BIG, expires_at=in_(c, 60))
    ),
    "publish_with_ack": lambda b, c: b.publish_with_ack("t", AckMessage("big", BIG)),
    "publish_with_ack_ttl": lambda b, c: b.publish_with_ack_ttl(
        "t", AckTTLMessage("big", BIG, expires_at=in_(c, 60))
    ),
    "publish_with_transaction": lambda b, c: b.publish_with_transaction(
        "t", Message("big", BIG), "tx"
    ),
    "publish_to_dead_letter": lambda b, c: b.publish_to_dead_letter(
        "t", Message("big", BIG), "manual"
    ),
}


def test_batch_messages_fit_one_by_one() -> None:
    one = size(Message("m0", "x" * 300)) + SLOT_BYTES
    assert one < LIMIT < 3 * one  # the batch case refuses the sum, not a single message


@pytest.mark.parametrize("path", list(PATHS))
def test_memory_limit_on_every_publish_path(
    make_broker, fake_clock: FakeClock, hook_recorder, path: str
) -> None:
    broker = make_broker(
        *ALL,
        config=Config(max_memory_usage=LIMIT, dead_letter_topic=DLQ),
        objects=[hook_recorder],
    )
    sub, dlq = broker.subscribe("t"), broker.subscribe(DLQ)
    with pytest.raises(MemoryLimitExceededError, match="mq: memory limit exceeded") as info:
        PATHS[path](broker, fake_clock)
    assert isinstance(info.value, mqkit.LimitExceededError)
    # nothing delivered, nothing stored, nothing held
    assert drain(sub) == drain(dlq) == []
    assert broker.dead_letters() == []
    assert broker.memory_usage() == 0
    with pytest.raises(mqkit.TransactionNotFoundError):
        broker.commit_transaction("tx")
    assert hook_recorder.of("mqkit_published") == []
    assert hook_recorder.of("mqkit_dead_letter") == []
    # counted as one error
    metrics = broker.metrics()
    assert metrics.total_published == 0
    assert metrics.total_errors == 2  # the refused publish, and the commit just above
    assert metrics.total_dead_lettered == 0
    assert len(hook_recorder.of("mqkit_error")) == 2


def test_refused_until_memory_is_freed(make_broker) -> None:
    broker = make_broker("memory", "metrics", config=Config(max_memory_usage=LIMIT))
    sub = broker.subscribe("t")
    one = size(Message("m0", "x" * 200)) + SLOT_BYTES
    fits = LIMIT // one
    for i in range(fits):
        broker.publish("t", Message(f"m{i}", "x" * 200))
    assert broker.memory_usage() == fits * one
    with pytest.raises(MemoryLimitExceededError):
        broker.publish("t", Message("one-too-many", "x" * 200))
    assert sub.get_nowait().id == "m0"
    broker.publish("t", Message("fits-again", "x" * 200))
    assert drain_ids(sub)[-1] == "fits-again"
    assert broker.metrics().total_errors == 1
    assert broker.metrics().topics["t"].errors == 1


def test_limit_counts_what_features_hold(make_broker) -> None:
    broker = make_broker(
        "memory", "transactions", config=Config(max_memory_usage=LIMIT), objects=[]
    )
    held = Message("held", "x" * 600)
    broker.publish_with_transaction("t", held, "tx")
    broker.subscribe("t")
    with pytest.raises(MemoryLimitExceededError):
        broker.publish("t", Message("m", "x" * 200))
    broker.rollback_transaction("tx")
    broker.publish("t", Message("m", "x" * 200))


def test_health_degraded_at_ninety_percent(make_broker) -> None:
    payload = next(n for n in range(9) if (size(Message("m", "x" * n)) + SLOT_BYTES) % 9 == 0)
    m = Message("m", "x" * payload)
    used = size(m) + SLOT_BYTES
    limit = used * 10 // 9  # used is exactly 90 % of it
    broker = make_broker("memory", config=Config(max_memory_usage=limit))
    broker.subscribe("t")
    assert broker.health_check().status == "healthy"
    broker.publish("t", m)
    health = broker.health_check()
    assert health.status == "degraded"
    assert health.problems == (f"memory usage {used} bytes is at 90% of the limit",)
    broker.update_config(broker.config.replace(max_memory_usage=limit + 1))  # just under 90 %
    assert broker.health_check().status == "healthy"
