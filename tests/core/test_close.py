"""Close: idempotent; operations refused, queries answered; consumers and threads end."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import mqkit
from mqkit.testing import make_broker as build_broker

WAIT = 10.0


def mqkit_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("mqkit") and t.is_alive()}


def later() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


def test_close_is_idempotent(make_broker) -> None:
    broker = make_broker()
    broker.close()
    broker.close()
    broker.close()
    assert broker.closed


OPERATIONS: dict[str, Callable[[mqkit.Broker], Any]] = {
    "publish": lambda b: b.publish("t", mqkit.Message("m")),
    "publish_invalid": lambda b: b.publish("t", mqkit.Message("")),
    "publish_batch": lambda b: b.publish_batch("t", [mqkit.Message("m")]),
    "publish_batch_empty": lambda b: b.publish_batch("t", []),
    "publish_priority": lambda b: b.publish_priority("t", mqkit.PriorityMessage("m")),
    "publish_ttl": lambda b: b.publish_ttl("t", mqkit.TTLMessage("m", expires_at=later())),
    "publish_with_ack": lambda b: b.publish_with_ack("t", mqkit.AckMessage("m")),
    "publish_priority_ttl": lambda b: b.publish_priority_ttl(
        "t", mqkit.PriorityTTLMessage("m", expires_at=later())
    ),
    "publish_with_ack_ttl": lambda b: b.publish_with_ack_ttl(
        "t", mqkit.AckTTLMessage("m", expires_at=later())
    ),
    "subscribe": lambda b: b.subscribe("t"),
    "subscribe_batch": lambda b: b.subscribe_batch(["t", "u"]),
    "subscribe_pattern": lambda b: b.subscribe_pattern("t.*"),
    "subscribe_with_ack": lambda b: b.subscribe_with_ack("t"),
    "ack": lambda b: b.ack("t", "a"),
    "nack": lambda b: b.nack("t", "a"),
    "publish_with_transaction": lambda b: b.publish_with_transaction("t", mqkit.Message("m"), "x"),
    "commit_transaction": lambda b: b.commit_transaction("x"),
    "rollback_transaction": lambda b: b.rollback_transaction("x"),
    "transaction": lambda b: b.transaction().__enter__(),
    "publish_to_dead_letter": lambda b: b.publish_to_dead_letter("t", mqkit.Message("m"), "why"),
    "dead_letters": lambda b: b.dead_letters(),
    "replay_dead_letters": lambda b: b.replay_dead_letters(),
    "recover_messages": lambda b: b.recover_messages("t", 1),
    "replay_messages": lambda b: b.replay_messages("t", 1),
    "start_mqtt_server": lambda b: b.start_mqtt_server(),
    "start_amqp_server": lambda b: b.start_amqp_server(),
    "publish_to_cluster": lambda b: b.publish_to_cluster("t", mqkit.Message("m")),
    "subscribe_from_cluster": lambda b: b.subscribe_from_cluster("t"),
    "subscribe_from_cluster_filter": lambda b: b.subscribe_from_cluster_filter("t/+"),
    "subscribe_from_cluster_pattern": lambda b: b.subscribe_from_cluster_pattern("t.*"),
    "update_config": lambda b: b.update_config(b.config),
    "update_config_invalid": lambda b: b.update_config(b.config.replace(default_buffer_size=0)),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_every_operation_raises_broker_closed(make_broker, operation: str) -> None:
    broker = make_broker()
    broker.close()
    with pytest.raises(mqkit.BrokerClosedError):
        OPERATIONS[operation](broker)


def test_publish_to_a_cached_topic_after_close(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.Message("before"))  # the route is cached now
    broker.close()
    with pytest.raises(mqkit.BrokerClosedError):
        broker.publish("t", mqkit.Message("after"))
    assert [m.id for m in sub] == ["before"]


def test_subscription_ack_after_close(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.close()
    with pytest.raises(mqkit.BrokerClosedError):
        sub.ack("a")
    with pytest.raises(mqkit.BrokerClosedError):
        sub.nack("a")


def test_read_only_queries_keep_answering(make_broker) -> None:
    broker = make_broker(config=mqkit.Config(max_topics=9))
    broker.subscribe("a")
    broker.subscribe_pattern("b.*")
    broker.close()
    health = broker.health_check()
    assert health.status == "closed"
    assert health.total_topics == 0
    assert health.total_subscribers == 0
    snap = broker.metrics()
    assert (snap.active_topics, snap.active_subscribers) == (0, 0)
    assert broker.dead_letter_stats().enabled is False
    assert broker.memory_usage() == 0
    assert broker.config.max_topics == 9
    assert broker.closed is True
    assert broker.cluster_status().status == "disabled"
    assert broker.topics() == []


def test_cancel_after_close_is_harmless(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.close()
    assert sub.closed
    sub.cancel()
    sub.cancel()
    assert sub.closed


def test_iteration_ends_after_the_buffer_drains(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    pattern = broker.subscribe_pattern("t*")
    for i in range(3):
        broker.publish("t", mqkit.Message(str(i)))
    broker.close()
    assert sub.closed and pattern.closed
    assert [m.id for m in sub] == ["0", "1", "2"]
    assert [m.id for m in pattern] == ["0", "1", "2"]
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get(timeout=WAIT)
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get_nowait()


def test_async_iteration_ends_after_the_buffer_drains(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.Message("0"))
    broker.close()

    async def main() -> list[str]:
        out = [m.id async for m in sub]
        with pytest.raises(mqkit.SubscriptionClosedError):
            await sub.aget()
        return out

    assert asyncio.run(main()) == ["0"]


def test_blocked_thread_wakes_on_close(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    iterating = broker.subscribe("u")
    outcome: list[object] = []
    started = threading.Barrier(3)

    def blocked_get() -> None:
        started.wait(WAIT)
        try:
            sub.get()
        except mqkit.SubscriptionClosedError as exc:
            outcome.append(exc)

    def blocked_iteration() -> None:
        started.wait(WAIT)
        outcome.append(list(iterating))

    threads = [threading.Thread(target=blocked_get), threading.Thread(target=blocked_iteration)]
    for t in threads:
        t.start()
    started.wait(WAIT)
    broker.close()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert len(outcome) == 2
    assert any(isinstance(o, mqkit.SubscriptionClosedError) for o in outcome)
    assert [] in outcome


def test_blocked_async_task_wakes_on_close(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        getter = asyncio.create_task(sub.aget())
        out: list[str] = []

        async def iterate() -> None:
            async for message in sub:
                out.append(message.id)

        iterator = asyncio.create_task(iterate())
        await asyncio.sleep(0)  # both tasks are waiting now
        await loop.run_in_executor(None, broker.close)  # close from another thread
        with pytest.raises(mqkit.SubscriptionClosedError):
            await asyncio.wait_for(getter, WAIT)
        await asyncio.wait_for(iterator, WAIT)
        return out

    assert asyncio.run(main()) == []


def test_blocked_async_task_wakes_on_close_from_its_own_loop(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")

    async def main() -> None:
        getter = asyncio.create_task(sub.aget(timeout=WAIT))
        await asyncio.sleep(0)
        broker.close()
        with pytest.raises(mqkit.SubscriptionClosedError):
            await getter

    asyncio.run(main())


def test_blocked_publisher_is_released_by_close(make_broker) -> None:
    broker = make_broker()
    reached_put = threading.Event()

    def note(message: mqkit.Message) -> bool:
        if message.id == "m2":
            reached_put.set()
        return True

    opts = mqkit.SubOptions(
        buffer_size=1,
        policy=mqkit.Backpressure.BLOCK_WITH_TIMEOUT,
        block_timeout=60,
        filter=note,
    )
    sub = broker.subscribe("t", opts)
    broker.publish("t", mqkit.Message("m1"))
    errors: list[BaseException] = []

    def publisher() -> None:
        try:
            broker.publish("t", mqkit.Message("m2"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=publisher)
    thread.start()
    assert reached_put.wait(WAIT)
    broker.close()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert errors == []
    assert [m.id for m in sub] == ["m1"]


def test_no_mqkit_thread_survives_close() -> None:
    before = mqkit_threads()
    broker = build_broker()  # the real clock: timers run on a thread
    fired = threading.Event()
    broker.timers.call_later(0, fired.set)
    broker.timers.call_later(3600, lambda: None)  # still pending at close
    assert fired.wait(WAIT)
    assert mqkit_threads() - before, "the timer thread should be running"
    broker.subscribe("t")
    broker.close()
    assert mqkit_threads() - before == set()


def test_no_mqkit_thread_survives_close_of_a_default_broker() -> None:
    before = mqkit_threads()
    broker = mqkit.Broker()
    fired = threading.Event()
    broker.timers.call_later(0.001, fired.set)
    assert fired.wait(WAIT)
    with broker:
        broker.subscribe("t")
    assert mqkit_threads() - before == set()


def test_timers_scheduled_after_close_never_run() -> None:
    before = mqkit_threads()
    broker = build_broker()
    broker.close()
    ran = threading.Event()
    handle = broker.timers.call_later(0, ran.set)
    assert handle.cancelled
    assert broker.timers.pending == 0
    assert mqkit_threads() - before == set()  # no timer thread was started for it
    assert not ran.is_set()


def test_close_from_many_threads_at_once(make_broker) -> None:
    broker = make_broker()
    subs = [broker.subscribe(f"t{i}") for i in range(20)]
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def closer() -> None:
        try:
            start.wait(WAIT)
            broker.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=closer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert errors == []
    assert broker.closed
    assert all(s.closed for s in subs)
