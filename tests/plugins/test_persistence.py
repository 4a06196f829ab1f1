"""The persistence plugin: storing, recovering, settling, retention, locking and store faults.

Each test builds brokers with ``make_broker("persistence", ...)`` (only the named plugins, on
the fake clock) on a directory under ``tmp_path``. Store faults are real SQLite conditions set
on the plugin's own ``diskcache.Cache``: ``PRAGMA max_page_count`` (the database is full),
``PRAGMA query_only`` (read-only), or damaged bytes in a closed store's database file.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import diskcache
import pytest

import mqkit
from mqkit.plugins.persistence.inspector import inspect_store
from mqkit.plugins.persistence.serializer import message_to_dict

Factory = Callable[..., mqkit.Broker]
BIG = mqkit.SubOptions(buffer_size=10_000)


def config(path: Path, **fields: Any) -> mqkit.Config:
    return mqkit.Config(persistence_path=str(path), **fields)


def ids(messages: list[mqkit.Message]) -> list[str]:
    return [m.id for m in messages]


def drain(sub: mqkit.Subscription) -> list[str]:
    got = []
    while sub.stats().queue_len:
        got.append(sub.get_nowait().id)
    return got


def cache_of(broker: mqkit.Broker) -> diskcache.Cache:
    plugin = broker.get_plugin("persistence")
    assert plugin is not None
    cache: diskcache.Cache = plugin.cache  # type: ignore[attr-defined]
    return cache


FLUSH_DELAY = 0.01
"""Seconds within which a deferred delete (a settled or retired entry) is written."""


def written(broker: mqkit.Broker) -> mqkit.Broker:
    """``broker`` once its deferred deletes are written: its flush timer ran (on the fake clock)."""
    clock = broker.clock
    assert isinstance(clock, mqkit.FakeClock)
    clock.advance(FLUSH_DELAY)
    return broker


def entries(broker: mqkit.Broker) -> tuple[int, int, int]:
    """What the store holds once its deferred deletes are written: (messages stored alone,
    batch entries, tombstones)."""
    kinds = [len(json.loads(key)) for key in cache_of(written(broker)).iterkeys()]
    return kinds.count(5) + kinds.count(4), kinds.count(2), kinds.count(1)


def stored_key(broker: mqkit.Broker, message_id: str) -> object:
    """The store key of the message ``message_id`` (found by reading the stored values)."""
    cache = cache_of(broker)
    for key in cache.iterkeys():
        if json.loads(cache[key])["id"] == message_id:
            return key
    raise AssertionError(f"{message_id!r} is not stored")


def fill_disk(broker: mqkit.Broker) -> None:
    """Let the database grow no further than it is now (SQLite then reports SQLITE_FULL)."""
    cache = cache_of(broker)
    ((pages,),) = cache._sql("PRAGMA page_count").fetchall()
    cache._sql(f"PRAGMA max_page_count = {pages}").fetchall()


def allow_pages(broker: mqkit.Broker, extra: int) -> None:
    cache = cache_of(broker)
    ((pages,),) = cache._sql("PRAGMA page_count").fetchall()
    cache._sql(f"PRAGMA max_page_count = {pages + extra}").fetchall()


def publish_until_full(broker: mqkit.Broker, topic: str, prefix: str) -> tuple[int, str]:
    """Publish 2 KB messages until one fails; return how many succeeded and the error text."""
    for i in range(10_000):
        try:
            broker.publish(topic, mqkit.Message(f"{prefix}{i}", "x" * 2000))
        except mqkit.PersistenceError as exc:
            return i, str(exc)
    raise AssertionError("the store never filled up")


# -- the seed's persistence tests (persistence_test.go), in mqkit's API ------------------------


def test_seed_basic_store_and_delete(make_broker: Factory, tmp_path: Path) -> None:
    """TestKVPersistenceBasic: stored, recovered; an acked message is deleted."""
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("test-topic")
    broker.publish("test-topic", mqkit.AckMessage("test-1", "data"))
    assert ids(broker.recover_messages("test-topic", 10)) == ["test-1"]
    received = sub.get(timeout=5)
    sub.ack(received.ack_id)  # type: ignore[attr-defined]
    assert broker.recover_messages("test-topic", 10) == []


def test_seed_multiple_messages_and_limits(make_broker: Factory, tmp_path: Path) -> None:
    """TestKVPersistenceMultipleMessages: limit <= 0 is all, limit n the oldest n."""
    broker = make_broker("persistence", config=config(tmp_path))
    letters = list("abcdefghij")
    for letter in letters:
        broker.publish("test-topic", mqkit.Message(letter))
    assert ids(broker.recover_messages("test-topic", 0)) == letters
    assert ids(broker.recover_messages("test-topic", -1)) == letters
    assert ids(broker.recover_messages("test-topic")) == letters
    assert ids(broker.recover_messages("test-topic", 5)) == letters[:5]
    assert ids(broker.recover_messages("test-topic", 100)) == letters


def test_seed_ack_state(make_broker: Factory, tmp_path: Path) -> None:
    """TestKVPersistenceAckState: an unacked message is stored; acked, it is gone for good."""
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("test-topic")
    broker.publish_with_ack("test-topic", mqkit.AckMessage("msg-1", ack_id="ack-1"))
    sub.get(timeout=5)
    assert ids(broker.recover_messages("test-topic", 10)) == ["msg-1"]  # not acked yet
    broker.ack("test-topic", "ack-1")
    assert broker.recover_messages("test-topic", 10) == []
    with pytest.raises(mqkit.AckNotFoundError):
        broker.ack("test-topic", "ack-1")
    assert broker.recover_messages("test-topic", 10) == []


def test_seed_broker_persistence(make_broker: Factory, tmp_path: Path) -> None:
    """TestBrokerPersistence: a published message is recovered, stamped, with its payload."""
    broker = make_broker("persistence", config=config(tmp_path))
    broker.publish("test-topic", mqkit.Message("persist-1", {"k": [1, 2]}, meta={"a": "b"}))
    (recovered,) = broker.recover_messages("test-topic", 10)
    assert recovered.id == "persist-1"
    assert recovered.data == {"k": [1, 2]}
    assert recovered.topic == "test-topic"
    assert recovered.meta == {"a": "b"}
    assert recovered.time == broker.clock.now()


def test_seed_replay_after_reopen(make_broker: Factory, tmp_path: Path) -> None:
    """TestBrokerPersistenceReplay: a second broker on the path replays what the first stored."""
    first = make_broker("persistence", config=config(tmp_path))
    first.publish("test-topic", mqkit.Message("replay-1"))
    first.publish("test-topic", mqkit.Message("replay-2"))
    first.close()
    second = make_broker("persistence", config=config(tmp_path))
    sub = second.subscribe("test-topic", mqkit.SubOptions(buffer_size=10))
    assert second.replay_messages("test-topic", 10) == 2
    assert [sub.get(timeout=0.5).id for _ in range(2)] == ["replay-1", "replay-2"]


def test_seed_persistence_disabled(make_broker: Factory) -> None:
    """TestPersistenceDisabled: recover and replay raise PersistenceDisabledError."""
    broker = make_broker()
    with pytest.raises(mqkit.PersistenceDisabledError):
        broker.recover_messages("test-topic", 10)
    with pytest.raises(mqkit.PersistenceDisabledError):
        broker.replay_messages("test-topic", 10)
    assert issubclass(mqkit.PersistenceDisabledError, mqkit.FeatureNotEnabledError)


def test_seed_batch(make_broker: Factory, tmp_path: Path) -> None:
    """TestPersistenceBatch: every message of a batch is stored."""
    broker = make_broker("persistence", config=config(tmp_path))
    batch = [mqkit.Message(f"batch-{i}") for i in range(1, 4)]
    broker.publish_batch("test-topic", batch)
    assert ids(broker.recover_messages("test-topic", 10)) == ["batch-1", "batch-2", "batch-3"]


def test_seed_close(make_broker: Factory, tmp_path: Path) -> None:
    """TestPersistenceClose: after close, reading the store raises BrokerClosedError."""
    broker = make_broker("persistence", config=config(tmp_path))
    broker.publish("test-topic", mqkit.Message("m"))
    broker.close()
    with pytest.raises(mqkit.BrokerClosedError):
        broker.recover_messages("test-topic", 10)
    with pytest.raises(mqkit.BrokerClosedError):
        broker.replay_messages("test-topic", 10)
    with pytest.raises(mqkit.BrokerClosedError):
        broker.publish("test-topic", mqkit.Message("n"))
    assert broker.health_check().status == "closed"


# -- what is stored, and in what order ----------------------------------------------------------


def test_every_publish_path_stores_in_publish_order(
    make_broker: Factory, tmp_path: Path, fake_clock: mqkit.FakeClock
) -> None:
    broker = make_broker(
        "persistence", "priority", "ttl", "ack", "transactions", config=config(tmp_path)
    )
    later = fake_clock.now() + timedelta(hours=1)
    broker.publish("t", mqkit.Message("plain"))
    broker.publish_priority("t", mqkit.PriorityMessage("prio", priority=mqkit.Priority.HIGH))
    broker.publish_ttl("t", mqkit.TTLMessage("ttl", expires_at=later))
    broker.publish_with_ack("t", mqkit.AckMessage("ack", ack_id="a-1", ack_timeout=5.0))
    broker.publish_priority_ttl("t", mqkit.PriorityTTLMessage("pttl", priority=7, expires_at=later))
    broker.publish_with_ack_ttl("t", mqkit.AckTTLMessage("attl", expires_at=later))
    broker.publish_batch("t", [mqkit.Message("b1"), mqkit.PriorityMessage("b2", priority=1)])
    with broker.transaction() as tx:
        tx.publish("t", mqkit.Message("tx1"))
        tx.publish("t", mqkit.TTLMessage("tx2", expires_at=later))
    broker.close()

    reopened = make_broker("persistence", config=config(tmp_path))
    got = reopened.recover_messages("t")
    assert ids(got) == ["plain", "prio", "ttl", "ack", "pttl", "attl", "b1", "b2", "tx1", "tx2"]
    kinds = [type(m).__name__ for m in got]
    assert kinds == [
        "Message",
        "PriorityMessage",
        "TTLMessage",
        "AckMessage",
        "PriorityTTLMessage",
        "AckTTLMessage",
        "Message",
        "PriorityMessage",
        "Message",
        "TTLMessage",
    ]
    by_id = {m.id: m for m in got}
    assert by_id["prio"].priority == mqkit.Priority.HIGH  # type: ignore[attr-defined]
    assert by_id["pttl"].priority == 7  # type: ignore[attr-defined]
    assert by_id["ttl"].expires_at == later  # type: ignore[attr-defined]
    assert by_id["ack"].ack_id == "a-1"  # type: ignore[attr-defined]
    assert by_id["ack"].ack_timeout == 5.0  # type: ignore[attr-defined]
    assert by_id["attl"].ack_id  # type: ignore[attr-defined]  # the generated one
    assert all(m.topic == "t" for m in got)


def test_topics_are_kept_apart_and_normalised(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    for topic in ("a", "a:b", "a.b", "ab"):
        broker.publish(topic, mqkit.Message(f"in-{topic}"))
    broker.publish("  a  ", mqkit.Message("padded"))
    assert ids(broker.recover_messages("a")) == ["in-a", "padded"]
    assert ids(broker.recover_messages(" a ")) == ["in-a", "padded"]
    assert ids(broker.recover_messages("a:b")) == ["in-a:b"]
    assert broker.recover_messages("nothing-here") == []
    with pytest.raises(mqkit.InvalidTopicError):
        broker.recover_messages("   ")


def test_recover_reads_the_store_not_memory(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    broker.publish("t", mqkit.Message("a", 1))
    cache = cache_of(broker)
    (key,) = list(cache.iterkeys())
    stored = json.loads(cache[key])
    stored["data"] = 2
    cache.set(key, json.dumps(stored))
    assert [m.data for m in broker.recover_messages("t")] == [2]


def test_same_id_published_again_is_a_new_message(
    make_broker: Factory, tmp_path: Path, fake_clock: mqkit.FakeClock
) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    broker.publish("t", mqkit.Message("dup", "first"))
    fake_clock.advance(0.001)
    broker.publish("t", mqkit.Message("dup", "second"))
    assert [m.data for m in broker.recover_messages("t")] == ["first", "second"]


def test_batch_repeating_an_id_stores_each_message(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path, persistence_max_messages=3))
    sub = broker.subscribe("t", BIG)
    broker.publish_batch("t", [mqkit.Message("x", 1), mqkit.Message("x", 2), mqkit.Message("y")])
    assert drain(sub) == ["x", "x", "y"]
    assert [(m.id, m.data) for m in broker.recover_messages("t")] == [
        ("x", 1),
        ("x", 2),
        ("y", None),
    ]
    broker.publish("t", mqkit.Message("z"))  # retention counts each stored message
    assert [(m.id, m.data) for m in broker.recover_messages("t")] == [
        ("x", 2),
        ("y", None),
        ("z", None),
    ]
    broker.close()
    reopened = make_broker("persistence", config=config(tmp_path))
    assert ids(reopened.recover_messages("t")) == ["x", "y", "z"]
    # z alone; the batch, whose retired first member has a tombstone: nothing orphaned.
    assert entries(reopened) == (1, 1, 1)


def test_batch_is_one_entry_whose_members_settle_one_by_one(
    make_broker: Factory, tmp_path: Path
) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t", BIG)
    broker.publish_batch("t", [mqkit.AckMessage(f"a{i}", i, ack_id=f"k{i}") for i in range(4)])
    assert entries(broker) == (0, 1, 0)  # one write for the whole batch
    assert [sub.get(timeout=5).id for _ in range(4)] == ["a0", "a1", "a2", "a3"]
    sub.ack("k1")
    sub.ack("k3")
    assert entries(broker) == (0, 1, 2)  # settled members are marked, the rest stays stored
    assert ids(broker.recover_messages("t")) == ["a0", "a2"]
    broker.close()

    reopened = make_broker("persistence", "ack", config=config(tmp_path))
    assert [(m.id, m.data) for m in reopened.recover_messages("t")] == [("a0", 0), ("a2", 2)]
    sub = reopened.subscribe_with_ack("t", BIG)
    assert reopened.replay_messages("t") == 2
    for message in (sub.get(timeout=5), sub.get(timeout=5)):
        sub.ack(message.ack_id)
    assert reopened.recover_messages("t") == []
    assert entries(reopened) == (0, 0, 0)  # the last member took the entry and its marks along
    assert reopened.health_check().status == "healthy"


def test_new_entries_never_reuse_a_stored_sequence_number(
    make_broker: Factory, tmp_path: Path
) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t", BIG)
    broker.publish("t", mqkit.Message("alone"))
    broker.publish_batch("t", [mqkit.AckMessage(f"b{i}", ack_id=f"k{i}") for i in range(3)])
    for _ in range(4):
        sub.get(timeout=5)
    for i in range(2):
        sub.ack(f"k{i}")
    broker.close()
    reopened = make_broker("persistence", config=config(tmp_path))
    reopened.publish_batch("t", [mqkit.Message("c0"), mqkit.Message("c1")])
    reopened.publish("t", mqkit.Message("d"))
    assert ids(reopened.recover_messages("t")) == ["alone", "b2", "c0", "c1", "d"]
    reopened.close()
    again = make_broker("persistence", config=config(tmp_path))
    assert ids(again.recover_messages("t")) == ["alone", "b2", "c0", "c1", "d"]


def test_orphaned_tombstones_are_removed_on_start(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    broker.publish("t", mqkit.Message("a"))
    cache_of(broker).set("[12345]", "")  # the mark of a member whose batch is gone
    broker.close()
    reopened = make_broker("persistence", config=config(tmp_path))
    assert entries(reopened) == (1, 0, 0)
    assert ids(reopened.recover_messages("t")) == ["a"]
    assert reopened.health_check().status == "healthy"


@pytest.mark.parametrize(
    "garbage",
    ["not json", "[]", '[["t", "b0", 0, {}]]', "[1, 2, 3]", 42],
    ids=["text", "empty", "short", "not-members", "not-text"],
)
def test_corrupted_batch_is_skipped_counted_and_named(
    make_broker: Factory, tmp_path: Path, garbage: object
) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    broker.publish("t", mqkit.Message("before"))
    broker.publish_batch("t", [mqkit.Message(f"b{i}") for i in range(3)])
    broker.publish("t", mqkit.Message("after"))
    (batch_key,) = [key for key in cache_of(broker).iterkeys() if len(json.loads(key)) == 2]
    cache_of(broker).set(batch_key, garbage)
    assert ids(broker.recover_messages("t")) == ["before", "after"]
    assert broker.health_check().status == "degraded"
    broker.close()
    reopened = make_broker("persistence", config=config(tmp_path))
    assert ids(reopened.recover_messages("t")) == ["before", "after"]
    (problem,) = reopened.health_check().problems
    assert "corrupted" in problem and "batch #1..#3" in problem


def test_batch_member_swapped_for_another_message_is_skipped(
    make_broker: Factory, tmp_path: Path
) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    broker.publish_batch("t", [mqkit.Message("x"), mqkit.Message("y")])
    cache = cache_of(broker)
    (batch_key,) = list(cache.iterkeys())
    members = json.loads(cache[batch_key])
    members[1][1] = "x"  # the second member claims to be x
    cache.set(batch_key, json.dumps(members))
    assert ids(broker.recover_messages("t")) == ["x"]
    (problem,) = broker.health_check().problems
    assert "'y'" in problem


# -- replay -------------------------------------------------------------------------------------


def test_replay_does_not_store_duplicates(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    sub = broker.subscribe("t", BIG)
    for i in range(3):
        broker.publish("t", mqkit.Message(f"m{i}"))
    assert broker.replay_messages("t") == 3
    assert broker.replay_messages("t", 2) == 2
    assert drain(sub) == ["m0", "m1", "m2", "m0", "m1", "m2", "m0", "m1"]
    assert ids(broker.recover_messages("t")) == ["m0", "m1", "m2"]
    assert len(cache_of(broker)) == 3
    broker.close()

    reopened = make_broker("persistence", config=config(tmp_path))
    sub = reopened.subscribe("t", BIG)
    assert reopened.replay_messages("t") == 3
    assert drain(sub) == ["m0", "m1", "m2"]
    assert ids(reopened.recover_messages("t")) == ["m0", "m1", "m2"]
    assert len(cache_of(reopened)) == 3


def test_replayed_ack_message_is_removed_when_acked_after_restart(
    make_broker: Factory, tmp_path: Path
) -> None:
    first = make_broker("persistence", "ack", config=config(tmp_path))
    one, two = first.subscribe_with_ack("t"), first.subscribe_with_ack("t")
    first.publish("t", mqkit.AckMessage("a"))
    one.get(timeout=5)
    two.get(timeout=5)
    first.close()  # neither subscription acked

    second = make_broker("persistence", "ack", config=config(tmp_path))
    sub = second.subscribe_with_ack("t")
    assert second.replay_messages("t") == 1
    received = sub.get(timeout=5)
    assert received.id == "a"
    sub.ack(received.ack_id)  # type: ignore[attr-defined]  # one ack settles it now
    assert second.recover_messages("t") == []


# -- what leaves the store ----------------------------------------------------------------------


def test_acked_message_is_removed_and_stays_removed(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t", BIG)
    broker.publish("t", mqkit.AckMessage("a"))
    broker.publish("t", mqkit.Message("plain"))
    broker.publish("t", mqkit.AckMessage("b"))
    first = sub.get(timeout=5)
    sub.get(timeout=5)
    sub.get(timeout=5)
    sub.ack(first.ack_id)  # type: ignore[attr-defined]
    assert ids(broker.recover_messages("t")) == ["plain", "b"]
    broker.close()
    reopened = make_broker("persistence", config=config(tmp_path))
    assert ids(reopened.recover_messages("t")) == ["plain", "b"]


def test_fanned_out_message_stays_until_every_subscription_acked(
    make_broker: Factory, tmp_path: Path
) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    one, two = broker.subscribe_with_ack("t"), broker.subscribe_with_ack("t")
    broker.publish("t", mqkit.AckMessage("a", ack_id="ack-a"))
    broker.publish("t", mqkit.AckMessage("b", ack_id="ack-b"))
    for sub in (one, two):
        assert [sub.get(timeout=5).id for _ in range(2)] == ["a", "b"]
    one.ack("ack-a")
    assert ids(broker.recover_messages("t")) == ["a", "b"]
    two.ack("ack-a")
    assert ids(broker.recover_messages("t")) == ["b"]
    broker.ack("t", "ack-b")  # the seed shortcut acks it on both at once
    assert broker.recover_messages("t") == []


def test_nack_with_requeue_keeps_it_stored_until_acked(
    make_broker: Factory, tmp_path: Path
) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t")
    broker.publish("t", mqkit.AckMessage("a", ack_id="k"))
    sub.get(timeout=5)
    sub.nack("k", requeue=True)
    again = sub.get(timeout=5)
    assert again.attempt == 2
    assert ids(broker.recover_messages("t")) == ["a"]
    assert len(cache_of(broker)) == 1  # the redelivery is not stored again
    sub.ack("k")
    assert broker.recover_messages("t") == []


def test_dead_lettered_messages_are_removed(
    make_broker: Factory, tmp_path: Path, fake_clock: mqkit.FakeClock
) -> None:
    cfg = config(tmp_path, dead_letter_topic="dlq", max_ack_retries=0, default_ack_timeout=10)
    broker = make_broker("persistence", "ack", "deadletter", config=cfg)
    sub = broker.subscribe_with_ack("t")
    broker.publish("t", mqkit.AckMessage("nacked", ack_id="n"))
    broker.publish("t", mqkit.AckMessage("timed-out", ack_id="o"))
    broker.publish("t", mqkit.AckMessage("kept", ack_id="k"))
    assert sub.get(timeout=5).id == "nacked"
    sub.nack("n", requeue=False)
    assert ids(broker.recover_messages("t")) == ["timed-out", "kept"]
    assert sub.get(timeout=5).id == "timed-out"
    fake_clock.advance(11)  # no retries left: dead-lettered on the deadline
    assert [d.message.id for d in broker.dead_letters()] == ["nacked", "timed-out"]
    assert ids(broker.recover_messages("t")) == ["kept"]


def test_message_dropped_by_backpressure_is_settled(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    broker.subscribe_with_ack("t", mqkit.SubOptions(buffer_size=2))  # drop_oldest
    broker.publish("t", mqkit.AckMessage("evicted"))
    broker.publish("t", mqkit.AckMessage("buffered"))
    broker.publish("t", mqkit.Message("plain"))
    assert ids(broker.recover_messages("t")) == ["buffered", "plain"]
    broker.publish("t", mqkit.Message("plain-2"))
    broker.publish("t", mqkit.Message("plain-3"))  # evicts "plain": not ack-required, kept
    assert ids(broker.recover_messages("t")) == ["plain", "plain-2", "plain-3"]


def test_given_up_message_stays_stored_when_the_dlq_is_off(
    make_broker: Factory, tmp_path: Path
) -> None:
    """With nowhere to dead-letter it, a message nobody acked stays stored (at least once)."""
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t")
    broker.publish("t", mqkit.AckMessage("a", ack_id="k"))
    sub.get(timeout=5)
    sub.nack("k", requeue=False)
    assert ids(broker.recover_messages("t")) == ["a"]
    assert broker.health_check().status == "degraded"  # the dropped dead letter is reported


def test_ack_message_nobody_received_stays_stored(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    broker.publish("t", mqkit.AckMessage("unrouted"))
    assert ids(broker.recover_messages("t")) == ["unrouted"]


# -- transactions and batches -------------------------------------------------------------------


def test_transaction_is_stored_only_on_commit(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", "transactions", config=config(tmp_path))
    sub = broker.subscribe("t", BIG)
    broker.publish_with_transaction("t", mqkit.Message("t1"), "tx")
    broker.publish_with_transaction("other", mqkit.Message("o1"), "tx")
    broker.publish_with_transaction("t", mqkit.Message("t2"), "tx")
    assert broker.recover_messages("t") == []
    assert len(cache_of(broker)) == 0
    broker.commit_transaction("tx")
    assert ids(broker.recover_messages("t")) == ["t1", "t2"]
    assert ids(broker.recover_messages("other")) == ["o1"]
    assert drain(sub) == ["t1", "t2"]

    broker.publish_with_transaction("t", mqkit.Message("rolled-back"), "tx2")
    broker.rollback_transaction("tx2")
    with broker.transaction() as tx:
        tx.publish("t", mqkit.Message("in-block"))
    with pytest.raises(RuntimeError), broker.transaction() as tx:
        tx.publish("t", mqkit.Message("aborted"))
        raise RuntimeError("abort")
    assert ids(broker.recover_messages("t")) == ["t1", "t2", "in-block"]


def test_transaction_that_times_out_stores_nothing(
    make_broker: Factory, tmp_path: Path, fake_clock: mqkit.FakeClock
) -> None:
    broker = make_broker(
        "persistence", "transactions", config=config(tmp_path, transaction_timeout=5)
    )
    broker.publish_with_transaction("t", mqkit.Message("late"), "tx")
    fake_clock.advance(6)
    with pytest.raises(mqkit.TransactionNotFoundError):
        broker.commit_transaction("tx")
    assert broker.recover_messages("t") == []


def test_failed_commit_stores_and_delivers_nothing(make_broker: Factory, tmp_path: Path) -> None:
    """The commit is one store transaction: it fails part-way, and none of it stays."""
    broker = make_broker("persistence", "transactions", config=config(tmp_path))
    sub = broker.subscribe("t", BIG)
    broker.publish("t", mqkit.Message("before"))
    for i in range(20):
        broker.publish_with_transaction("t", mqkit.Message(f"tx{i}", "x" * 2000), "tx")
    allow_pages(broker, 2)  # room for a message or two, not for twenty
    with pytest.raises(mqkit.PersistenceError, match="full"):
        broker.commit_transaction("tx")
    assert drain(sub) == ["before"]
    assert ids(broker.recover_messages("t")) == ["before"]
    assert len(cache_of(broker)) == 1
    broker.publish("t", mqkit.Message("fits", "x" * 2000))  # there was room for the first ones
    assert ids(broker.recover_messages("t")) == ["before", "fits"]
    with pytest.raises(mqkit.TransactionNotFoundError):
        broker.commit_transaction("tx")


def test_failed_batch_stores_and_delivers_nothing(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    sub = broker.subscribe("t", BIG)
    broker.publish("t", mqkit.Message("before"))
    allow_pages(broker, 2)
    batch = [mqkit.Message(f"b{i}", "x" * 2000) for i in range(20)]
    with pytest.raises(mqkit.PersistenceError, match="full"):
        broker.publish_batch("t", batch)
    assert drain(sub) == ["before"]
    assert ids(broker.recover_messages("t")) == ["before"]
    assert len(cache_of(broker)) == 1
    broker.publish_batch("t", batch[:1])  # the first of the batch alone fits
    assert ids(broker.recover_messages("t")) == ["before", "b0"]
    assert drain(sub) == ["b0"]


# -- retention ----------------------------------------------------------------------------------


def test_max_messages_keeps_the_newest_per_topic(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path, persistence_max_messages=5))
    for i in range(12):
        broker.publish("t", mqkit.Message(f"m{i}"))
    broker.publish_batch("u", [mqkit.Message(f"u{i}") for i in range(8)])
    broker.publish("other", mqkit.Message("o"))
    assert ids(broker.recover_messages("t")) == [f"m{i}" for i in range(7, 12)]
    assert ids(broker.recover_messages("t", 2)) == ["m7", "m8"]
    assert ids(broker.recover_messages("u")) == [f"u{i}" for i in range(3, 8)]
    assert ids(broker.recover_messages("other")) == ["o"]
    # Trimmed on disk too: 5 + 1 stored alone; the batch of 8 with 3 members retired.
    assert entries(broker) == (6, 1, 3)
    broker.close()

    smaller = make_broker("persistence", config=config(tmp_path, persistence_max_messages=2))
    assert ids(smaller.recover_messages("t")) == ["m10", "m11"]
    assert ids(smaller.recover_messages("u")) == ["u6", "u7"]
    assert entries(smaller) == (3, 1, 6)


def test_max_age_drops_older_messages(
    make_broker: Factory, tmp_path: Path, fake_clock: mqkit.FakeClock
) -> None:
    broker = make_broker("persistence", config=config(tmp_path, persistence_max_age=60))
    broker.publish("t", mqkit.Message("old"))
    broker.publish("u", mqkit.Message("other-topic"))
    fake_clock.advance(30)
    broker.publish("t", mqkit.Message("young"))
    assert ids(broker.recover_messages("t")) == ["old", "young"]
    fake_clock.advance(31)  # "old" is 61 s old now, "young" 31 s
    assert ids(broker.recover_messages("t")) == ["young"]
    assert broker.recover_messages("u") == []  # nothing published there since: still enforced
    fake_clock.advance(30)
    assert broker.recover_messages("t") == []
    assert len(cache_of(written(broker))) == 0  # gone from the store, not only hidden
    broker.close()
    reopened = make_broker("persistence", config=config(tmp_path))
    assert reopened.recover_messages("t") == []
    assert reopened.recover_messages("u") == []


@pytest.mark.parametrize("batch", [1, 7], ids=["publish", "publish_batch"])
def test_endless_stream_keeps_the_store_bounded(
    make_broker: Factory, tmp_path: Path, batch: int
) -> None:
    broker = make_broker("persistence", config=config(tmp_path, persistence_max_messages=100))

    def store_size() -> int:
        return sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())

    def stream(start: int, stop: int) -> None:
        for first in range(start, stop, batch):
            messages = [mqkit.Message(f"m{i}", payload) for i in range(first, first + batch)]
            if batch == 1:
                broker.publish("stream", messages[0])
            else:
                broker.publish_batch("stream", messages)

    payload = {"pad": "p" * 400}
    stream(0, 1001)
    after_1000 = store_size()
    stream(1001, 5005)  # both ranges are whole batches of 7
    after_5000 = store_size()
    # Unbounded, the 4,000 more messages would add about 2 MB on top of the ~4.3 MB (mostly
    # the WAL, whose size settles at its checkpoint threshold).
    assert after_5000 <= after_1000 * 1.15
    assert ids(broker.recover_messages("stream")) == [f"m{i}" for i in range(4905, 5005)]
    alone, batches, tombstones = entries(broker)
    if batch == 1:
        assert (alone, batches, tombstones) == (100, 0, 0)
    else:  # whole batches, the oldest partly retired: its retired members are tombstones
        assert alone == 0 and batches == 15 and batches * batch - tombstones == 100


# -- exclusive use of the directory -------------------------------------------------------------


def test_second_broker_on_the_directory_fails_fast(make_broker: Factory, tmp_path: Path) -> None:
    first = make_broker("persistence", config=config(tmp_path))
    first.publish("t", mqkit.Message("kept"))
    for _ in range(2):
        with pytest.raises(mqkit.PersistenceError) as caught:
            make_broker("persistence", config=config(tmp_path))
        text = str(caught.value)
        assert str(tmp_path) in text
        assert f"pid {os.getpid()}" in text
        assert "in use" in text
    first.publish("t", mqkit.Message("still-works"))  # the failed attempts did not disturb it
    assert ids(first.recover_messages("t")) == ["kept", "still-works"]
    first.close()
    third = make_broker("persistence", config=config(tmp_path))
    assert ids(third.recover_messages("t")) == ["kept", "still-works"]


def test_unusable_directory_fails_at_construction(make_broker: Factory, tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(mqkit.PersistenceError, match="file"):
        make_broker("persistence", config=config(not_a_directory))
    with pytest.raises(mqkit.PersistenceError):
        make_broker("persistence", config=config(not_a_directory / "below"))


def test_missing_directory_is_created(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path / "a" / "b"))
    broker.publish("t", mqkit.Message("m"))
    assert ids(broker.recover_messages("t")) == ["m"]
    assert (tmp_path / "a" / "b" / "mqkit.lock").read_text().strip() == str(os.getpid())


# -- corruption ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        "not json",
        "[1, 2",
        '{"id": "b"}',
        '{"id": "b", "$class": "Nonexistent"}',
        '{"id": "b", "data": {"$bytes": "!!"}, "$class": "Message"}',
        '{"id": "b", "data": {"$type": "no.such.Type", "value": 1}, "$class": "Message"}',
        '{"id": "b", "time": "yesterday", "$class": "Message"}',
        "[" * 100_000,
        42,
        b"raw bytes",
        {"a": "pickled"},
    ],
    ids=lambda g: type(g).__name__ + ":" + repr(g)[:20],
)
def test_corrupted_value_is_skipped_counted_and_named(
    make_broker: Factory, tmp_path: Path, garbage: object
) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    for name in ("a", "b", "c"):
        broker.publish("t", mqkit.Message(name))
    cache_of(broker).set(stored_key(broker, "b"), garbage)
    assert ids(broker.recover_messages("t")) == ["a", "c"]
    assert ids(broker.recover_messages("t", 2)) == ["a", "c"]  # the limit counts good ones
    health = broker.health_check()
    assert health.status == "degraded"
    (problem,) = health.problems
    assert "1 corrupted entry" in problem
    assert "'t'" in problem
    assert "'b'" in problem
    broker.publish("t", mqkit.Message("d"))  # the broker keeps working
    assert ids(broker.recover_messages("t")) == ["a", "c", "d"]
    assert broker.health_check().problems == (problem,)  # counted once, however often read
    broker.close()

    reopened = make_broker("persistence", config=config(tmp_path))
    assert ids(reopened.recover_messages("t")) == ["a", "c", "d"]
    assert reopened.health_check().status == "degraded"


def test_foreign_key_in_the_store_is_reported(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    broker.publish("t", mqkit.Message("a"))
    cache_of(broker).set("somebody else's key", "value")
    broker.close()
    reopened = make_broker("persistence", config=config(tmp_path))
    assert ids(reopened.recover_messages("t")) == ["a"]
    (problem,) = reopened.health_check().problems
    assert "somebody else's key" in problem


def make_store(tmp_path: Path, make_broker: Factory, count: int = 300) -> Path:
    """A closed store of ``count`` messages on topic "t"; return its database file."""
    broker = make_broker("persistence", config=config(tmp_path))
    for i in range(count):
        broker.publish("t", mqkit.Message(f"{i:04d}", "x" * 100))
    broker.close()
    database = tmp_path / "store" / "cache.db"
    assert database.exists()
    assert not (tmp_path / "store" / "cache.db-wal").exists()  # checkpointed on close
    return database


def open_damaged(make_broker: Factory, tmp_path: Path, count: int) -> str:
    """Open a damaged store: it fails with PersistenceError, or recovers what it can.

    Returns "refused", "all" or "partial"; whatever it recovers is published messages, in
    order, and a partial recovery is reported by ``health_check()``.
    """
    try:
        broker = make_broker("persistence", config=config(tmp_path))
    except mqkit.PersistenceError as exc:
        assert str(tmp_path) in str(exc)
        return "refused"
    try:
        got = ids(broker.recover_messages("t"))
    except mqkit.PersistenceError:
        return "refused"
    finally:
        health = broker.health_check()
        broker.close()
    assert got == sorted(set(got))
    assert set(got) <= {f"{i:04d}" for i in range(count)}
    if len(got) == count:
        return "all"
    assert health.status == "degraded", (len(got), health.problems)
    assert any("corrupted" in p for p in health.problems)
    return "partial"


def test_garbage_header_fails_with_persistence_error(make_broker: Factory, tmp_path: Path) -> None:
    database = make_store(tmp_path, make_broker)
    with database.open("r+b") as f:
        f.write(b"\xff" * 100)
    for _ in range(2):  # the failure released the lock: the second attempt fails the same way
        with pytest.raises(mqkit.PersistenceError) as caught:
            make_broker("persistence", config=config(tmp_path))
        assert str(tmp_path) in str(caught.value)
        assert "not a database" in str(caught.value)
        assert "in use" not in str(caught.value)


def test_truncated_database_fails_with_persistence_error(
    make_broker: Factory, tmp_path: Path
) -> None:
    database = make_store(tmp_path, make_broker)
    size = database.stat().st_size
    with database.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(mqkit.PersistenceError, match="malformed"):
        make_broker("persistence", config=config(tmp_path))


@pytest.mark.parametrize("cut", [100, 4096, 3 * 4096, -4096])
def test_truncated_database_never_crashes(make_broker: Factory, tmp_path: Path, cut: int) -> None:
    database = make_store(tmp_path, make_broker)
    with database.open("r+b") as f:
        f.truncate(cut if cut > 0 else database.stat().st_size + cut)
    assert open_damaged(make_broker, tmp_path, 300) in ("refused", "partial")


def test_emptied_database_file_opens_as_an_empty_store(
    make_broker: Factory, tmp_path: Path
) -> None:
    """A zero-length file is a valid empty SQLite database: nothing is left to detect."""
    database = make_store(tmp_path, make_broker)
    database.write_bytes(b"")
    broker = make_broker("persistence", config=config(tmp_path))
    assert broker.recover_messages("t") == []
    broker.publish("t", mqkit.Message("new"))
    assert ids(broker.recover_messages("t")) == ["new"]


def test_each_damaged_page_is_refused_or_partly_recovered(
    make_broker: Factory, tmp_path: Path
) -> None:
    """Overwrite one 4 KiB page at a time: never a raw sqlite error, never silent loss."""
    database = make_store(tmp_path, make_broker)
    pristine = database.read_bytes()
    pages = len(pristine) // 4096
    outcomes: dict[str, int] = {}
    for page in range(pages):
        for fill in (b"\xff", b"\x00"):
            damaged = bytearray(pristine)
            damaged[page * 4096 + 8 : (page + 1) * 4096] = fill * (4096 - 8)
            database.write_bytes(bytes(damaged))
            outcome = open_damaged(make_broker, tmp_path, 300)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # Every damaged page was either refused or partly recovered and reported (open_damaged
    # asserts that); which pages SQLite notices at open time is its business, not ours.
    assert set(outcomes) <= {"refused", "partial", "all"}
    assert outcomes.get("refused", 0) + outcomes.get("partial", 0) > 0


# -- a store that cannot be written -------------------------------------------------------------


def test_full_disk_fails_publish_and_delivers_nothing(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    sub = broker.subscribe("t", BIG)
    broker.publish("t", mqkit.Message("before"))
    fill_disk(broker)
    stored, error = publish_until_full(broker, "t", "m")
    assert "full" in error
    expected = ["before"] + [f"m{i}" for i in range(stored)]
    assert drain(sub) == expected  # the failed message was not delivered
    assert ids(broker.recover_messages("t")) == expected  # nor stored
    with pytest.raises(mqkit.PersistenceError, match="full"):
        broker.publish_batch("t", [mqkit.Message("b1"), mqkit.Message("b2", "x" * 5000)])
    assert drain(sub) == []

    # What does not need the disk keeps working, and health tells the truth.
    other = broker.subscribe("u")
    health = broker.health_check()
    assert health.status == "degraded"
    assert any("full" in p for p in health.problems)
    assert health.total_subscribers == 2
    assert ids(broker.recover_messages("t")) == expected
    other.cancel()

    allow_pages(broker, 1000)  # room again
    broker.publish("t", mqkit.Message("after", "x" * 2000))
    assert drain(sub) == ["after"]
    assert ids(broker.recover_messages("t")) == [*expected, "after"]


def test_full_disk_error_is_reported_to_metrics(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", "metrics", config=config(tmp_path))
    fill_disk(broker)
    stored, _ = publish_until_full(broker, "t", "m")
    metrics = broker.metrics()
    assert metrics.total_errors == 1
    assert "full" in metrics.last_error
    assert metrics.total_published == stored


def test_read_only_store_fails_publish_at_once(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    sub = broker.subscribe("t", BIG)
    broker.publish("t", mqkit.Message("before"))
    cache_of(broker)._sql("PRAGMA query_only = ON").fetchall()
    with pytest.raises(mqkit.PersistenceError, match="readonly"):
        broker.publish("t", mqkit.Message("refused"))
    with pytest.raises(mqkit.PersistenceError, match="readonly"):
        broker.publish_batch("t", [mqkit.Message("r1"), mqkit.Message("r2")])
    assert drain(sub) == ["before"]
    assert ids(broker.recover_messages("t")) == ["before"]
    health = broker.health_check()
    assert health.status == "degraded"
    assert any("readonly" in p for p in health.problems)
    broker.subscribe("u").cancel()

    cache_of(broker)._sql("PRAGMA query_only = OFF").fetchall()
    broker.publish("t", mqkit.Message("writable-again"))
    assert ids(broker.recover_messages("t")) == ["before", "writable-again"]


def test_ack_whose_removal_cannot_be_written_keeps_the_message(
    make_broker: Factory, tmp_path: Path
) -> None:
    """The ack succeeds; the message stays on disk and comes back after a restart."""
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t")
    broker.publish("t", mqkit.AckMessage("a", ack_id="k"))
    sub.get(timeout=5)
    cache_of(broker)._sql("PRAGMA query_only = ON").fetchall()
    sub.ack("k")
    assert broker.recover_messages("t") == []
    assert written(broker).health_check().status == "degraded"
    broker.close()
    reopened = make_broker("persistence", config=config(tmp_path))
    assert ids(reopened.recover_messages("t")) == ["a"]


def test_problem_text_names_the_failed_write(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=config(tmp_path))
    fill_disk(broker)
    publish_until_full(broker, "t", "m")
    publish_until_full(broker, "t", "n")
    (problem,) = broker.health_check().problems
    assert re.fullmatch(r"persistence failed 2 write\(s\); last: .*full.*", problem)


# -- settlement per subscription (issue 13, point 7) -------------------------------------------

ACK_TIMEOUT = 10.0
DLQ = "dlq"


def pending_on_disk(where: Path | mqkit.Broker, topic: str = "t") -> list[str]:
    """The ack-required messages of ``topic`` the store holds, read from disk without a broker.

    ``mqkit inspect``'s reader opens the database read-only: what it sees is what the next
    broker on the directory would recover. Given a broker: its store, once the deferred
    deletes are written.
    """
    if isinstance(where, mqkit.Broker):
        path = Path(written(where).config.persistence_path)
    else:
        path = where
    report = inspect_store(path)
    return [p.id for p in report.pending_acks if p.topic == topic]


def restarted_ids(make_broker: Factory, broker: mqkit.Broker, path: Path) -> list[str]:
    """Close ``broker``, open the directory again, and recover topic ``t``."""
    broker.close()
    reopened = make_broker("persistence", "ack", config=config(path))
    found = ids(reopened.recover_messages("t"))
    reopened.close()
    return found


REFUSING = [
    pytest.param(mqkit.Backpressure.DROP_NEWEST, id="drop_newest"),
    pytest.param(mqkit.Backpressure.BLOCK_WITH_TIMEOUT, id="block_with_timeout"),
    pytest.param(mqkit.Backpressure.CLOSE_SUBSCRIBER, id="close_subscriber"),
    # A priority buffer under DROP_OLDEST drops the new message when it ranks lowest.
    pytest.param(mqkit.Backpressure.DROP_OLDEST, id="drop_oldest-priority"),
]


@pytest.mark.parametrize("policy", REFUSING)
@pytest.mark.parametrize("full_first", [True, False], ids=["full-sub-first", "full-sub-last"])
def test_copy_refused_by_a_full_buffer_does_not_settle_the_others(
    make_broker: Factory, tmp_path: Path, policy: mqkit.Backpressure, full_first: bool
) -> None:
    """One subscription's full buffer refuses the message; another buffered it: still stored."""
    plugins = ("persistence", "ack", "priority")
    broker = make_broker(*plugins, config=config(tmp_path))
    refusing = mqkit.SubOptions(buffer_size=1, policy=policy, block_timeout=0.01)
    subs = [("full", refusing), ("other", BIG)]
    made = dict(
        (name, broker.subscribe_with_ack("t", opts))
        for name, opts in (subs if full_first else subs[::-1])
    )
    full, other = made["full"], made["other"]
    broker.publish("t", mqkit.PriorityMessage("filler", priority=mqkit.Priority.HIGH))
    broker.publish("t", mqkit.AckMessage("a", ack_id="k"))  # lower than filler: refused by full
    assert full.stats().dropped == 1 and other.stats().queue_len == 2
    assert pending_on_disk(broker) == ["a"]
    assert restarted_ids(make_broker, broker, tmp_path) == ["filler", "a"]

    again = make_broker("persistence", "ack", config=config(tmp_path))
    sub = again.subscribe_with_ack("t", BIG)
    assert again.replay_messages("t") == 2
    assert [m.id for m in (sub.get(timeout=5), sub.get(timeout=5))] == ["filler", "a"]
    sub.ack("k")  # the only copy there is now
    assert pending_on_disk(again) == []
    assert restarted_ids(make_broker, again, tmp_path) == ["filler"]


@attrs.frozen
class Way:
    """A way one subscription's copy of an ack-required message ends."""

    name: str
    end: Callable[[mqkit.Broker, mqkit.Subscription, mqkit.FakeClock], None]
    # The message: an AckMessage, or an AckTTLMessage for the ways that expire it.
    expires: bool = False

    def message(self, clock: mqkit.FakeClock) -> mqkit.Message:
        if self.expires:
            return mqkit.AckTTLMessage(
                "a", expires_at=clock.now() + timedelta(seconds=0.5), ack_timeout=100.0
            )
        return mqkit.AckMessage("a")


def _ack(broker: mqkit.Broker, sub: mqkit.Subscription, clock: mqkit.FakeClock) -> None:
    sub.ack(sub.get_nowait().ack_id)  # type: ignore[attr-defined]


def _nack_requeue_then_ack(
    broker: mqkit.Broker, sub: mqkit.Subscription, clock: mqkit.FakeClock
) -> None:
    first = sub.get_nowait()
    sub.nack(first.ack_id, requeue=True)  # type: ignore[attr-defined]
    assert pending_on_disk(broker) == ["a"]  # not ended yet
    again = sub.get_nowait()
    assert again.attempt == 2
    sub.ack(again.ack_id)  # type: ignore[attr-defined]


def _nack_dead_letter(
    broker: mqkit.Broker, sub: mqkit.Subscription, clock: mqkit.FakeClock
) -> None:
    sub.nack(sub.get_nowait().ack_id, requeue=False)  # type: ignore[attr-defined]


def _dead_letter_after_retries(
    broker: mqkit.Broker, sub: mqkit.Subscription, clock: mqkit.FakeClock
) -> None:
    assert sub.get_nowait().attempt == 1
    clock.advance(ACK_TIMEOUT)  # missed: redelivered (max_ack_retries=1)
    assert sub.get_nowait().attempt == 2
    clock.advance(ACK_TIMEOUT)  # missed again: dead-lettered


def _cancel_delivered(
    broker: mqkit.Broker, sub: mqkit.Subscription, clock: mqkit.FakeClock
) -> None:
    sub.get_nowait()
    sub.cancel()


def _cancel_buffered(broker: mqkit.Broker, sub: mqkit.Subscription, clock: mqkit.FakeClock) -> None:
    sub.cancel()


def _evicted(broker: mqkit.Broker, sub: mqkit.Subscription, clock: mqkit.FakeClock) -> None:
    broker.publish("t", mqkit.Message("push"))  # a buffer of one under DROP_OLDEST


def _expired_in_the_buffer(
    broker: mqkit.Broker, sub: mqkit.Subscription, clock: mqkit.FakeClock
) -> None:
    clock.advance(2)  # the TTL sweep takes it out of the buffer


def _expired_at_delivery(
    broker: mqkit.Broker, sub: mqkit.Subscription, clock: mqkit.FakeClock
) -> None:
    clock.advance(0.6)  # expired, not swept yet
    with pytest.raises(TimeoutError):
        sub.get_nowait()  # withheld


WAYS = [
    Way("ack", _ack),
    Way("nack-requeue-then-ack", _nack_requeue_then_ack),
    Way("nack-dead-letter", _nack_dead_letter),
    Way("dead-letter-after-retries", _dead_letter_after_retries),
    Way("cancel-delivered", _cancel_delivered),
    Way("cancel-buffered", _cancel_buffered),
    Way("drop-evicted", _evicted),
    Way("expired-in-the-buffer", _expired_in_the_buffer, expires=True),
    Way("expired-at-delivery", _expired_at_delivery, expires=True),
]


@pytest.mark.parametrize("way", [pytest.param(w, id=w.name) for w in WAYS])
@pytest.mark.parametrize("last", [False, True], ids=["ends-first", "ends-last"])
def test_each_way_a_copy_ends_settles_that_copy_only(
    make_broker: Factory, tmp_path: Path, fake_clock: mqkit.FakeClock, way: Way, last: bool
) -> None:
    """Two subscriptions hold a stored ack-required message; one copy ends in ``way``.

    The message stays stored while the other copy is unsettled, and is removed with the last.
    """
    cfg = config(
        tmp_path, dead_letter_topic=DLQ, default_ack_timeout=ACK_TIMEOUT, max_ack_retries=1
    )
    broker = make_broker("persistence", "ack", "ttl", "deadletter", config=cfg)
    one = broker.subscribe("t", mqkit.SubOptions(buffer_size=1))  # drop_oldest
    two = broker.subscribe("t", BIG)
    broker.publish("t", way.message(fake_clock))
    # The other copy is handed out at once when the message can expire (a delivered copy does
    # not expire), and only when it is acknowledged otherwise (so no deadline of it runs out).
    taken = two.get_nowait() if way.expires else None

    def ack_two() -> None:
        message = taken if taken is not None else two.get_nowait()
        two.ack(message.ack_id)  # type: ignore[attr-defined]

    if last:
        ack_two()
        assert pending_on_disk(broker) == ["a"]
        way.end(broker, one, fake_clock)
    else:
        way.end(broker, one, fake_clock)
        assert pending_on_disk(broker) == ["a"]
        ack_two()
    assert pending_on_disk(broker) == []
    assert "a" not in restarted_ids(make_broker, broker, tmp_path)


def test_copies_of_three_subscriptions_each_count(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    subs = [broker.subscribe_with_ack("t") for _ in range(3)]
    broker.publish("t", mqkit.AckMessage("a", ack_id="k"))
    subs[0].cancel()  # buffered: ends (dead letter queue off: dropped)
    subs[1].get_nowait()
    subs[1].ack("k")
    assert pending_on_disk(broker) == ["a"]
    assert restarted_ids(make_broker, broker, tmp_path) == ["a"]  # the third never settled it


# -- retention never removes unsettled messages (issue 13, point 10) ---------------------------


@pytest.mark.parametrize("batch", [1, 5], ids=["publish", "publish_batch"])
def test_count_retention_keeps_every_unsettled_ack_message(
    make_broker: Factory, tmp_path: Path, batch: int
) -> None:
    cfg = config(tmp_path, persistence_max_messages=10)
    broker = make_broker("persistence", "ack", config=cfg)
    sub = broker.subscribe_with_ack("t", BIG)
    for first in range(0, 50, batch):
        messages = [mqkit.AckMessage(f"a{i}", ack_id=f"k{i}") for i in range(first, first + batch)]
        if batch == 1:
            broker.publish("t", messages[0])
        else:
            broker.publish_batch("t", messages)
    assert len([sub.get_nowait() for _ in range(50)]) == 50  # delivered, none acknowledged
    wanted = [f"a{i}" for i in range(50)]
    assert ids(broker.recover_messages("t")) == wanted
    health = broker.health_check()
    assert health.status == "degraded"
    (problem,) = health.problems
    assert "50 unsettled" in problem and "'t'" in problem and "persistence_max_messages" in problem
    broker.close()

    reopened = make_broker("persistence", "ack", config=cfg)
    assert ids(reopened.recover_messages("t")) == wanted
    assert reopened.health_check().status == "degraded"
    sub = reopened.subscribe_with_ack("t", BIG)
    assert reopened.replay_messages("t") == 50
    for _ in range(45):
        sub.ack(sub.get_nowait().ack_id)  # type: ignore[attr-defined]
    assert ids(reopened.recover_messages("t")) == wanted[45:]
    assert reopened.health_check().status == "healthy"  # 5 unsettled: within the limit


def test_count_retention_removes_the_oldest_settled_kinds_first(
    make_broker: Factory, tmp_path: Path
) -> None:
    """Unsettled ack-required messages count, but only the others are removed."""
    cfg = config(tmp_path, persistence_max_messages=10)
    broker = make_broker("persistence", "ack", config=cfg)
    sub = broker.subscribe_with_ack("t", BIG)
    expected = []
    for i in range(24):
        if i % 6 == 0:  # a0, a6, a12, a18
            broker.publish("t", mqkit.AckMessage(f"a{i}"))
            expected.append(f"a{i}")
        else:
            broker.publish("t", mqkit.Message(f"m{i}"))
    kept_plain = [f"m{i}" for i in range(24) if i % 6][-6:]
    expected = sorted(expected + kept_plain, key=lambda name: int(name[1:]))
    assert ids(broker.recover_messages("t")) == expected
    assert broker.health_check().status == "healthy"
    assert len([sub.get_nowait() for _ in range(24)]) == 24
    broker.close()
    reopened = make_broker("persistence", "ack", config=cfg)
    assert ids(reopened.recover_messages("t")) == expected


def test_age_retention_keeps_unsettled_ack_messages(
    make_broker: Factory, tmp_path: Path, fake_clock: mqkit.FakeClock
) -> None:
    cfg = config(tmp_path, persistence_max_age=60)
    broker = make_broker("persistence", "ack", config=cfg)
    sub = broker.subscribe_with_ack("t", BIG)
    broker.publish("t", mqkit.AckMessage("old-ack", ack_id="k"))
    broker.publish("t", mqkit.Message("old-plain"))
    sub.get_nowait()
    fake_clock.advance(61)
    broker.publish("t", mqkit.Message("young"))
    assert ids(broker.recover_messages("t")) == ["old-ack", "young"]
    (problem,) = broker.health_check().problems
    assert "'t'" in problem and "persistence_max_age" in problem
    broker.close()
    reopened = make_broker("persistence", "ack", config=cfg)
    assert ids(reopened.recover_messages("t")) == ["old-ack", "young"]
    sub = reopened.subscribe_with_ack("t", BIG)
    assert reopened.replay_messages("t") == 2
    assert sub.get_nowait().id == "old-ack"
    sub.ack("k")
    assert ids(reopened.recover_messages("t")) == ["young"]
    assert reopened.health_check().status == "healthy"


# -- every stored message has its own key (issue 13, point 11) -----------------------------------


def _publish_each_way(broker: mqkit.Broker, prefix: str) -> None:
    """The same id, five times, through every publish path, within one clock tick."""
    broker.publish("t", mqkit.Message(prefix, 1))
    broker.publish_with_ack("t", mqkit.AckMessage(prefix, 2))
    broker.publish_batch("t", [mqkit.Message(prefix, 3), mqkit.Message(prefix, 4)])
    with broker.transaction() as tx:
        tx.publish("t", mqkit.Message(prefix, 5))
    broker.publish_priority("t", mqkit.PriorityMessage(prefix, 6))


def test_same_id_within_one_clock_tick_is_stored_each_time(
    make_broker: Factory, tmp_path: Path
) -> None:
    """The fake clock does not move: every publish has the same time, and each is stored."""
    plugins = ("persistence", "ack", "transactions", "priority")
    broker = make_broker(*plugins, config=config(tmp_path))
    _publish_each_way(broker, "dup")
    assert [m.data for m in broker.recover_messages("t")] == [1, 2, 3, 4, 5, 6]
    broker.close()
    reopened = make_broker(*plugins, config=config(tmp_path))
    assert [m.data for m in reopened.recover_messages("t")] == [1, 2, 3, 4, 5, 6]
    sub = reopened.subscribe("t", BIG)
    assert reopened.replay_messages("t") == 6  # replays are not stored again
    assert [m.data for m in drain_all(sub)] == [1, 2, 3, 4, 5, 6]
    assert [m.data for m in reopened.recover_messages("t")] == [1, 2, 3, 4, 5, 6]


def drain_all(sub: mqkit.Subscription) -> list[mqkit.Message]:
    got = []
    while sub.stats().queue_len:
        got.append(sub.get_nowait())
    return got


def test_acks_of_same_id_same_tick_messages_settle_each_its_own(
    make_broker: Factory, tmp_path: Path
) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t", BIG)
    for data in ("first", "second", "third"):
        broker.publish("t", mqkit.AckMessage("dup", data))
    _, second, third = drain_all(sub)
    sub.ack(second.ack_id)  # type: ignore[attr-defined]
    assert [m.data for m in broker.recover_messages("t")] == ["first", "third"]
    sub.nack(third.ack_id, requeue=True)  # type: ignore[attr-defined]
    again = sub.get_nowait()
    assert again.data == "third" and again.attempt == 2
    sub.ack(again.ack_id)  # type: ignore[attr-defined]  # the redelivered copy settles its own
    assert [m.data for m in broker.recover_messages("t")] == ["first"]
    broker.close()
    reopened = make_broker("persistence", "ack", config=config(tmp_path))
    assert [m.data for m in reopened.recover_messages("t")] == ["first"]


def test_republished_recovered_message_is_a_new_message(
    make_broker: Factory, tmp_path: Path
) -> None:
    """Publishing a recovered message object is a publish: it is stored again."""
    broker = make_broker("persistence", config=config(tmp_path))
    broker.publish("t", mqkit.Message("m", 1))
    (recovered,) = broker.recover_messages("t")
    broker.publish("t", recovered)
    assert [m.data for m in broker.recover_messages("t")] == [1, 1]


def test_sequence_numbers_continue_after_a_restart(make_broker: Factory, tmp_path: Path) -> None:
    """Even when every message was settled, a new message never reuses an old number."""
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t")
    broker.publish("t", mqkit.AckMessage("a", ack_id="k"))
    (before,) = json.loads(str(stored_key(broker, "a")))[:1]
    sub.get_nowait()
    sub.ack("k")
    assert len(cache_of(written(broker))) == 0
    broker.close()
    reopened = make_broker("persistence", config=config(tmp_path))
    reopened.publish("t", mqkit.Message("b"))
    (after,) = json.loads(str(stored_key(reopened, "b")))[:1]
    assert after > before


def test_store_of_the_previous_format_is_read(make_broker: Factory, tmp_path: Path) -> None:
    """Keys ``[seq, topic, id, micros]`` (the format before the ack flag) recover and settle."""
    start = mqkit.FakeClock().now()
    micros = int(start.timestamp()) * 1_000_000

    def value(message: mqkit.Message) -> dict[str, object]:
        return message_to_dict(attrs.evolve(message, topic="t", time=start))

    cache = diskcache.Cache(str(tmp_path / "store"), eviction_policy="none")
    cache.set(f'[0,"t","plain",{micros}]', json.dumps(value(mqkit.Message("plain", 1))))
    cache.set(f'[1,"t","ack",{micros}]', json.dumps(value(mqkit.AckMessage("ack", ack_id="k"))))
    members = [
        ["t", f"b{i}", micros, value(mqkit.AckMessage(f"b{i}", ack_id=f"b{i}"))] for i in (0, 1, 2)
    ]
    cache.set("[2,3]", json.dumps(members))
    cache.set("[3]", "")  # b1 was settled
    cache.close()

    assert pending_on_disk(tmp_path) == ["ack", "b0", "b2"]  # mqkit inspect reads it too
    cfg = config(tmp_path, persistence_max_messages=1)  # only "plain" may be retired
    broker = make_broker("persistence", "ack", config=cfg)
    assert ids(broker.recover_messages("t")) == ["ack", "b0", "b2"]
    sub = broker.subscribe_with_ack("t", BIG)
    assert broker.replay_messages("t") == 3
    for message in drain_all(sub):
        sub.ack(message.ack_id)  # type: ignore[attr-defined]
    assert broker.recover_messages("t") == []
    assert len(cache_of(written(broker))) == 0
    assert broker.health_check().status == "healthy"


@pytest.mark.parametrize("during", ["evicted", "acked"])
def test_copy_settled_while_the_message_is_still_being_routed_counts(
    make_broker: Factory, tmp_path: Path, during: str
) -> None:
    """A copy that ends before the publish has reached every subscription counts as settled.

    The second subscription's filter runs in the publisher's thread in the middle of routing:
    there the first subscription's copy ends (evicted by another publish, or acknowledged).
    """
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    first = broker.subscribe_with_ack("t", mqkit.SubOptions(buffer_size=1))  # drop_oldest

    def meanwhile(message: mqkit.Message) -> bool:
        if message.id == "a":
            if during == "evicted":
                broker.publish("t", mqkit.Message("push"))  # evicts first's copy of "a"
            else:
                first.ack(first.get_nowait().ack_id)  # type: ignore[attr-defined]
        return message.id == "a"

    second = broker.subscribe_with_ack("t", mqkit.SubOptions(buffer_size=10, filter=meanwhile))
    third = broker.subscribe_with_ack("t", BIG)
    broker.publish("t", mqkit.AckMessage("a", ack_id="k"))
    assert pending_on_disk(broker) == ["a"]  # second and third hold it
    second.ack(second.get_nowait().ack_id)  # type: ignore[attr-defined]
    assert pending_on_disk(broker) == ["a"]
    if during == "evicted":
        assert third.get_nowait().id == "push"  # published in the middle of routing "a"
    third.ack(third.get_nowait().ack_id)  # type: ignore[attr-defined]
    assert pending_on_disk(broker) == []
    assert "a" not in restarted_ids(make_broker, broker, tmp_path)


def test_an_ack_during_routing_returns_at_once_and_the_router_removes_the_message(
    make_broker: Factory, tmp_path: Path
) -> None:
    """An ack made while the message's publish still routes returns without waiting for it.

    The consumer's copy is buffered first; a second subscription's filter then holds the
    publisher's thread in the middle of routing while the consumer acks from its own thread.
    The number of copies is known only once routing ends: then the message leaves the store.
    """
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    consumer = broker.subscribe_with_ack("t", BIG)
    routing, release = threading.Event(), threading.Event()

    def hold(message: mqkit.Message) -> bool:
        routing.set()
        assert release.wait(timeout=30)
        return False  # one copy only: the consumer's

    broker.subscribe("t", mqkit.SubOptions(buffer_size=10, filter=hold))
    publisher = threading.Thread(target=broker.publish, args=("t", mqkit.AckMessage("a")))
    publisher.start()
    assert routing.wait(timeout=30)

    def ack() -> None:
        consumer.ack(consumer.get_nowait().ack_id)  # type: ignore[attr-defined]

    acker = threading.Thread(target=ack)
    acker.start()
    acker.join(timeout=30)
    routed_meanwhile = publisher.is_alive()
    release.set()
    publisher.join(timeout=30)
    assert not acker.is_alive() and routed_meanwhile  # the ack returned while routing was held
    assert broker.recover_messages("t") == []
    assert pending_on_disk(broker) == []
    assert "a" not in restarted_ids(make_broker, broker, tmp_path)
