"""The ``memory`` plugin: the bytes the broker holds, and ``max_memory_usage`` on every path."""

from __future__ import annotations

import contextlib
import itertools
import random
import sys
import threading
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from mqkit.core.message import estimate_size
from mqkit.plugins.memory import SLOT_BYTES
from mqkit.plugins.persistence.serializer import message_to_dict
from mqkit.testing import FakeClock, broker_config

from .helpers import DLQ, drain, drain_ids, in_

LIMIT = 1000
WAIT = 30.0  # seconds a test waits for a thread before it fails
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


# -- exact accounting: every policy, every buffer, every path (issue 13, point 12) ---------------


def buffered_bytes(broker: mqkit.Broker) -> int:
    """What the live subscriptions' buffers hold, by the plugin's rule (a copy: size + slot)."""
    return sum(size(m) + SLOT_BYTES for s in broker.subscriptions() for m in s.buffered())


def dead_letter_bytes(broker: mqkit.Broker) -> int:
    return (
        sum(size(d.message) for d in broker.dead_letters())
        if broker.has_plugin("deadletter")
        else 0
    )


BUFFERS = ("fifo", "priority")
P = mqkit.Priority
PRIORITIES = (P.HIGH, P.LOW, P.HIGHEST, P.LOWEST, P.NORMAL, P.LOWEST, P.LOW)


@pytest.mark.parametrize("buffer", BUFFERS)
@pytest.mark.parametrize("policy", list(mqkit.Backpressure))
def test_usage_is_exact_under_every_policy_and_buffer(
    make_broker, policy: mqkit.Backpressure, buffer: str
) -> None:
    plugins = ("memory", "priority") if buffer == "priority" else ("memory",)
    broker = make_broker(*plugins, config=Config(max_memory_usage=10**6))
    sub = broker.subscribe("t", SubOptions(buffer_size=3, policy=policy, block_timeout=0.0))
    other = broker.subscribe("t")
    for i, priority in enumerate(PRIORITIES * 3):
        broker.publish("t", PriorityMessage(f"m{i}", "x" * (10 * i), priority=priority))
        assert broker.memory_usage() == buffered_bytes(broker) >= 0, i
    assert sub.stats().dropped > 0
    for taker in (sub, other):
        while taker.stats().queue_len:
            taker.get_nowait()
            assert broker.memory_usage() == buffered_bytes(broker) >= 0
    assert broker.memory_usage() == 0


def test_a_priority_buffer_dropping_the_new_message_keeps_the_limit(make_broker) -> None:
    # DROP_OLDEST on a priority buffer drops the *new* message when it ranks below everything
    # buffered: it never entered, so it must not be subtracted (usage went negative, and the
    # limit let another subscription hold several times the limit).
    limit = 5000
    broker = make_broker("memory", "priority", config=Config(max_memory_usage=limit))
    urgent = broker.subscribe("jobs", SubOptions(buffer_size=2))
    for i in range(2):
        broker.publish("jobs", PriorityMessage(f"urgent-{i}", priority=mqkit.Priority.HIGHEST))
    held = broker.memory_usage()
    for i in range(50):
        broker.publish("jobs", PriorityMessage(f"low-{i}", "x" * 100, priority=0))
    assert urgent.stats().dropped == 50
    assert broker.memory_usage() == held == buffered_bytes(broker)
    bulk = broker.subscribe("bulk")
    with pytest.raises(MemoryLimitExceededError):
        for i in range(1000):
            broker.publish("bulk", Message(f"bulk-{i}", "x" * 100))
    assert buffered_bytes(broker) <= limit
    assert bulk.stats().queue_len < 1000


class TakeOver:
    """A plugin that takes over every message published to ``gateway`` (it never buffers)."""

    plugin_info = mqkit.PluginInfo(name="take-over", description="takes over gateway")

    @mqkit.hookimpl
    def mqkit_publish(self, topic: str) -> bool | None:
        return True if topic == "gateway" else None


CHECKED_NOT_ROUTED: dict[str, Callable[[mqkit.Broker, Message], None]] = {
    "held by a transaction": lambda b, m: b.publish_with_transaction("t", m, "tx"),
    "taken over by a plugin": lambda b, m: b.publish("gateway", m),
}


@pytest.mark.parametrize("first", list(CHECKED_NOT_ROUTED))
def test_a_checked_message_is_counted_once(make_broker, first: str) -> None:
    # A message checked against the limit but not routed (held by a transaction, taken over by
    # a plugin) is counted by what holds it, if anything - not a second time by the check
    # (a transaction's messages were counted twice: a publish that fits was refused).
    before, after = Message("before", "x" * 300), Message("after", "y" * 300)
    held = size(before) if first == "held by a transaction" else 0
    one = size(after) + SLOT_BYTES
    limit = held + 2 * one  # exactly room for what is held and two more
    broker = make_broker(
        "memory", "transactions", config=Config(max_memory_usage=limit), objects=[TakeOver()]
    )
    sub = broker.subscribe("t")
    CHECKED_NOT_ROUTED[first](broker, before)
    assert broker.memory_usage() == held
    broker.publish("t", after)
    broker.publish("t", after)
    assert broker.memory_usage() == limit
    with pytest.raises(MemoryLimitExceededError):
        broker.publish("t", after)
    assert drain_ids(sub) == ["after", "after"]
    broker.publish_batch("t", [after, after])
    assert broker.memory_usage() == limit
    with pytest.raises(MemoryLimitExceededError):
        broker.publish_batch("t", [after])
    assert drain_ids(sub) == ["after", "after"]
    assert broker.memory_usage() == held


class TakeOnCancel:
    """Takes a message out of a cancelled subscription before the memory plugin hears of it."""

    plugin_info = mqkit.PluginInfo(name="take-on-cancel", description="drains at cancel")

    def __init__(self) -> None:
        self.taken: list[str] = []

    @mqkit.hookimpl(tryfirst=True)
    def mqkit_unsubscribe(self, subscription: mqkit.Subscription) -> None:
        self.taken.append(subscription.get_nowait().id)


@pytest.mark.parametrize("close", [False, True], ids=["cancel", "broker-close"])
def test_a_cancelled_buffer_is_uncounted_once_whoever_drains_it(make_broker, close) -> None:
    taker = TakeOnCancel()
    broker = make_broker("memory", config=Config(max_memory_usage=10**6), objects=[taker])
    sub, other = broker.subscribe("t"), broker.subscribe("u")
    for i in range(3):
        broker.publish("t", Message(f"m{i}", "x" * 100))
    broker.publish("u", Message("kept"))
    if close:
        broker.close()
    else:
        sub.cancel()  # the plugin takes m0 out of the closed buffer first
    assert taker.taken[0] == "m0"
    assert (
        broker.memory_usage()
        == buffered_bytes(broker)
        == (0 if close else size(Message("kept")) + SLOT_BYTES)
    )
    assert drain_ids(sub) == ["m1", "m2"]
    assert broker.memory_usage() == buffered_bytes(broker)
    if not close:
        assert drain_ids(other) == ["kept"]
    assert broker.memory_usage() == 0


class PeakSampler:
    """Samples, after every publish call, what the buffers really hold and the usage read."""

    plugin_info = mqkit.PluginInfo(name="peak-sampler", description="samples buffered bytes")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.peak = 0
        self.lowest_usage = 0

    @mqkit.hookimpl
    def mqkit_published(self, broker: mqkit.Broker) -> None:
        held, usage = buffered_bytes(broker), broker.memory_usage()
        with self.lock:
            self.peak = max(self.peak, held)
            self.lowest_usage = min(self.lowest_usage, usage)


@pytest.mark.parametrize(
    ("buffer", "persistence"),
    [("fifo", False), ("fifo", True), ("priority", True)],
    ids=["fifo", "fifo+persistence", "priority+persistence"],
)
def test_concurrent_publishers_overshoot_by_at_most_one_message_each(
    tmp_path, buffer: str, persistence: bool
) -> None:
    publishers, each, limit = 8, 150, 20_000
    rng = random.Random(13)
    batches = [
        [PriorityMessage(f"p{i}-m{j:03}", "x" * rng.randrange(200, 1500), priority=0)
         for j in range(each)]
        for i in range(publishers)
    ]  # fmt: skip
    biggest = max(size(m) for batch in batches for m in batch) + SLOT_BYTES
    sampler = PeakSampler()
    plugins = [
        "memory",
        *(["persistence"] if persistence else []),
        *([buffer] * (buffer != "fifo")),
    ]
    config = Config(max_memory_usage=limit, persistence_path=str(tmp_path / "store"))
    with mqkit.Broker(broker_config(*plugins, config=config), plugins=[sampler]) as broker:
        sub = broker.subscribe("t", SubOptions(buffer_size=100_000))
        # A full DROP_OLDEST buffer holding higher priorities: with a priority buffer, every
        # new message is the one it drops.
        side = broker.subscribe("t", SubOptions(buffer_size=1))
        broker.publish("t", PriorityMessage("urgent", priority=mqkit.Priority.HIGHEST))
        assert sub.get_nowait().id == "urgent"
        start = threading.Barrier(publishers + 1)
        refused = [0] * publishers
        limit_reached = threading.Event()

        def publish(i: int) -> None:
            start.wait()
            for message in batches[i]:
                try:
                    broker.publish("t", message)
                except MemoryLimitExceededError:
                    refused[i] += 1
                    limit_reached.set()

        def consume() -> None:
            start.wait()
            # Consuming from the start, a consumer as fast as the (durable) publishers would
            # keep the usage below the limit: it starts once the limit is reached.
            assert limit_reached.wait(timeout=60)
            for _ in sub:  # until cancelled and drained
                pass

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(publishers)]
        consumer = threading.Thread(target=consume)
        for t in [*threads, consumer]:
            t.start()
        for t in threads:
            t.join()
        sub.cancel()
        consumer.join()
        assert sampler.peak <= limit + publishers * biggest
        assert sampler.lowest_usage >= 0
        assert sum(refused) > 0  # the limit was reached
        assert (
            broker.memory_usage()
            == buffered_bytes(broker)
            == sum(size(m) + SLOT_BYTES for m in side.buffered())
        )


# -- a property: whatever happens, usage is what is held ------------------------------------------

LIMIT_P = 6000
ACK_TIMEOUT = 2.5  # whole-second clock steps never land on a deadline
TX_TIMEOUT = 4.5

payload_sizes = st.integers(min_value=0, max_value=700)
topics = st.sampled_from(("a", "a", "b", DLQ))
priorities = st.sampled_from((0, 20, 40))
OPERATIONS = st.one_of(
    st.tuples(st.just("subscribe"), topics, st.sampled_from(list(mqkit.Backpressure))),
    st.tuples(st.just("cancel"), st.integers(0, 9)),
    st.tuples(
        st.just("publish"),
        topics,
        st.sampled_from(["plain", "priority", "priority", "ttl", "ack"]),
        payload_sizes,
        priorities,
    ),
    st.tuples(st.just("batch"), topics, st.lists(payload_sizes, min_size=1, max_size=4)),
    st.tuples(st.just("tx_publish"), st.integers(0, 2), topics, payload_sizes),
    st.tuples(st.sampled_from(["commit", "rollback"]), st.integers(0, 2)),
    st.tuples(st.just("get"), st.integers(0, 9)),
    st.tuples(st.sampled_from(["ack", "nack", "reject"]), st.integers(0, 9)),
    st.tuples(st.just("dead_letter"), topics, payload_sizes),
    st.tuples(st.just("replay")),
    st.tuples(st.just("advance"), st.integers(1, 3)),
)


class Model:
    """What the plugin counts besides buffers: open transactions and unacknowledged deliveries
    (buffers and dead letters are read from the broker itself)."""

    def __init__(self, broker: mqkit.Broker, clock: FakeClock) -> None:
        self.broker, self.clock = broker, clock
        self.subs: list[mqkit.Subscription] = []
        self.tx: dict[str, list[int]] = {}
        self.pending: dict[tuple[int, str], tuple[float, int]] = {}  # -> (deadline, bytes)
        self.ids = itertools.count()

    def expected(self) -> int:
        open_tx = self.broker.get_plugin("transactions")
        assert isinstance(open_tx, mqkit.TransactionFeature)
        self.tx = {tx: sizes for tx, sizes in self.tx.items() if open_tx.is_open(tx)}
        now = self.clock.monotonic()
        self.pending = {k: v for k, v in self.pending.items() if v[0] > now}
        return (
            buffered_bytes(self.broker)
            + dead_letter_bytes(self.broker)
            + sum(sum(sizes) for sizes in self.tx.values())
            + sum(held for _, held in self.pending.values())
        )

    def message(self, kind: str, n: int, priority: int = 20) -> Message:
        mid, data = f"m{next(self.ids)}", "x" * n
        if kind == "priority":
            return PriorityMessage(mid, data, priority=priority)
        if kind == "ttl":
            return TTLMessage(mid, data, expires_at=in_(self.clock, 0.5 + priority % 3))
        if kind == "ack":
            return AckMessage(mid, data, ack_timeout=ACK_TIMEOUT)
        return Message(mid, data)

    def sub(self, i: int) -> mqkit.Subscription:
        return self.subs[i % len(self.subs)]

    def fits(self, topic: str, messages: list[Message]) -> bool:
        """Whether ``messages`` fit in what is left (one copy per subscription reached)."""
        copies = max(1, len(self.broker.routes(topic)))
        need = sum(copies * (size(m) + SLOT_BYTES) for m in messages)
        return self.broker.memory_usage() + need <= LIMIT_P

    def publish(self, topic: str, messages: list[Message], call: Callable[[], None]) -> None:
        """Make a publish call; it may be refused only if the messages do not fit."""
        fits = self.fits(topic, messages)
        try:
            call()
        except MemoryLimitExceededError:
            assert not fits, f"refused, although {len(messages)} message(s) fit"
            raise

    def run(self, op: tuple) -> None:
        b, name = self.broker, op[0]
        if name == "subscribe":
            opts = SubOptions(buffer_size=2, policy=op[2], block_timeout=0.0)
            self.subs.append(b.subscribe(op[1], opts))
        elif name == "cancel":
            sub = self.sub(op[1])
            sub.cancel()
            self.pending = {k: v for k, v in self.pending.items() if k[0] != id(sub)}
        elif name == "publish":
            _, topic, kind, n, priority = op
            message = self.message(kind, n, priority)
            self.publish(topic, [message], lambda: b.publish(topic, message))
        elif name == "batch":
            batch = [self.message("plain", n) for n in op[2]]
            self.publish(op[1], batch, lambda: b.publish_batch(op[1], batch))
        elif name == "tx_publish":
            _, tx, topic, n = op
            message = self.message("plain", n)
            self.publish(
                topic, [message], lambda: b.publish_with_transaction(topic, message, f"tx{tx}")
            )
            self.tx.setdefault(f"tx{tx}", []).append(size(message))
        elif name == "commit":
            b.commit_transaction(f"tx{op[1]}")
        elif name == "rollback":
            b.rollback_transaction(f"tx{op[1]}")
        elif name == "get":
            sub = self.sub(op[1])
            message = sub.get_nowait()
            if isinstance(message, AckMessage):
                deadline = self.clock.monotonic() + ACK_TIMEOUT
                self.pending[(id(sub), message.ack_id)] = (deadline, size(message))
        elif name in ("ack", "nack", "reject"):
            sub = self.sub(op[1])
            mine = [k for k in self.pending if k[0] == id(sub)]
            if mine:
                del self.pending[mine[0]]
                if name == "ack":
                    sub.ack(mine[0][1])
                else:
                    sub.nack(mine[0][1], requeue=name == "nack")
        elif name == "dead_letter":
            b.publish_to_dead_letter(op[1], self.message("plain", op[2]), "manual")
        elif name == "replay":
            b.replay_dead_letters(2)
        elif name == "advance":
            self.clock.advance(op[1])


@pytest.mark.parametrize("buffer", BUFFERS)
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(operations=st.lists(OPERATIONS, max_size=40))
def test_usage_is_always_what_is_held(buffer: str, operations: list[tuple]) -> None:
    clock = FakeClock()
    plugins = ["memory", "ttl", "ack", "transactions", "deadletter"]
    config = Config(
        max_memory_usage=LIMIT_P,
        dead_letter_topic=DLQ,
        max_dead_letters=4,
        max_ack_retries=1,
        transaction_timeout=TX_TIMEOUT,
    )
    broker = mqkit.Broker(
        broker_config(*plugins, *([buffer] * (buffer != "fifo")), config=config), clock=clock
    )
    model = Model(broker, clock)
    try:
        for policy in mqkit.Backpressure:  # one of each on "a" to begin with
            model.run(("subscribe", "a", policy))
        for op in operations:
            # refused, not found, empty: the invariant holds all the same
            with contextlib.suppress(mqkit.MQError, TimeoutError):
                model.run(op)
            usage = broker.memory_usage()
            assert usage == model.expected(), op
            assert usage >= 0
        for i, sub in enumerate(model.subs):
            model.run(("cancel", i))
            drain(sub)
        assert broker.memory_usage() == model.expected()
    finally:
        broker.close()
    assert broker.memory_usage() == 0


def test_a_commit_that_does_not_fit_is_refused_as_a_whole(make_broker) -> None:
    a, b = Message("a", "x" * 300), Message("b", "y" * 300)
    one = size(a) + SLOT_BYTES
    limit = 3 * one - 1  # held, a and b count without their slots: c fits beside them
    broker = make_broker("memory", "transactions", config=Config(max_memory_usage=limit))
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", a, "tx")
    broker.publish_with_transaction("t", b, "tx")
    broker.publish("t", Message("c", "z" * 300))
    with pytest.raises(MemoryLimitExceededError):
        broker.commit_transaction("tx")  # as buffered copies, a and b no longer fit
    assert drain_ids(sub) == ["c"]
    assert broker.memory_usage() == 0
    with pytest.raises(mqkit.TransactionNotFoundError, match="commit failed"):
        broker.commit_transaction("tx")


# -- the limit as the broker's one comparison ---------------------------------------------------


def test_a_limit_changed_at_run_time_holds_from_the_next_publish(make_broker) -> None:
    """The broker keeps the limit it compares with: ``update_config`` must renew it."""
    one = size(Message("m0", "x" * 200)) + SLOT_BYTES  # every id here has two characters
    broker = make_broker("memory", config=Config(max_memory_usage=10 * one))
    sub = broker.subscribe("t")
    for i in range(3):
        broker.publish("t", Message(f"m{i}", "x" * 200))
    broker.update_config(broker.config.replace(max_memory_usage=3 * one))  # full now
    with pytest.raises(MemoryLimitExceededError):
        broker.publish("t", Message("r0", "x" * 200))
    broker.update_config(broker.config.replace(max_memory_usage=4 * one))
    broker.publish("t", Message("f0", "x" * 200))
    with pytest.raises(MemoryLimitExceededError):
        broker.publish("t", Message("r1", "x" * 200))
    assert drain_ids(sub) == ["m0", "m1", "m2", "f0"]


class _Holder(mqkit.Feature):
    """A third party's feature that holds messages outside the buffers."""

    feature = "test-holder"
    plugin_info = mqkit.PluginInfo(name="test-holder")

    def __init__(self) -> None:
        self.held = 0

    def held_bytes(self) -> int:
        return self.held


class _CountingHolder(mqkit.Feature):
    """The same, keeping its bytes where the broker counts them (``Feature.held_shard``)."""

    feature = "test-counting-holder"
    plugin_info = mqkit.PluginInfo(name="test-counting-holder")

    def __init__(self) -> None:
        self.shard = self.held_shard = mqkit.ByteShard()

    def held_bytes(self) -> int:
        return self.shard.bytes


@pytest.mark.parametrize("counting", [False, True], ids=["asked", "counted"])
def test_what_a_third_party_feature_holds_counts_against_the_limit(make_broker, counting) -> None:
    m = Message("m", "x" * 200)
    one = size(m) + SLOT_BYTES
    holder = _CountingHolder() if counting else _Holder()
    broker = make_broker("memory", config=Config(max_memory_usage=3 * one), objects=[holder])
    sub = broker.subscribe("t")
    broker.publish("t", Message("a", "x" * 200))
    if isinstance(holder, _CountingHolder):
        holder.shard.bytes = 2 * one
    else:
        holder.held = 2 * one
    assert broker.memory_usage() == 3 * one
    with pytest.raises(MemoryLimitExceededError):
        broker.publish("t", Message("refused", "x" * 200))
    assert drain_ids(sub) == ["a"]
    broker.publish("t", Message("b", "x" * 200))  # a left: room for one
    assert broker.memory_usage() == 3 * one
    broker.close()
    assert broker.counted_bytes() == 0  # closed: the holder's bytes left the count


def test_a_feature_added_at_run_time_is_asked_from_then_on(make_broker) -> None:
    """A feature that does not count its bytes itself makes the broker call the plugin again."""
    m = Message("m", "x" * 200)
    one = size(m) + SLOT_BYTES
    holder = _Holder()
    holder.held = 3 * one
    config = Config(max_memory_usage=3 * one, disable_plugins=("test-holder",))
    broker = make_broker("memory", config=config, objects=[holder])
    assert not broker.has_plugin("test-holder")
    broker.subscribe("t")
    broker.publish("t", Message("a", "x" * 200))
    broker.update_config(broker.config.replace(disable_plugins=()))
    assert broker.has_plugin("test-holder")
    with pytest.raises(MemoryLimitExceededError):
        broker.publish("t", Message("refused", "x" * 200))


# -- consumers that count out without the lock ---------------------------------------------------


def _consume_until(sub: mqkit.Subscription, stop: threading.Event, got: list[str]) -> None:
    """Take messages (get, get_nowait and get_many in turn) until ``stop`` and drained."""
    takes = itertools.cycle(
        [
            lambda: [sub.get(timeout=0.01)],
            lambda: [sub.get_nowait()],
            lambda: sub.get_many(3, timeout=0.01),
        ]
    )
    while True:
        try:
            got.extend(m.id for m in next(takes)())
        except TimeoutError:
            if stop.is_set() and sub.queue_len == 0:
                return
        except mqkit.SubscriptionClosedError:
            return


def test_the_count_stays_exact_while_lock_free_consumers_race_toggles_and_cancels(
    make_broker,
) -> None:
    """A metered FIFO's consumers pop and count out without the lock (``Subscription._take``).

    Switching the limit off and on, and cancelling, move the buffer's messages to a new
    buffer while three consumer threads take from it and a publisher fills it: each message
    is taken once, counted out once, and what is left adds up to exactly what is held.
    """
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches inside the moves become likely
    try:
        on = Config(max_memory_usage=10**9)
        broker = make_broker("memory", config=on)
        room = SubOptions(buffer_size=100_000)  # nothing is dropped: every message is taken
        kept, raced = broker.subscribe("t", room), broker.subscribe("t", room)
        stop, published = threading.Event(), threading.Event()
        got: list[list[str]] = [[], [], []]
        threads = [
            threading.Thread(target=_consume_until, args=(raced, stop, got[i])) for i in range(3)
        ]
        count = 20_000

        def publish() -> None:
            for i in range(count):
                broker.publish("t", Message(f"m{i:05d}", "x" * (i % 50)))
            published.set()

        threads.append(threading.Thread(target=publish))
        for thread in threads:
            thread.start()
        toggles = 0
        while not published.is_set() or toggles < 20:
            # the limit off, then on again: every metered buffer moves, counted the new way
            broker.update_config(on.replace(max_memory_usage=0) if toggles % 2 == 0 else on)
            toggles += 1
        broker.update_config(on)
        raced.cancel()  # moved and counted out while the consumers still take from it
        stop.set()
        for thread in threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        taken = sorted(itertools.chain.from_iterable(got))
        assert taken == [f"m{i:05d}" for i in range(count)]  # once each, none lost
        assert broker.memory_usage() == buffered_bytes(broker) == kept.buffered_bytes
        assert len(drain_ids(kept)) == count
        assert broker.memory_usage() == 0
        assert broker.counted_bytes() == 0
    finally:
        sys.setswitchinterval(old_interval)
