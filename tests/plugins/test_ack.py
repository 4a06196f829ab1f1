"""The ``ack`` plugin: per-subscription deadlines, redelivery, retries and dead letters."""

from __future__ import annotations

import pytest

import mqkit
from mqkit import AckMessage, AckNotFoundError, AckPolicy, Config, Message
from mqkit.testing import FakeClock

from .helpers import DLQ, dead_letter_summary, drain, drain_ids

TIMEOUT = 10.0
ACK = Config(default_ack_timeout=TIMEOUT)
ACK_DLQ = ACK.replace(dead_letter_topic=DLQ)

REQUIRING = [AckPolicy.REQUIRED, AckPolicy.TIMEOUT]


@pytest.fixture
def ack_broker(make_broker, hook_recorder) -> mqkit.Broker:
    """Ack support, the DLQ and metrics on; ``default_ack_timeout`` 10 s."""
    return make_broker("ack", "deadletter", "metrics", config=ACK_DLQ, objects=[hook_recorder])


# -- per subscription ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", REQUIRING)
def test_each_subscription_must_ack(ack_broker: mqkit.Broker, fake_clock, policy) -> None:
    first, second = ack_broker.subscribe("t"), ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("m", ack_policy=policy))
    one, two = first.get_nowait(), second.get_nowait()
    assert one.ack_id == two.ack_id != ""
    first.ack(one.ack_id)
    fake_clock.advance(TIMEOUT)
    assert drain(first) == []
    again = second.get_nowait()
    assert (again.id, again.ack_id, again.attempt) == ("m", two.ack_id, 2)
    second.ack(again.ack_id)
    fake_clock.advance(TIMEOUT * 10)
    assert drain(first) == drain(second) == []
    assert ack_broker.dead_letters() == []


def test_broker_ack_settles_every_subscription_of_the_topic(
    ack_broker: mqkit.Broker, fake_clock
) -> None:
    subs = [ack_broker.subscribe("t") for _ in range(3)]
    ack_broker.publish_with_ack("t", AckMessage("m", ack_id="A"))
    for sub in subs[:2]:
        assert sub.get_nowait().ack_id == "A"
    ack_broker.ack("t", "A")  # the two that hold it; the third has not been handed it yet
    fake_clock.advance(TIMEOUT)
    assert drain(subs[0]) == drain(subs[1]) == []
    third = subs[2].get_nowait()
    assert third.attempt == 1
    ack_broker.ack("t", "A")
    with pytest.raises(AckNotFoundError):
        ack_broker.ack("t", "A")
    assert ack_broker.metrics().topics["t"].acked == 3


def test_broker_ack_is_per_topic(ack_broker: mqkit.Broker) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("m", ack_id="A"))
    sub.get_nowait()
    with pytest.raises(AckNotFoundError):
        ack_broker.ack("other", "A")
    ack_broker.ack("t", "A")


def test_ack_message_is_tracked_on_a_plain_subscription(ack_broker, fake_clock) -> None:
    plain = ack_broker.subscribe("t")
    with_ack = ack_broker.subscribe_with_ack("t")
    ack_broker.publish("t", AckMessage("m"))
    plain.get_nowait()
    with_ack.get_nowait()
    fake_clock.advance(TIMEOUT)
    assert [m.attempt for m in drain(plain)] == [2]
    assert [m.attempt for m in drain(with_ack)] == [2]


# -- the deadline ----------------------------------------------------------------------------------


def test_deadline_starts_when_get_hands_the_message_out(
    ack_broker: mqkit.Broker, fake_clock: FakeClock
) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("m"))
    fake_clock.advance(TIMEOUT * 5)  # buffered, not handed out: no deadline runs
    assert sub.stats().queue_len == 1
    first = sub.get_nowait()
    assert first.attempt == 1
    fake_clock.advance(TIMEOUT - 0.5)
    assert sub.stats().queue_len == 0
    fake_clock.advance(0.5)
    again = sub.get_nowait()
    assert (again.id, again.attempt) == ("m", 2)
    sub.ack(again.ack_id)


def test_message_ack_timeout_overrides_the_default(ack_broker, fake_clock) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("quick", ack_timeout=1.0))
    sub.get_nowait()
    fake_clock.advance(1.0)
    assert [m.attempt for m in drain(sub)] == [2]


def test_ack_before_the_deadline_settles(ack_broker: mqkit.Broker, fake_clock) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("m"))
    got = sub.get_nowait()
    fake_clock.advance(TIMEOUT - 1)
    sub.ack(got.ack_id)
    fake_clock.advance(TIMEOUT * 10)
    assert drain(sub) == []
    assert ack_broker.dead_letters() == []
    assert ack_broker.metrics().total_redelivered == 0


def test_redelivery_goes_to_the_front(ack_broker: mqkit.Broker, fake_clock) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("first"))
    got = sub.get_nowait()
    ack_broker.publish("t", Message("later-1"))
    ack_broker.publish("t", Message("later-2"))
    fake_clock.advance(TIMEOUT)
    assert [(m.id, m.attempt) for m in drain(sub)] == [
        ("first", 2),
        ("later-1", 1),
        ("later-2", 1),
    ]
    assert got.attempt == 1  # the consumer's copy never changes


@pytest.mark.parametrize("retries", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("policy", REQUIRING)
def test_missed_deadlines_give_r_plus_one_deliveries_then_a_dead_letter(
    make_broker, fake_clock: FakeClock, hook_recorder, retries: int, policy
) -> None:
    broker = make_broker(
        "ack",
        "deadletter",
        "metrics",
        config=ACK_DLQ.replace(max_ack_retries=retries),
        objects=[hook_recorder],
    )
    sub = broker.subscribe("t")
    dlq = broker.subscribe(DLQ)
    broker.publish_with_ack("t", AckMessage("m", {"n": 1}, ack_policy=policy))
    delivered = []
    for _ in range(retries + 5):
        try:
            delivered.append(sub.get_nowait())
        except TimeoutError:
            break
        fake_clock.advance(TIMEOUT)
    assert [m.attempt for m in delivered] == list(range(1, retries + 2))
    assert len({m.ack_id for m in delivered}) == 1
    reason = f"ack timeout after {retries + 1} attempts"
    assert dead_letter_summary(broker) == [("m", "t", reason, retries + 1)]
    copy = dlq.get_nowait()
    assert (type(copy), copy.id, copy.data) == (Message, "m", {"n": 1})
    assert dict(copy.meta) == {
        "x-original-topic": "t",
        "x-dead-letter-reason": reason,
        "x-attempts": str(retries + 1),
    }
    assert [c.reason for c in hook_recorder.of("mqkit_dead_letter")] == [reason]
    metrics = broker.metrics().topics["t"]
    assert (metrics.delivered, metrics.redelivered, metrics.dead_lettered) == (
        retries + 1,
        retries,
        1,
    )
    with pytest.raises(AckNotFoundError):
        broker.ack("t", delivered[0].ack_id)  # settled by the dead letter


def test_default_max_ack_retries_is_three(make_broker, fake_clock) -> None:
    broker = make_broker("ack", "deadletter", config=ACK_DLQ)
    assert broker.config.max_ack_retries == 3
    sub = broker.subscribe("t")
    broker.publish_with_ack("t", AckMessage("m"))
    attempts = []
    while True:
        try:
            attempts.append(sub.get_nowait().attempt)
        except TimeoutError:
            break
        fake_clock.advance(TIMEOUT)
    assert attempts == [1, 2, 3, 4]
    assert dead_letter_summary(broker) == [("m", "t", "ack timeout after 4 attempts", 4)]


# -- nack ------------------------------------------------------------------------------------------


def test_nack_redelivers_to_that_subscription_only(ack_broker, hook_recorder) -> None:
    first, second = ack_broker.subscribe("t"), ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("m"))
    got = first.get_nowait()
    second.get_nowait()
    first.nack(got.ack_id)
    again = first.get_nowait()
    assert (again.id, again.ack_id, again.attempt) == ("m", got.ack_id, 2)
    assert drain(second) == []
    nacks = hook_recorder.of("mqkit_nack")
    assert [(c.subscription, c.requeue) for c in nacks] == [(first, True)]
    assert ack_broker.metrics().topics["t"].nacked == 1
    assert ack_broker.metrics().topics["t"].redelivered == 1


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_nacks_exhaust_the_retries(make_broker, retries: int) -> None:
    broker = make_broker("ack", "deadletter", config=ACK_DLQ.replace(max_ack_retries=retries))
    sub = broker.subscribe("t")
    broker.publish_with_ack("t", AckMessage("m", ack_id="N"))
    attempts = []
    for _ in range(retries + 5):
        try:
            attempts.append(sub.get_nowait().attempt)
        except TimeoutError:
            break
        broker.nack("t", "N")
    assert attempts == list(range(1, retries + 2))
    assert dead_letter_summary(broker) == [
        ("m", "t", f"nacked after {retries + 1} attempts", retries + 1)
    ]
    assert broker.dead_letters()[0].message.meta == {}


def test_nack_without_requeue_dead_letters_at_once(ack_broker, hook_recorder) -> None:
    sub = ack_broker.subscribe("t")
    dlq = ack_broker.subscribe(DLQ)
    ack_broker.publish_with_ack("t", AckMessage("m"))
    got = sub.get_nowait()
    sub.nack(got.ack_id, requeue=False)
    assert drain(sub) == []
    assert dead_letter_summary(ack_broker) == [("m", "t", "nacked after 1 attempts", 1)]
    assert dlq.get_nowait().meta["x-attempts"] == "1"
    assert [c.requeue for c in hook_recorder.of("mqkit_nack")] == [False]
    with pytest.raises(AckNotFoundError):
        sub.ack(got.ack_id)


def test_broker_nack_without_requeue_after_a_redelivery(ack_broker, fake_clock) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("m", ack_id="Z"))
    sub.get_nowait()
    fake_clock.advance(TIMEOUT)
    assert sub.get_nowait().attempt == 2
    ack_broker.nack("t", "Z", requeue=False)
    assert dead_letter_summary(ack_broker) == [("m", "t", "nacked after 2 attempts", 2)]
    assert ack_broker.dead_letters()[0].message.attempt == 2


# -- ack ids ---------------------------------------------------------------------------------------


def test_generated_ack_id_is_visible_on_the_delivered_message(ack_broker) -> None:
    sub = ack_broker.subscribe("t")
    original = AckMessage("m")
    ack_broker.publish_with_ack("t", original)
    ack_broker.publish_with_ack("t", AckMessage("m"))
    first, second = sub.get_nowait(), sub.get_nowait()
    assert original.ack_id == ""  # the publisher's object is never changed
    assert first.ack_id and second.ack_id and first.ack_id != second.ack_id
    sub.ack(first.ack_id)
    ack_broker.ack("t", second.ack_id)


def test_explicit_ack_id_is_kept(ack_broker) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("m", ack_id="mine"))
    assert sub.get_nowait().ack_id == "mine"
    sub.ack("mine")


def test_publishing_an_ack_id_still_pending_is_refused(ack_broker) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("m", ack_id="dup"))
    sub.get_nowait()
    with pytest.raises(mqkit.InvalidMessageError, match="dup"):
        ack_broker.publish_with_ack("t", AckMessage("m2", ack_id="dup"))
    assert drain(sub) == []
    sub.ack("dup")
    ack_broker.publish_with_ack("t", AckMessage("m3", ack_id="dup"))  # settled: free again
    assert drain_ids(sub) == ["m3"]


def settle_ops(broker: mqkit.Broker, sub: mqkit.Subscription, ack_id: str) -> list:
    return [
        lambda: broker.ack("t", ack_id),
        lambda: broker.nack("t", ack_id),
        lambda: broker.nack("t", ack_id, requeue=False),
        lambda: sub.ack(ack_id),
        lambda: sub.nack(ack_id),
        lambda: sub.nack(ack_id, requeue=False),
    ]


def test_unknown_ack_id_raises_everywhere(ack_broker) -> None:
    sub = ack_broker.subscribe("t")
    for op in settle_ops(ack_broker, sub, "never-seen"):
        with pytest.raises(AckNotFoundError, match="mq: ack id not found"):
            op()


@pytest.mark.parametrize(
    "settle",
    ["ack", "nack-no-requeue", "broker-ack", "dead-lettered"],
)
def test_settled_ack_id_raises_everywhere(ack_broker, fake_clock, settle: str) -> None:
    broker = ack_broker
    sub = broker.subscribe("t")
    broker.publish_with_ack("t", AckMessage("m", ack_id="S", ack_timeout=1.0))
    sub.get_nowait()
    if settle == "ack":
        sub.ack("S")
    elif settle == "nack-no-requeue":
        sub.nack("S", requeue=False)
    elif settle == "broker-ack":
        broker.ack("t", "S")
    else:
        for _ in range(4):
            fake_clock.advance(1.0)
            drain(sub)
        assert [d.reason for d in broker.dead_letters()] == ["ack timeout after 4 attempts"]
    for op in settle_ops(broker, sub, "S"):
        with pytest.raises(AckNotFoundError):
            op()


def test_ack_on_another_subscription_raises(ack_broker) -> None:
    holder, other = ack_broker.subscribe("t"), ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("m", ack_id="H"))
    holder.get_nowait()
    with pytest.raises(AckNotFoundError):
        other.ack("H")  # buffered there, never handed out
    holder.ack("H")


# -- policies --------------------------------------------------------------------------------------


def test_policy_none_is_not_tracked(make_broker, fake_clock) -> None:
    broker = make_broker(
        "ack", "deadletter", "memory", config=ACK_DLQ.replace(max_memory_usage=10**6)
    )
    sub = broker.subscribe("t")
    broker.publish_with_ack("t", AckMessage("m", ack_id="free", ack_policy=AckPolicy.NONE))
    got = sub.get_nowait()
    assert got.ack_policy is AckPolicy.NONE
    assert broker.memory_usage() == 0  # nothing kept for a redelivery
    fake_clock.advance(TIMEOUT * 10)
    assert drain(sub) == []
    assert broker.dead_letters() == []
    with pytest.raises(AckNotFoundError):
        sub.ack("free")


def test_plain_messages_are_not_tracked(ack_broker, fake_clock) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish("t", Message("plain"))
    sub.get_nowait()
    fake_clock.advance(TIMEOUT * 10)
    assert drain(sub) == []
    assert ack_broker.metrics().total_redelivered == 0


# -- cancelled subscriptions -----------------------------------------------------------------------


def test_cancel_dead_letters_unacked_delivered_and_buffered(ack_broker) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("delivered"))
    ack_broker.publish("t", Message("plain"))
    ack_broker.publish_with_ack("t", AckMessage("buffered"))
    assert sub.get_nowait().id == "delivered"
    sub.cancel()
    reason = "unsubscribed before ack"
    assert dead_letter_summary(ack_broker) == [
        ("delivered", "t", reason, 1),
        ("buffered", "t", reason, 1),
    ]
    assert drain_ids(sub) == ["plain"]  # the rest of the buffer can still be drained
    health = ack_broker.health_check()
    assert (health.status, health.problems) == ("healthy", ())


def test_cancel_with_the_dlq_off_drops_counts_and_degrades_health(
    make_broker, hook_recorder
) -> None:
    broker = make_broker("ack", "metrics", config=ACK, objects=[hook_recorder])
    sub = broker.subscribe("t")
    broker.publish_with_ack("t", AckMessage("delivered"))
    broker.publish_with_ack("t", AckMessage("buffered"))
    sub.get_nowait()
    sub.cancel()
    assert broker.dead_letter_stats() == mqkit.DeadLetterStats(enabled=False, dropped=2)
    health = broker.health_check()
    assert health.status == "degraded"
    assert health.problems == ("2 dead letter(s) dropped: the dead letter queue is off",)
    dropped = [
        c.message.id for c in hook_recorder.of("mqkit_drop") if c.reason == "dead letter queue off"
    ]
    assert sorted(dropped) == ["buffered", "delivered"]
    assert drain(sub) == []


def test_ack_after_cancel_raises(ack_broker) -> None:
    sub = ack_broker.subscribe("t")
    ack_broker.publish_with_ack("t", AckMessage("m", ack_id="C"))
    sub.get_nowait()
    sub.cancel()
    with pytest.raises(AckNotFoundError):
        sub.ack("C")
    with pytest.raises(AckNotFoundError):
        ack_broker.ack("t", "C")
