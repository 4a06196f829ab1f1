"""The ``ttl`` plugin: expiry at publish, at delivery, and by the sweep of unread buffers."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import ClassVar

import attrs
import pytest

import mqkit
from mqkit import (
    AckMessage,
    AckTTLMessage,
    Config,
    InvalidMessageError,
    Message,
    MessageExpiredError,
    Priority,
    PriorityMessage,
    PriorityTTLMessage,
    SubOptions,
    TTLMessage,
)
from mqkit.testing import FakeClock

from .helpers import DLQ, dead_letter_summary, drain, drain_ids, drops, in_

DLQ_ON = Config(dead_letter_topic=DLQ)


def test_ttl_plugin_loads_by_default() -> None:
    with mqkit.Broker() as broker:
        assert broker.has_plugin("ttl")


# -- at publish ------------------------------------------------------------------------------------

ExpiredPublish = Callable[[mqkit.Broker, datetime], None]

EXPIRED_PATHS: dict[str, ExpiredPublish] = {
    "publish": lambda b, at: b.publish("t", TTLMessage("old", expires_at=at)),
    "publish_ttl": lambda b, at: b.publish_ttl("t", TTLMessage("old", expires_at=at)),
    "publish_priority_ttl": lambda b, at: b.publish_priority_ttl(
        "t", PriorityTTLMessage("old", priority=40, expires_at=at)
    ),
    "publish_with_ack_ttl": lambda b, at: b.publish_with_ack_ttl(
        "t", AckTTLMessage("old", expires_at=at)
    ),
    "publish_batch": lambda b, at: b.publish_batch(
        "t", [Message("fine"), TTLMessage("old", expires_at=at)]
    ),
}


@pytest.mark.parametrize("path", sorted(EXPIRED_PATHS))
@pytest.mark.parametrize("ago", [0.0, 1.0, 3600.0])
def test_already_expired_message_is_refused_at_publish(
    make_broker, fake_clock: FakeClock, path: str, ago: float
) -> None:
    broker = make_broker("ttl", "priority", "ack", "metrics")
    sub = broker.subscribe("t")
    with pytest.raises(MessageExpiredError, match="mq: message has expired"):
        EXPIRED_PATHS[path](broker, in_(fake_clock, -ago))
    assert sub.stats().queue_len == 0
    metrics = broker.metrics()
    assert (metrics.total_published, metrics.total_errors) == (0, 1)
    assert metrics.last_error.startswith("mq: message has expired")


def test_message_expiring_a_moment_later_is_accepted(make_broker, fake_clock: FakeClock) -> None:
    broker = make_broker("ttl")
    sub = broker.subscribe("t")
    broker.publish_ttl("t", TTLMessage("fresh", expires_at=in_(fake_clock, 0.001)))
    got = sub.get_nowait()
    assert type(got) is TTLMessage
    assert got.expires_at == in_(fake_clock, 0.001)


@pytest.mark.parametrize("entry", ["publish", "publish_ttl"])
def test_naive_expiry_is_an_invalid_message(make_broker, entry: str) -> None:
    broker = make_broker("ttl", "metrics")
    sub = broker.subscribe("t")
    msg = TTLMessage("naive", expires_at=datetime(2030, 1, 1))  # naive on purpose
    with pytest.raises(InvalidMessageError, match="timezone-aware"):
        getattr(broker, entry)("t", msg)
    assert sub.stats().queue_len == 0
    assert broker.metrics().total_errors == 1


def test_publish_ttl_needs_a_ttl_message(make_broker) -> None:
    broker = make_broker("ttl")
    with pytest.raises(InvalidMessageError):
        broker.publish_ttl("t", Message("plain"))  # type: ignore[arg-type]


# -- at delivery -----------------------------------------------------------------------------------


def publish_short_lived(broker: mqkit.Broker, clock: FakeClock) -> None:
    """Publish 'short' (expires in 0.5 s) then 'plain' to topic t."""
    broker.publish_ttl("t", TTLMessage("short", {"k": 1}, expires_at=in_(clock, 0.5)))
    broker.publish("t", Message("plain"))


def test_message_expiring_in_the_buffer_is_never_handed_out(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker("ttl", "metrics", objects=[hook_recorder])
    sub = broker.subscribe("t")
    publish_short_lived(broker, fake_clock)
    fake_clock.advance(0.6)  # expired; the first sweep (1 s after the publish) has not run
    assert sub.stats().queue_len == 2
    assert sub.get_nowait().id == "plain"
    with pytest.raises(TimeoutError):
        sub.get_nowait()
    expires = hook_recorder.of("mqkit_expire")
    assert [(c.topic, c.message.id) for c in expires] == [("t", "short")]
    assert drops(hook_recorder) == [("short", "withheld")]
    metrics = broker.metrics()
    assert metrics.total_expired == 1
    assert metrics.total_delivered == 1
    assert metrics.total_dropped == 0  # expired is not a policy drop
    assert metrics.topics["t"].expired == 1


def test_message_expiring_exactly_now_is_not_handed_out(make_broker, fake_clock) -> None:
    broker = make_broker("ttl")
    sub = broker.subscribe("t")
    broker.publish_ttl("t", TTLMessage("edge", expires_at=in_(fake_clock, 0.5)))
    fake_clock.advance(0.5)
    with pytest.raises(TimeoutError):
        sub.get_nowait()


def test_a_waiting_consumer_skips_the_expired_message(make_broker, fake_clock) -> None:
    broker = make_broker("ttl")
    sub = broker.subscribe("t")
    publish_short_lived(broker, fake_clock)
    fake_clock.advance(0.6)
    assert sub.get(timeout=5).id == "plain"


def test_only_the_unread_copy_expires(make_broker, fake_clock, hook_recorder) -> None:
    broker = make_broker("ttl", "metrics", objects=[hook_recorder])
    fast, slow = broker.subscribe("t"), broker.subscribe("t")
    broker.publish_ttl("t", TTLMessage("short", expires_at=in_(fake_clock, 0.5)))
    assert fast.get_nowait().id == "short"
    fake_clock.advance(0.6)
    assert drain(slow) == []
    assert len(hook_recorder.of("mqkit_expire")) == 1
    assert broker.metrics().topics["t"].expired == 1
    assert broker.metrics().topics["t"].delivered == 1


def test_expired_message_is_dead_lettered_when_the_dlq_is_on(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker("ttl", "deadletter", "metrics", config=DLQ_ON, objects=[hook_recorder])
    sub = broker.subscribe("t")
    dlq = broker.subscribe(DLQ)
    publish_short_lived(broker, fake_clock)
    fake_clock.advance(0.6)
    assert drain_ids(sub) == ["plain"]
    assert [(d[0], d[1], d[2]) for d in dead_letter_summary(broker)] == [("short", "t", "expired")]
    copy = dlq.get_nowait()
    assert type(copy) is Message  # expiry is not carried over: the copy reaches the DLQ topic
    assert (copy.id, copy.data, copy.topic) == ("short", {"k": 1}, DLQ)
    assert copy.meta["x-original-topic"] == "t"
    assert copy.meta["x-dead-letter-reason"] == "expired"
    dead = hook_recorder.of("mqkit_dead_letter")
    assert [(c.topic, c.message.id, c.reason) for c in dead] == [("t", "short", "expired")]
    metrics = broker.metrics()
    assert (metrics.total_expired, metrics.topics["t"].dead_lettered) == (1, 1)


def test_expired_message_is_not_dead_lettered_when_the_dlq_is_off(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker("ttl", "metrics", objects=[hook_recorder])
    sub = broker.subscribe("t")
    publish_short_lived(broker, fake_clock)
    fake_clock.advance(0.6)
    assert drain_ids(sub) == ["plain"]
    assert len(hook_recorder.of("mqkit_expire")) == 1
    assert hook_recorder.of("mqkit_dead_letter") == []
    assert broker.dead_letter_stats() == mqkit.DeadLetterStats(enabled=False, dropped=0)
    health = broker.health_check()
    assert (health.status, health.problems) == ("healthy", ())
    assert broker.metrics().total_expired == 1
    assert broker.metrics().total_dead_lettered == 0


# -- the default TTL -------------------------------------------------------------------------------


def test_message_ttl_gives_messages_without_expiry_a_default(make_broker, fake_clock) -> None:
    broker = make_broker("ttl", "metrics", config=Config(message_ttl=10))
    sub = broker.subscribe("t")
    broker.publish("t", Message("in-time"))
    fake_clock.advance(9.5)
    assert sub.get_nowait().id == "in-time"
    broker.publish("t", Message("too-late"))
    fake_clock.advance(10)
    assert drain(sub) == []
    assert broker.metrics().total_expired == 1


def test_async_consumers_never_see_a_message_expiring_in_the_buffer(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker("ttl", "metrics", objects=[hook_recorder])
    sub = broker.subscribe("t")
    publish_short_lived(broker, fake_clock)
    fake_clock.advance(0.6)

    async def consume() -> tuple[str, list[str]]:
        first = await sub.aget(timeout=0)  # aget skips the expired one
        publish_short_lived(broker, fake_clock)
        fake_clock.advance(0.6)
        sub.cancel()  # async for drains what is buffered, then ends
        return first.id, [m.id async for m in sub]

    assert asyncio.run(consume()) == ("plain", ["plain"])
    assert drops(hook_recorder) == [("short", "withheld"), ("short", "withheld")]
    assert broker.metrics().total_expired == 2


def test_default_ttl_is_checked_at_delivery(make_broker, fake_clock, hook_recorder) -> None:
    broker = make_broker("ttl", config=Config(message_ttl=0.5), objects=[hook_recorder])
    sub = broker.subscribe("t")
    broker.publish("t", Message("m"))
    fake_clock.advance(0.6)  # the sweep runs every second: not yet
    assert sub.stats().queue_len == 1
    assert drain(sub) == []
    assert [c.message.id for c in hook_recorder.of("mqkit_expire")] == ["m"]


def test_default_ttl_switched_on_at_run_time_applies_to_plain_messages(
    make_broker, fake_clock
) -> None:
    # Without a default TTL the plugin's hooks skip plain messages; with one, they must not.
    broker = make_broker("ttl")
    sub = broker.subscribe("t")
    broker.publish("t", Message("before"))
    fake_clock.advance(3600)
    assert drain_ids(sub) == ["before"]
    broker.update_config(attrs.evolve(broker.config, message_ttl=0.5))
    broker.publish("t", Message("after"))
    fake_clock.advance(0.6)
    assert drain(sub) == []
    broker.update_config(attrs.evolve(broker.config, message_ttl=0))
    broker.publish("t", Message("again"))
    fake_clock.advance(3600)
    assert drain_ids(sub) == ["again"]


def test_own_expiry_wins_over_the_default(make_broker, fake_clock) -> None:
    broker = make_broker("ttl", config=Config(message_ttl=1))
    sub = broker.subscribe("t")
    broker.publish("t", TTLMessage("long", expires_at=in_(fake_clock, 100)))
    broker.publish("t", TTLMessage("short", expires_at=in_(fake_clock, 0.2)))
    fake_clock.advance(5)
    assert drain_ids(sub) == ["long"]


def test_no_default_ttl_means_messages_never_expire(make_broker, fake_clock) -> None:
    broker = make_broker("ttl")
    sub = broker.subscribe("t")
    broker.publish("t", Message("forever"))
    fake_clock.advance(timedelta(days=365))
    assert drain_ids(sub) == ["forever"]


# -- the sweep -------------------------------------------------------------------------------------


def test_sweep_removes_expired_messages_from_unread_buffers(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker(
        "ttl",
        "memory",
        "metrics",
        config=Config(max_memory_usage=1_000_000),
        objects=[hook_recorder],
    )
    sub = broker.subscribe("t")
    other = broker.subscribe("t")
    broker.publish_ttl("t", TTLMessage("short", "x" * 500, expires_at=in_(fake_clock, 0.5)))
    broker.publish_ttl("t", TTLMessage("long", expires_at=in_(fake_clock, 60)))
    with_long_only = broker.memory_usage()
    fake_clock.advance(0.9)
    assert sub.stats().queue_len == 2  # nothing swept before the first second
    fake_clock.advance(0.2)  # past 1 s: the sweep has run, nobody called get()
    assert sub.stats().queue_len == 1
    assert other.stats().queue_len == 1
    assert len(hook_recorder.of("mqkit_expire")) == 2  # one per unread copy
    assert broker.metrics().total_expired == 2
    assert broker.memory_usage() < with_long_only
    assert drain_ids(sub) == ["long"]
    assert drain_ids(other) == ["long"]
    assert broker.memory_usage() == 0


def test_sweep_keeps_running(make_broker, fake_clock: FakeClock) -> None:
    broker = make_broker("ttl", "metrics")
    sub = broker.subscribe("t")
    broker.publish_ttl("t", TTLMessage("first", expires_at=in_(fake_clock, 0.5)))
    fake_clock.advance(1.1)
    broker.publish_ttl("t", TTLMessage("second", expires_at=in_(fake_clock, 3)))
    fake_clock.advance(3.5)  # sweeps at 2, 3 and 4 s; "second" expires at 4.1 s
    assert sub.stats().queue_len == 1
    fake_clock.advance(0.5)  # the sweep at 5 s
    assert sub.stats().queue_len == 0
    assert broker.metrics().total_expired == 2


def test_sweep_dead_letters_with_the_dlq_on(make_broker, fake_clock: FakeClock) -> None:
    broker = make_broker("ttl", "deadletter", config=DLQ_ON.replace(message_ttl=2))
    broker.subscribe("t")
    broker.publish("t", Message("a"))
    broker.publish("t", Message("b"))
    fake_clock.advance(2)
    assert [d[:3] for d in dead_letter_summary(broker)] == [
        ("a", "t", "expired"),
        ("b", "t", "expired"),
    ]


# -- the sweep's work: proportional to what expires ------------------------------------------------


class LookedAt(datetime):
    """An instant that counts how often it is compared or converted: the work spent on it."""

    looks: ClassVar[list[int]] = [0]

    def _look(self) -> None:
        self.looks[0] += 1

    def __lt__(self, other: object) -> bool:
        self._look()
        return super().__lt__(other)  # type: ignore[operator]

    def __le__(self, other: object) -> bool:
        self._look()
        return super().__le__(other)  # type: ignore[operator]

    def __gt__(self, other: object) -> bool:
        self._look()
        return super().__gt__(other)  # type: ignore[operator]

    def __ge__(self, other: object) -> bool:
        self._look()
        return super().__ge__(other)  # type: ignore[operator]

    def timestamp(self) -> float:
        self._look()
        return super().timestamp()

    @classmethod
    def of(cls, instant: datetime) -> LookedAt:
        return cls.fromtimestamp(instant.timestamp(), instant.tzinfo)


@pytest.mark.parametrize(
    "plugins",
    [
        ("ttl", "metrics"),
        ("ttl", "metrics", "priority"),
    ],
    ids=["fifo", "priority"],
)
def test_sweep_work_is_proportional_to_what_expires(
    make_broker, fake_clock: FakeClock, plugins: tuple[str, ...]
) -> None:
    broker = make_broker(*plugins)
    subs = [broker.subscribe("t", SubOptions(buffer_size=200_000)) for _ in range(2)]
    for i in range(10):  # the 10 that expire, first in line
        at = LookedAt.of(in_(fake_clock, 1.5 + i / 1000))
        broker.publish("t", PriorityTTLMessage(f"soon-{i}", priority=i % 3, expires_at=at))
    later = LookedAt.of(in_(fake_clock, 3600))
    for i in range(100_000):
        broker.publish("t", PriorityTTLMessage(f"later-{i}", priority=i % 3, expires_at=later))
    LookedAt.looks[0] = 0
    fake_clock.advance(2)  # two sweeps: at 1 s (nothing expired) and at 2 s (the 10)
    assert broker.metrics().total_expired == 20  # 10 per subscription
    assert [s.stats().queue_len for s in subs] == [100_000, 100_000]
    # Each sweep looks at each run's front and at what it takes: about 2 * 3 + 10 per
    # subscription and sweep here; a walk of the buffers would be 400,000 looks.
    assert LookedAt.looks[0] <= 2 * 2 * (3 * 2 + 10)
    first = [subs[0].get_nowait().id for _ in range(3)]
    ordered = "priority" in plugins
    assert first == (
        ["later-2", "later-5", "later-8"] if ordered else ["later-0", "later-1", "later-2"]
    )


def test_sweep_takes_expired_fronts_and_keeps_the_rest_in_order(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker("ttl", "metrics", config=Config(message_ttl=10), objects=[hook_recorder])
    sub = broker.subscribe("t", SubOptions(buffer_size=100))
    for i in range(5):
        broker.publish("t", Message(f"old-{i}"))
    fake_clock.advance(5)
    for i in range(5):
        broker.publish("t", Message(f"new-{i}"))
    fake_clock.advance(5.5)  # the sweep at 10 s: the old ones expired, nobody read them
    assert sub.stats().queue_len == 5
    assert [c.message.id for c in hook_recorder.of("mqkit_expire")] == [
        f"old-{i}" for i in range(5)
    ]
    assert drops(hook_recorder) == [(f"old-{i}", "withheld") for i in range(5)]
    assert drain_ids(sub) == [f"new-{i}" for i in range(5)]


def test_sweep_takes_expired_messages_from_every_priority_level(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker(
        "ttl", "priority", "metrics", config=Config(message_ttl=10), objects=[hook_recorder]
    )
    sub = broker.subscribe("t", SubOptions(buffer_size=100))
    levels = [Priority.LOW, Priority.HIGHEST, Priority.NORMAL]
    for i in range(6):
        broker.publish("t", PriorityMessage(f"old-{i}", priority=levels[i % 3]))
    fake_clock.advance(5)
    for i in range(6):
        broker.publish("t", PriorityMessage(f"new-{i}", priority=levels[i % 3]))
    fake_clock.advance(5.5)
    assert sub.stats().queue_len == 6
    assert sorted(c.message.id for c in hook_recorder.of("mqkit_expire")) == [
        f"old-{i}" for i in range(6)
    ]
    assert drain_ids(sub) == ["new-1", "new-4", "new-2", "new-5", "new-0", "new-3"]


def test_own_expiries_out_of_order_are_freed_once_at_the_front(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker("ttl", "metrics", objects=[hook_recorder])
    sub = broker.subscribe("t")
    broker.publish_ttl("t", TTLMessage("later", expires_at=in_(fake_clock, 4.5)))
    broker.publish_ttl("t", TTLMessage("sooner", expires_at=in_(fake_clock, 0.5)))
    broker.publish_ttl("t", TTLMessage("soonest", expires_at=in_(fake_clock, 0.2)))
    # Expired behind a live message, the sooner ones may wait for the front (never handed out
    # meanwhile); once "later" expired too, nobody reading, a sweep has freed all three.
    fake_clock.advance(5)
    assert sub.stats().queue_len == 0
    expired = sorted(c.message.id for c in hook_recorder.of("mqkit_expire"))
    assert expired == ["later", "sooner", "soonest"]  # each reported once
    assert broker.metrics().total_expired == 3


def test_own_expiry_behind_a_live_one_is_withheld_from_its_consumer(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    broker = make_broker("ttl", objects=[hook_recorder])
    sub = broker.subscribe("t")
    broker.publish_ttl("t", TTLMessage("later", expires_at=in_(fake_clock, 60)))
    broker.publish_ttl("t", TTLMessage("sooner", expires_at=in_(fake_clock, 0.5)))
    broker.publish("t", Message("plain"))
    fake_clock.advance(3)
    assert drain_ids(sub) == ["later", "plain"]
    assert [c.message.id for c in hook_recorder.of("mqkit_expire")] == ["sooner"]


def test_sweep_takes_redelivered_messages_that_expired(make_broker, fake_clock: FakeClock) -> None:
    broker = make_broker("ttl", "ack", "metrics", config=Config(message_ttl=10))
    sub = broker.subscribe("t", SubOptions(buffer_size=100))
    broker.publish_with_ack("t", AckMessage("first"))
    fake_clock.advance(3)
    broker.publish_with_ack("t", AckMessage("second"))
    broker.publish_with_ack("t", AckMessage("third"))
    first, second = sub.get_nowait(), sub.get_nowait()
    sub.nack(first.ack_id)  # redelivered at the front, keeping its publish time
    sub.nack(second.ack_id)  # now ahead of "first": expiries out of order at the front
    fake_clock.advance(10.5)  # past 13 s: all three expired; nobody read them, a sweep took them
    assert sub.stats().queue_len == 0
    assert broker.metrics().total_expired == 3
    assert broker.metrics().topics["t"].redelivered == 2


def test_sweep_while_consumers_pop_loses_and_duplicates_nothing(
    make_broker, fake_clock: FakeClock, hook_recorder
) -> None:
    n = 30_000
    broker = make_broker("ttl", objects=[hook_recorder])
    sub = broker.subscribe("t", SubOptions(buffer_size=n))
    for i in range(n):  # expiries spread over 10 s, in publish order
        broker.publish_ttl("t", TTLMessage(str(i), expires_at=in_(fake_clock, 0.5 + i / 3000)))
    got: list[list[str]] = [[], []]
    errors: list[BaseException] = []
    done = threading.Event()

    def consume(out: list[str]) -> None:
        try:
            while not done.is_set() or sub.stats().queue_len:
                with contextlib.suppress(TimeoutError):
                    out.append(sub.get_nowait().id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches inside the sweep become likely
    threads = [threading.Thread(target=consume, args=(out,)) for out in got]
    try:
        for t in threads:
            t.start()
        for _ in range(11):
            fake_clock.advance(1)  # a sweep each second, in this thread, while they pop
        done.set()
        for t in threads:
            t.join(10)
    finally:
        sys.setswitchinterval(old_interval)
    assert errors == []
    assert not any(t.is_alive() for t in threads)
    expired = [c.message.id for c in hook_recorder.of("mqkit_expire")]
    delivered = got[0] + got[1]
    assert len(delivered) + len(expired) == n
    assert sorted(map(int, delivered + expired)) == list(range(n))


def test_sweep_keeps_the_counters_and_the_memory_count_exact(make_broker, fake_clock) -> None:
    """What the sweep takes leaves the buffer's counters and the metered bytes too."""
    broker = make_broker(
        "ttl", "memory", "metrics", config=Config(message_ttl=1, max_memory_usage=1 << 20)
    )
    sub = broker.subscribe("t")
    for i in range(5):
        broker.publish("t", Message(str(i), "x" * 100))
    assert broker.memory_usage() > 500
    fake_clock.advance(2)  # the sweep runs: all five expired
    stats = sub.stats()
    assert (stats.received, stats.queue_len, stats.delivered) == (5, 0, 0)
    assert broker.memory_usage() == 0
    assert broker.metrics().total_expired == 5
