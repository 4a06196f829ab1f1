"""The ``ack`` plugin: per-subscription deadlines, redelivery, retries and dead letters."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

import mqkit
from mqkit import AckMessage, AckNotFoundError, AckPolicy, AckTTLMessage, Config, Message
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


# -- ack ids are unique (issue 13, point 8) --------------------------------------------------------

DUP = "dup"


def publish_dup(broker: mqkit.Broker, path: str, message_id: str) -> None:
    """Publish an ack-required message with the ack id ``DUP`` to "t" through ``path``.

    The batch and transaction paths carry a plain message too: it must share the refusal.
    """
    msg = AckMessage(message_id, ack_id=DUP)
    if path == "publish":
        broker.publish("t", msg)
    elif path == "publish_with_ack":
        broker.publish_with_ack("t", msg)
    elif path == "publish_with_ack_ttl":
        expires = broker.clock.now() + timedelta(seconds=60)
        broker.publish_with_ack_ttl("t", AckTTLMessage(message_id, ack_id=DUP, expires_at=expires))
    elif path == "publish_batch":
        broker.publish_batch("t", [Message(f"{message_id}-plain"), msg])
    elif path == "transaction":
        with broker.transaction() as tx:
            tx.publish("t", Message(f"{message_id}-plain"))
            tx.publish("t", msg)
    else:
        assert path == "publish_with_transaction"
        tx_id = f"tx-{message_id}"
        broker.publish_with_transaction("t", Message(f"{message_id}-plain"), tx_id)
        try:
            broker.publish_with_transaction("t", msg, tx_id)
        except mqkit.InvalidMessageError:
            broker.rollback_transaction(tx_id)
            raise
        broker.commit_transaction(tx_id)


PATHS = [
    "publish",
    "publish_with_ack",
    "publish_with_ack_ttl",
    "publish_batch",
    "transaction",
    "publish_with_transaction",
]


@pytest.fixture
def dup_broker(make_broker) -> mqkit.Broker:
    """Ack support, the DLQ, transactions and TTL; one retry (two deliveries at most)."""
    return make_broker(
        "ack", "deadletter", "transactions", "ttl", config=ACK_DLQ.replace(max_ack_retries=1)
    )


def hold_first(broker: mqkit.Broker, state: str) -> tuple[mqkit.Subscription, str]:
    """Publish "first" with the ack id DUP and leave it ``state``; return its subscription."""
    sub = broker.subscribe("t")
    others = broker.subscribe("t") if state == "held elsewhere" else None
    broker.publish_with_ack("t", AckMessage("first", ack_id=DUP))
    if state in ("delivered", "requeued", "held elsewhere"):
        assert sub.get_nowait().id == "first"
    if state == "requeued":
        sub.nack(DUP)  # back in the buffer, for attempt 2
    if state == "held elsewhere":
        sub.ack(DUP)  # settled here; ``others`` still has it buffered
        assert others is not None
        return others, "first"
    return sub, "first"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("state", ["buffered", "delivered", "requeued", "held elsewhere"])
def test_an_explicit_ack_id_still_unsettled_is_refused_on_every_path(
    dup_broker: mqkit.Broker, fake_clock: FakeClock, path: str, state: str
) -> None:
    broker = dup_broker
    sub, first = hold_first(broker, state)
    with pytest.raises(mqkit.InvalidMessageError, match=r"ack id 'dup'.*topic 't'"):
        publish_dup(broker, path, "second")
    got = drain(sub)
    assert [m.id for m in got] == ([] if state in ("delivered",) else [first])
    # The first one is still tracked: it is redelivered and dead-lettered as it should be.
    sub.ack(DUP)
    fake_clock.advance(TIMEOUT * 10)
    assert drain(sub) == []
    assert broker.dead_letters() == []
    with pytest.raises(AckNotFoundError):
        sub.ack(DUP)


@pytest.mark.parametrize("path", PATHS)
def test_an_ack_id_settled_everywhere_may_be_used_again(dup_broker, path: str) -> None:
    sub = dup_broker.subscribe("t")
    dup_broker.publish_with_ack("t", AckMessage("first", ack_id=DUP))
    sub.get_nowait()
    sub.ack(DUP)
    publish_dup(dup_broker, path, "again")
    assert drain_ids(sub)[-1] == "again"


def end_copy(broker: mqkit.Broker, clock: FakeClock, sub: mqkit.Subscription, how: str) -> None:
    """End the copy of the DUP message that ``sub`` holds, ``how``."""
    if how in ("ack", "nack", "deadline"):
        sub.get_nowait()
    if how == "ack":
        sub.ack(DUP)
    elif how == "nack":
        sub.nack(DUP, requeue=False)
    elif how == "deadline":
        clock.advance(TIMEOUT)  # redelivered once
        assert sub.get_nowait().attempt == 2
        clock.advance(TIMEOUT)  # then dead-lettered
    elif how == "cancel":
        sub.cancel()
    elif how == "evicted":
        broker.publish("t", Message("newer"))  # buffer of one, DROP_OLDEST
    elif how == "expired":
        clock.advance(2)
        assert drain(sub) == []  # withheld
    else:
        assert how == "nobody"


ENDS = ["ack", "nack", "deadline", "cancel", "evicted", "expired", "nobody"]


@pytest.mark.parametrize("how", ENDS)
def test_an_ack_id_is_free_once_every_copy_has_ended(
    dup_broker: mqkit.Broker, fake_clock: FakeClock, how: str
) -> None:
    broker = dup_broker
    options = mqkit.SubOptions(buffer_size=1)
    subs = [] if how == "nobody" else [broker.subscribe("t", options) for _ in range(2)]
    expires = fake_clock.now() + timedelta(seconds=1 if how == "expired" else 1000)
    broker.publish_with_ack_ttl("t", AckTTLMessage("first", ack_id=DUP, expires_at=expires))
    for n, sub in enumerate(subs):
        end_copy(broker, fake_clock, sub, how)
        if how == "evicted":  # the newer message evicted it from both buffers at once
            assert [drain_ids(s) for s in subs] == [["newer"], ["newer"]]
            break
        if n < len(subs) - 1 and how != "expired":  # the other copy is still unsettled
            with pytest.raises(mqkit.InvalidMessageError, match="dup"):
                broker.publish_with_ack("t", AckMessage("too-early", ack_id=DUP))
    watcher = broker.subscribe("t")
    broker.publish_with_ack("t", AckMessage("again", ack_id=DUP))
    assert watcher.get_nowait().id == "again"


def test_a_batch_repeating_an_explicit_ack_id_is_refused_whole(make_broker, tmp_path: Path) -> None:
    config = ACK.replace(persistence_path=str(tmp_path))
    broker = make_broker("ack", "persistence", config=config)
    sub = broker.subscribe("t")
    batch = [AckMessage("a", ack_id=DUP), Message("plain"), AckMessage("b", ack_id=DUP)]
    with pytest.raises(mqkit.InvalidMessageError, match=r"ack id 'dup'.*topic 't'"):
        broker.publish_batch("t", batch)
    assert drain(sub) == []
    assert broker.recover_messages("t") == []
    broker.publish_batch("t", batch[:2])  # nothing was kept for the refused batch
    assert drain_ids(sub) == ["a", "plain"]


def test_a_transaction_repeating_an_explicit_ack_id_delivers_nothing(
    make_broker, tmp_path: Path
) -> None:
    config = ACK.replace(persistence_path=str(tmp_path))
    broker = make_broker("ack", "transactions", "persistence", config=config)
    sub = broker.subscribe("t")
    with pytest.raises(mqkit.InvalidMessageError, match="dup"), broker.transaction() as tx:
        tx.publish("t", AckMessage("a", ack_id=DUP))
        tx.publish("t", Message("plain"))
        tx.publish("t", AckMessage("b", ack_id=DUP))
    assert drain(sub) == []
    assert broker.recover_messages("t") == []


def test_a_transaction_holding_an_ack_id_published_meanwhile_commits_nothing(
    dup_broker: mqkit.Broker,
) -> None:
    sub = dup_broker.subscribe("t")
    dup_broker.publish_with_transaction("t", Message("plain"), "tx")
    dup_broker.publish_with_transaction("t", AckMessage("held", ack_id=DUP), "tx")
    dup_broker.publish_with_ack("t", AckMessage("direct", ack_id=DUP))
    with pytest.raises(mqkit.InvalidMessageError, match="dup"):
        dup_broker.commit_transaction("tx")
    assert drain_ids(sub) == ["direct"]


def test_a_publish_refused_later_on_keeps_no_ack_id(make_broker, tmp_path: Path) -> None:
    # The store refuses the batch after the ack id was checked: the id must not stay taken.
    config = ACK.replace(persistence_path=str(tmp_path))
    broker = make_broker("ack", "persistence", config=config)
    sub = broker.subscribe("t")
    with pytest.raises(mqkit.SerializationError):
        broker.publish_batch("t", [AckMessage("a", ack_id=DUP), Message("bad", object())])
    broker.publish_with_ack("t", AckMessage("a", ack_id=DUP))
    assert drain_ids(sub) == ["a"]


def test_concurrent_publishes_of_one_explicit_ack_id_let_exactly_one_in(make_broker) -> None:
    broker = make_broker("ack", config=ACK)
    sub = broker.subscribe("t")
    threads = 6
    for round_ in range(40):
        gate = threading.Barrier(threads)
        outcomes: list[str] = []

        def publish(
            n: int,
            round_: int = round_,
            gate: threading.Barrier = gate,
            outcomes: list[str] = outcomes,
        ) -> None:
            gate.wait(timeout=10)
            try:
                broker.publish_with_ack("t", AckMessage(f"{round_}-{n}", ack_id=DUP))
            except mqkit.InvalidMessageError:
                outcomes.append("refused")
            else:
                outcomes.append("published")

        workers = [threading.Thread(target=publish, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=10)
        assert sorted(outcomes) == ["published"] + ["refused"] * (threads - 1)
        assert len(drain(sub)) == 1
        sub.ack(DUP)


RESTART_CHILD = """
import sys
import mqkit

path, step = sys.argv[1], sys.argv[2]
config = mqkit.Config(
    enable_persistence=True, persistence_path=path, enable_ack_support=True,
    default_ack_timeout=0.2, max_ack_retries=5,
)
with mqkit.Broker(config) as broker:
    if step == "before":  # a job nobody has received yet: stored until acked
        broker.publish_with_ack("jobs", mqkit.AckMessage("job"))
    else:
        sub = broker.subscribe("jobs")
        assert broker.replay_messages("jobs") == 1
        broker.publish_with_ack("jobs", mqkit.AckMessage("job"))  # the same id, published again
        replayed, new = sub.get(timeout=10), sub.get(timeout=10)
        print(replayed.ack_id, new.ack_id, flush=True)
        sub.ack(new.ack_id)
        again = sub.get(timeout=10)  # the replayed one is still pending: it comes back
        print(again.ack_id, again.attempt, flush=True)
        sub.ack(again.ack_id)
"""


def test_generated_ack_ids_never_repeat_across_a_restart(tmp_path: Path) -> None:
    def run(step: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", RESTART_CHILD, str(tmp_path / "store"), step],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert run("before") == []
    replayed, new, again, attempt = run("after")
    assert replayed != new
    assert (again, attempt) == (replayed, "2")


@pytest.mark.parametrize("ack_id", ["", DUP])
def test_replaying_a_message_whose_ack_id_is_unsettled_is_refused(
    make_broker, tmp_path: Path, ack_id: str
) -> None:
    config = ACK.replace(persistence_path=str(tmp_path))
    broker = make_broker("ack", "persistence", config=config)
    sub = broker.subscribe("t")
    broker.publish("t", Message("plain"))
    broker.publish_with_ack("t", AckMessage("job", ack_id=ack_id))
    with pytest.raises(mqkit.InvalidMessageError, match="topic 't'"):
        broker.replay_messages("t")
    first, job = sub.get_nowait(), sub.get_nowait()
    assert [first.id, job.id] == ["plain", "job"]
    assert drain(sub) == []  # nothing of the replay was delivered
    sub.ack(job.ack_id)
    assert broker.replay_messages("t") == 1  # settled (and removed from the store)
    assert drain_ids(sub) == ["plain"]


def test_a_priority_buffer_refusing_the_new_copy_does_not_free_the_id_held_elsewhere(
    make_broker, hook_recorder
) -> None:
    # Under DROP_OLDEST a full priority buffer drops the incoming message when it ranks lowest
    # (reported as drop_oldest): that copy never entered, the other subscription's still counts.
    broker = make_broker("ack", "priority", config=ACK, objects=[hook_recorder])
    full = broker.subscribe("t", mqkit.SubOptions(buffer_size=1))
    broker.publish("t", mqkit.PriorityMessage("urgent", priority=mqkit.Priority.HIGHEST))
    holder = broker.subscribe("t")
    broker.publish_with_ack("t", AckMessage("job", ack_id=DUP))
    assert [c.message.id for c in hook_recorder.of("mqkit_drop")] == ["job"]
    with pytest.raises(mqkit.InvalidMessageError, match="dup"):
        broker.publish_with_ack("t", AckMessage("job-2", ack_id=DUP))
    assert drain_ids(full) == ["urgent"]
    assert drain_ids(holder) == ["job"]
    holder.ack(DUP)
    broker.publish_with_ack("t", AckMessage("job-3", ack_id=DUP))
    assert drain_ids(holder) == ["job-3"]
