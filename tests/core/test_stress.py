"""Concurrency under load: many publishers, thread and asyncio subscribers, churn."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

import mqkit
from mqkit.testing import make_broker as build_broker

PUBLISHERS = 4
PER_PUBLISHER = 10_000
TOTAL = PUBLISHERS * PER_PUBLISHER
WAIT = 60.0  # per get: only a hang would reach it

OPTIONS = {
    "big-buffer": mqkit.SubOptions(buffer_size=TOTAL),
    "block-with-timeout": mqkit.SubOptions(
        buffer_size=64, policy=mqkit.Backpressure.BLOCK_WITH_TIMEOUT, block_timeout=60
    ),
}


def check_stream(received: list[tuple[int, int]]) -> None:
    """Every message exactly once, and each publisher's messages in its order."""
    assert len(received) == TOTAL
    assert len(set(received)) == TOTAL
    per_publisher: dict[int, list[int]] = {p: [] for p in range(PUBLISHERS)}
    for publisher, seq in received:
        per_publisher[publisher].append(seq)
    for seqs in per_publisher.values():
        assert seqs == list(range(PER_PUBLISHER))


class Runner:
    """Runs functions on threads and re-raises the first failure in the test's thread."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, fn: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)
        if self.errors:
            raise self.errors[0]
        assert not any(t.is_alive() for t in self.threads), "a worker hung"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", list(OPTIONS))
def test_four_publishers_four_subscribers(mode: str) -> None:
    broker = build_broker()
    opts = OPTIONS[mode]
    thread_subs = [broker.subscribe("load", opts) for _ in range(3)]
    async_sub = broker.subscribe("load", opts)
    results: list[list[tuple[int, int]]] = [[] for _ in range(4)]
    go = threading.Barrier(PUBLISHERS + 4)
    runner = Runner()

    def thread_consumer(sub: mqkit.Subscription, out: list[tuple[int, int]]) -> None:
        go.wait(WAIT)
        for _ in range(TOTAL):
            out.append(sub.get(timeout=WAIT).data)

    def async_consumer() -> None:
        async def consume() -> None:
            go.wait(WAIT)  # the loop has nothing else to do yet
            out = results[3]
            while len(out) < TOTAL:
                out.append((await async_sub.aget(timeout=WAIT)).data)

        asyncio.run(consume())

    def publisher(p: int) -> None:
        go.wait(WAIT)
        for i in range(PER_PUBLISHER):
            broker.publish("load", mqkit.Message(f"{p}-{i}", (p, i)))

    for n, sub in enumerate(thread_subs):
        runner.start(lambda s=sub, o=results[n]: thread_consumer(s, o), f"consumer-{n}")
    runner.start(async_consumer, "async-consumer")
    for p in range(PUBLISHERS):
        runner.start(lambda p=p: publisher(p), f"publisher-{p}")
    try:
        runner.join(WAIT * 2)
    finally:
        broker.close()
    for out in results:
        check_stream(out)
    for sub in [*thread_subs, async_sub]:
        stats = sub.stats()
        assert (stats.received, stats.dropped, stats.queue_len) == (TOTAL, 0, 0)


@pytest.mark.timeout(120)
def test_subscribe_and_cancel_while_publishing() -> None:
    broker = build_broker()
    stop = threading.Event()
    churners, rounds = 4, 200
    runner = Runner()
    published = [0]

    def churn(n: int) -> None:
        for i in range(rounds):
            if (i + n) % 3 == 0:
                sub = broker.subscribe_pattern("churn.*")
            else:
                sub = broker.subscribe("churn.x")
            first = sub.get(timeout=WAIT)  # overlaps with the publisher for sure
            sub.cancel()
            rest = list(sub)
            seqs = [int(m.id) for m in [first, *rest]]
            assert seqs == sorted(seqs)
            assert all(m.topic == "churn.x" for m in rest)
            assert sub.stats().received == len(seqs) + sub.stats().dropped

    def publish() -> None:
        while not stop.is_set():
            broker.publish("churn.x", mqkit.Message(str(published[0])))
            published[0] += 1

    publisher = threading.Thread(target=publish, name="publisher")
    publisher.start()
    try:
        for n in range(churners):
            runner.start(lambda n=n: churn(n), f"churn-{n}")
        runner.join(WAIT)
    finally:
        stop.set()
        publisher.join(WAIT)
    assert not publisher.is_alive()
    assert published[0] >= rounds
    assert broker.topics() == []
    snap = broker.metrics()
    assert (snap.active_topics, snap.active_subscribers) == (0, 0)
    broker.close()


@pytest.mark.timeout(120)
def test_many_topics_many_publishers_exact_counts() -> None:
    broker = build_broker()
    topics = [f"t{i}" for i in range(20)]
    subs = {t: broker.subscribe(t, mqkit.SubOptions(buffer_size=10_000)) for t in topics}
    wildcard = broker.subscribe_pattern("t*", mqkit.SubOptions(buffer_size=10_000))
    per_thread, n_threads = 500, 4
    go = threading.Barrier(n_threads)
    runner = Runner()

    def publish(n: int) -> None:
        go.wait(WAIT)
        for i in range(per_thread):
            topic = topics[(i + n) % len(topics)]
            broker.publish(topic, mqkit.Message(f"{n}-{i}", (n, i)))

    for n in range(n_threads):
        runner.start(lambda n=n: publish(n), f"publisher-{n}")
    runner.join(WAIT)
    broker.close()
    total = sum(s.stats().received for s in subs.values())
    assert total == per_thread * n_threads
    everything = [m.data for m in wildcard]
    assert sorted(everything) == sorted((n, i) for n in range(n_threads) for i in range(per_thread))
    for n in range(n_threads):  # per-publisher order survives fan-in through the pattern
        assert [i for (p, i) in everything if p == n] == list(range(per_thread))
    for topic, sub in subs.items():
        for message in sub:
            assert message.topic == topic
