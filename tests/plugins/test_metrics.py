"""The ``metrics`` plugin: exact counters in total and per topic, latency on the fake clock."""

from __future__ import annotations

import threading
from types import MappingProxyType

import pytest

import mqkit
from mqkit import (
    AckMessage,
    Backpressure,
    Config,
    Message,
    MetricsSnapshot,
    SubOptions,
    TopicMetrics,
    TTLMessage,
)
from mqkit.core.message import estimate_size
from mqkit.plugins.memory import SLOT_BYTES
from mqkit.testing import FakeClock

from .helpers import DLQ, drain, in_


def test_counts_published_and_delivered(make_broker) -> None:
    broker = make_broker("metrics")
    a, b = broker.subscribe("t"), broker.subscribe("t")
    broker.publish("t", Message("m1"))
    broker.publish_batch("t", [Message("m2"), Message("m3")])
    broker.publish("nobody", Message("m4"))  # routed to no one: still published
    drain(a)
    metrics = broker.metrics()
    assert metrics.topics["t"] == TopicMetrics(published=3, delivered=3, subscribers=2)
    assert metrics.topics["nobody"] == TopicMetrics(published=1)
    assert (metrics.total_published, metrics.total_delivered) == (4, 3)
    drain(b)
    assert broker.metrics().total_delivered == 6


@pytest.mark.parametrize("policy", list(Backpressure))
def test_every_backpressure_policy_counts_as_dropped(make_broker, policy: Backpressure) -> None:
    broker = make_broker("metrics")
    broker.subscribe("t", SubOptions(buffer_size=1, policy=policy, block_timeout=0.0))
    broker.publish("t", Message("m1"))
    broker.publish("t", Message("m2"))
    metrics = broker.metrics()
    assert (metrics.total_dropped, metrics.topics["t"].dropped) == (1, 1)
    assert metrics.total_published == 2


def test_filtered_messages_are_not_dropped(make_broker) -> None:
    broker = make_broker("metrics")
    broker.subscribe("t", SubOptions(filter=lambda m: m.id != "skip"))
    broker.publish("t", Message("skip"))
    assert broker.metrics().total_dropped == 0


def test_errors_and_last_error(make_broker) -> None:
    broker = make_broker("metrics", "ack", "transactions")
    with pytest.raises(mqkit.InvalidMessageError):
        broker.publish("t", Message(""))
    with pytest.raises(mqkit.AckNotFoundError):
        broker.ack("t", "nope")
    with pytest.raises(mqkit.TransactionNotFoundError) as last:
        broker.commit_transaction("nope")
    metrics = broker.metrics()
    assert metrics.total_errors == 3
    assert metrics.topics["t"].errors == 2
    assert "" not in metrics.topics  # errors of no topic count in the total only
    assert metrics.last_error == str(last.value)
    assert metrics.total_published == 0


def test_latency_on_the_fake_clock(make_broker, fake_clock: FakeClock) -> None:
    broker = make_broker("metrics")
    sub = broker.subscribe("t")
    for wait in (1.0, 2.0, 6.0):
        broker.publish("t", Message("m"))
        fake_clock.advance(wait)
        sub.get_nowait()
    metrics = broker.metrics()
    assert metrics.average_latency == pytest.approx(3.0)
    assert metrics.p50_latency == pytest.approx(2.0)
    assert metrics.p99_latency == pytest.approx(6.0)
    assert metrics.max_latency == pytest.approx(6.0)


def test_no_deliveries_no_latency(make_broker) -> None:
    broker = make_broker("metrics")
    metrics = broker.metrics()
    assert metrics == MetricsSnapshot()


def test_metrics_off_counts_nothing_but_gauges(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.subscribe_pattern("t.*")
    broker.publish("t", Message("m"))
    sub.get_nowait()
    assert broker.metrics() == MetricsSnapshot(active_topics=2, active_subscribers=2)
    assert broker.health_check().metrics is None


def test_health_check_carries_the_metrics(make_broker) -> None:
    broker = make_broker("metrics")
    broker.subscribe("t")
    broker.publish("t", Message("m"))
    assert broker.health_check().metrics == broker.metrics()


# -- the scripted scenario -------------------------------------------------------------------------


def test_scripted_scenario_gives_exact_metrics(make_broker, fake_clock: FakeClock) -> None:
    broker = make_broker(
        "priority",
        "ttl",
        "ack",
        "deadletter",
        "memory",
        "metrics",
        config=Config(
            dead_letter_topic=DLQ,
            default_ack_timeout=10,
            max_ack_retries=1,
            max_memory_usage=5000,
        ),
    )
    orders = broker.subscribe("orders", SubOptions(buffer_size=2))
    payments = broker.subscribe("payments")
    dlq = broker.subscribe(DLQ)

    # t=0: three orders into a buffer of two (o1 is dropped); p1 expires while buffered
    for name in ("o1", "o2", "o3"):
        broker.publish("orders", Message(name))
    broker.publish_ttl("payments", TTLMessage("p1", expires_at=in_(fake_clock, 0.5)))
    broker.publish("payments", Message("p2"))
    fake_clock.advance(1)  # t=1: the sweep expires p1 and dead-letters it
    assert [m.id for m in drain(orders)] == ["o2", "o3"]  # latency 1 s each
    assert [m.id for m in drain(payments)] == ["p2"]  # latency 1 s

    # t=1: an acked message, and a nacked one that then misses its deadline
    broker.publish_with_ack("payments", AckMessage("a1", ack_id="A1"))
    assert payments.get_nowait().id == "a1"  # latency 0
    payments.ack("A1")
    broker.publish_with_ack("payments", AckMessage("a2", ack_id="A2"))
    assert payments.get_nowait().attempt == 1  # latency 0
    payments.nack("A2")
    assert payments.get_nowait().attempt == 2  # redelivered; latency 0 (published at t=1)
    fake_clock.advance(10)  # t=11: deadline missed, retries exhausted: dead-lettered

    # rejected publishes: over the memory limit; already expired
    with pytest.raises(mqkit.MemoryLimitExceededError):
        broker.publish("orders", Message("huge", "x" * 10_000))
    with pytest.raises(mqkit.MessageExpiredError) as last:
        broker.publish_ttl("payments", TTLMessage("stale", expires_at=fake_clock.now()))

    # the two dead letters: p1's copy published at t=1 (latency 10 s), a2's at t=11 (0 s)
    copies = drain(dlq)
    assert [(c.id, c.meta["x-dead-letter-reason"]) for c in copies] == [
        ("p1", "expired"),
        ("a2", "ack timeout after 2 attempts"),
    ]

    assert broker.metrics() == MetricsSnapshot(
        total_published=9,
        total_delivered=8,
        total_dropped=1,
        total_expired=1,
        total_acked=1,
        total_nacked=1,
        total_redelivered=1,
        total_dead_lettered=2,
        total_errors=2,
        active_topics=3,
        active_subscribers=3,
        average_latency=13 / 8,
        p50_latency=1.0,
        p99_latency=10.0,
        max_latency=10.0,
        last_error=str(last.value),
        topics=MappingProxyType(
            {
                DLQ: TopicMetrics(published=2, delivered=2, subscribers=1),
                "orders": TopicMetrics(
                    published=3, delivered=2, dropped=1, errors=1, subscribers=1
                ),
                "payments": TopicMetrics(
                    published=4,
                    delivered=4,
                    expired=1,
                    acked=1,
                    nacked=1,
                    redelivered=1,
                    dead_lettered=2,
                    errors=1,
                    subscribers=1,
                ),
            }
        ),
    )
    assert broker.dead_letter_stats().total_messages == 2


# -- threads come and go (issue 13, point 13) ------------------------------------------------------


@pytest.mark.parametrize("wave", [1, 25], ids=["one-at-a-time", "25-at-a-time"])
def test_finished_threads_leave_no_shards_behind(make_broker, wave: int) -> None:
    # Like `mqkit serve`'s HTTP handler: a thread per request, each publishing once. What a
    # thread counted is kept when it ends; its per-thread counters are not.
    broker = make_broker("metrics", "memory", config=Config(max_memory_usage=10**7))
    sub, other = broker.subscribe("t"), broker.subscribe("u")
    threads_run = 1000

    def request(i: int) -> None:
        broker.publish("t", Message(f"m{i}", "x" * (i % 50)))
        broker.publish("u", Message(f"n{i}"))
        sub.get_nowait()

    for first in range(0, threads_run, wave):
        threads = [threading.Thread(target=request, args=(i,)) for i in range(first, first + wave)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    metrics = broker.metrics()
    assert (metrics.total_published, metrics.total_delivered) == (2 * threads_run, threads_run)
    assert metrics.topics["t"] == TopicMetrics(
        published=threads_run, delivered=threads_run, subscribers=1
    )
    assert metrics.max_latency == 0.0 and metrics.average_latency == 0.0  # the fake clock stands
    assert broker.memory_usage() == sum(estimate_size(m) + SLOT_BYTES for m in other.buffered())
    live = threading.active_count()
    plugin = broker.get_plugin("metrics")
    assert len(plugin.shards) <= live + 1  # + the finished threads' total


def test_sampled_latency_stays_within_a_few_percent_on_a_steady_stream(
    make_broker, fake_clock: FakeClock
) -> None:
    """Latency is sampled (all of a subscription's first 64 hand-outs, then 1 in 64): on a
    steady stream the mean and p99 stay within a few percent of the exact figures."""
    broker = make_broker("metrics")
    sub = broker.subscribe("t", SubOptions(buffer_size=100))
    exact: list[float] = []
    for i in range(20_000):
        broker.publish("t", Message(str(i)))
        latency = 0.001 * (1 + (i * 7919) % 100)  # 1..100 ms, evenly spread
        fake_clock.advance(latency)
        sub.get_nowait()
        exact.append(latency)
    metrics = broker.metrics()
    ordered = sorted(exact)
    assert metrics.total_delivered == 20_000
    assert metrics.average_latency == pytest.approx(sum(exact) / len(exact), rel=0.03)
    assert metrics.p99_latency == pytest.approx(ordered[int(0.99 * len(ordered))], rel=0.03)
    assert metrics.max_latency == pytest.approx(max(exact), rel=0.03)  # sampled too


def test_a_pattern_subscription_counts_under_each_message_topic(make_broker) -> None:
    """A pattern's hand-outs count under each message's topic, its drops under its key."""
    broker = make_broker("metrics")
    everything = broker.subscribe_pattern("t.*", SubOptions(buffer_size=1))
    exact = broker.subscribe("t.a", SubOptions(buffer_size=1))
    broker.publish("t.a", Message("1"))
    broker.publish("t.b", Message("2"))  # the pattern's buffer of one drops "1"
    drain(everything)
    drain(exact)
    metrics = broker.metrics()
    assert metrics.topics["t.a"] == TopicMetrics(published=1, delivered=1, subscribers=1)
    assert metrics.topics["t.b"] == TopicMetrics(published=1, delivered=1)
    assert metrics.topics["t.*"] == TopicMetrics(dropped=1, subscribers=1)
    assert (metrics.total_delivered, metrics.total_dropped) == (2, 1)
    exact.cancel()
    everything.cancel()
    assert broker.metrics().topics["t.a"] == TopicMetrics(published=1, delivered=1)
    assert broker.metrics().topics["t.*"] == TopicMetrics(dropped=1)
