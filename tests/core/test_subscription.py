"""Subscriptions: get, get_nowait, iteration, aget, async for, cancel, stats, filters."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

import mqkit

WAIT = 10.0  # generous upper bound for anything that must happen "soon"


def ids(messages: list[mqkit.Message]) -> list[str]:
    return [m.id for m in messages]


# -- get / get_nowait ------------------------------------------------------------------------------


def test_get_returns_buffered_messages_in_order(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    for i in range(3):
        broker.publish("t", mqkit.Message(str(i)))
    assert [sub.get().id, sub.get(timeout=1).id, sub.get_nowait().id] == ["0", "1", "2"]


def test_get_waits_for_a_message_from_another_thread(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    waiting = threading.Event()
    got: list[mqkit.Message] = []

    def consume() -> None:
        waiting.set()
        got.append(sub.get(timeout=WAIT))

    thread = threading.Thread(target=consume)
    thread.start()
    assert waiting.wait(WAIT)
    broker.publish("t", mqkit.Message("late"))
    thread.join(WAIT)
    assert not thread.is_alive()
    assert ids(got) == ["late"]


def test_competing_consumers_each_message_once(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=1000))
    n, consumers = 600, 3
    results: list[list[str]] = [[] for _ in range(consumers)]
    start = threading.Barrier(consumers + 1)

    def consume(out: list[str]) -> None:
        start.wait(WAIT)
        for message in sub:
            out.append(message.id)

    threads = [threading.Thread(target=consume, args=(r,)) for r in results]
    for t in threads:
        t.start()
    start.wait(WAIT)
    for i in range(n):
        broker.publish("t", mqkit.Message(str(i)))
    sub.cancel()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    everything = [m for r in results for m in r]
    assert sorted(everything, key=int) == [str(i) for i in range(n)]
    for r in results:  # each consumer sees its share in publish order
        assert r == sorted(r, key=int)


# -- iteration -------------------------------------------------------------------------------------


def test_iteration_ends_after_cancel_and_drain(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    for i in range(3):
        broker.publish("t", mqkit.Message(str(i)))
    sub.cancel()
    assert ids(list(sub)) == ["0", "1", "2"]
    assert list(sub) == []


def test_iteration_in_a_thread_ends_on_cancel(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    seen: list[str] = []
    first = threading.Event()

    def consume() -> None:
        for message in sub:
            seen.append(message.id)
            first.set()

    thread = threading.Thread(target=consume)
    thread.start()
    broker.publish("t", mqkit.Message("a"))
    assert first.wait(WAIT)
    sub.cancel()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert seen == ["a"]


# -- asyncio ---------------------------------------------------------------------------------------


def test_aget_returns_buffered_and_awaited_messages(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.Message("ready"))

    async def main() -> list[str]:
        out = [(await sub.aget()).id]
        waiter = asyncio.create_task(sub.aget(timeout=WAIT))
        await asyncio.sleep(0)  # let the task start waiting
        broker.publish("t", mqkit.Message("same-loop"))  # published from the loop's thread
        out.append((await waiter).id)
        return out

    assert asyncio.run(main()) == ["ready", "same-loop"]


def test_aget_woken_from_another_thread(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    got: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(sub.aget(timeout=WAIT))
        await asyncio.sleep(0)
        await loop.run_in_executor(None, broker.publish, "t", mqkit.Message("x"))
        got.append((await task).id)

    asyncio.run(main())
    assert got == ["x"]


def test_async_for_ends_after_cancel_and_drain(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    for i in range(3):
        broker.publish("t", mqkit.Message(str(i)))

    async def main() -> list[str]:
        out = []
        async for message in sub:
            out.append(message.id)
            if message.id == "2":
                sub.cancel()
        return out

    assert asyncio.run(main()) == ["0", "1", "2"]


def test_async_for_ends_on_cancel_from_another_thread(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        out: list[str] = []

        async def consume() -> None:
            async for message in sub:
                out.append(message.id)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        await loop.run_in_executor(None, broker.publish, "t", mqkit.Message("a"))
        await loop.run_in_executor(None, sub.cancel)
        await asyncio.wait_for(task, WAIT)
        return out

    assert asyncio.run(main()) == ["a"]


def test_cancelled_aget_passes_its_wake_up_on(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")

    async def main() -> str:
        first = asyncio.create_task(sub.aget())
        second = asyncio.create_task(sub.aget())
        await asyncio.sleep(0)  # both wait now; the first in line is `first`
        broker.publish("t", mqkit.Message("only"))  # wakes `first`
        first.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        return (await asyncio.wait_for(second, WAIT)).id

    assert asyncio.run(main()) == "only"
    assert sub.stats().queue_len == 0


def test_cancelled_aget_leaves_the_message_for_later(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")

    async def main() -> None:
        task = asyncio.create_task(sub.aget())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    broker.publish("t", mqkit.Message("m"))
    assert sub.get_nowait().id == "m"


def test_thread_and_async_consumers_share_a_subscription(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=500))
    n = 300
    thread_got: list[str] = []
    async_got: list[str] = []
    ready = threading.Barrier(3)

    def thread_consumer() -> None:
        ready.wait(WAIT)
        thread_got.extend(m.id for m in sub)

    def async_consumer() -> None:
        async def run() -> None:
            ready.wait(WAIT)
            async for message in sub:
                async_got.append(message.id)

        asyncio.run(run())

    threads = [threading.Thread(target=thread_consumer), threading.Thread(target=async_consumer)]
    for t in threads:
        t.start()
    ready.wait(WAIT)
    for i in range(n):
        broker.publish("t", mqkit.Message(str(i)))
    sub.cancel()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert sorted(thread_got + async_got, key=int) == [str(i) for i in range(n)]


# -- cancel / closed / context manager -------------------------------------------------------------


def test_cancel_is_idempotent_and_stops_delivery(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    sub.cancel()
    sub.cancel()
    assert sub.closed
    broker.publish("t", mqkit.Message("after"))
    assert sub.stats().received == 0
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get_nowait()
    assert broker.topics() == []


def test_cancel_one_of_two(make_broker) -> None:
    broker = make_broker()
    a = broker.subscribe("t")
    b = broker.subscribe("t")
    a.cancel()
    broker.publish("t", mqkit.Message("m"))
    assert b.get_nowait().id == "m"
    assert a.stats().received == 0
    assert broker.topics() == ["t"]


def test_context_manager_cancels(make_broker) -> None:
    broker = make_broker()
    with broker.subscribe("t") as sub:
        broker.publish("t", mqkit.Message("m"))
        assert not sub.closed
    assert sub.closed
    assert sub.get_nowait().id == "m"  # still drainable
    assert broker.topics() == []


def test_resubscribe_after_cancel(make_broker) -> None:
    broker = make_broker()
    broker.publish("t", mqkit.Message("cached-route"))
    first = broker.subscribe("t")
    first.cancel()
    second = broker.subscribe("t")
    broker.publish("t", mqkit.Message("m"))
    assert second.get_nowait().id == "m"
    assert first.stats().received == 0


# -- stats -----------------------------------------------------------------------------------------


def test_stats(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=4))
    assert sub.stats() == mqkit.SubscriptionStats(received=0, dropped=0, queue_len=0, queue_cap=4)
    for i in range(3):
        broker.publish("t", mqkit.Message(str(i)))
    sub.get_nowait()
    assert sub.stats() == mqkit.SubscriptionStats(
        received=3, dropped=0, queue_len=2, queue_cap=4, delivered=1
    )


# -- filters ---------------------------------------------------------------------------------------


def test_filter_false_skips_silently(make_broker) -> None:
    broker = make_broker()
    seen_topics: list[str] = []

    def even(message: mqkit.Message) -> bool:
        seen_topics.append(message.topic)
        return int(message.id) % 2 == 0

    evens = broker.subscribe("t", mqkit.SubOptions(filter=even))
    everything = broker.subscribe("t")
    for i in range(5):
        broker.publish("t", mqkit.Message(str(i)))
    assert ids([evens.get_nowait() for _ in range(3)]) == ["0", "2", "4"]
    assert evens.stats() == mqkit.SubscriptionStats(
        received=3, dropped=0, queue_len=0, queue_cap=16, delivered=3
    )
    assert everything.stats().received == 5
    assert seen_topics == ["t"] * 5  # the filter sees the stamped message
    assert broker.health_check().status == "healthy"


def test_raising_filter_skips_for_that_subscriber_and_degrades_health(make_broker) -> None:
    broker = make_broker()

    def explode(message: mqkit.Message) -> bool:
        if message.id == "bad":
            raise ValueError("filter bug")
        return True

    fragile = broker.subscribe("t", mqkit.SubOptions(filter=explode))
    sturdy = broker.subscribe("t")
    broker.publish("t", mqkit.Message("bad"))  # the publish itself succeeds
    broker.publish("t", mqkit.Message("good"))
    assert ids([fragile.get_nowait()]) == ["good"]
    with pytest.raises(TimeoutError):
        fragile.get_nowait()
    assert ids([sturdy.get_nowait(), sturdy.get_nowait()]) == ["bad", "good"]
    health = broker.health_check()
    assert health.status == "degraded"
    assert health.problems
    assert not fragile.closed


def test_pattern_subscription_filter(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe_pattern(
        "orders.*", mqkit.SubOptions(filter=lambda m: m.topic.endswith("created"))
    )
    broker.publish("orders.created", mqkit.Message("1"))
    broker.publish("orders.deleted", mqkit.Message("2"))
    assert ids([sub.get_nowait()]) == ["1"]
    assert sub.stats().received == 1


# -- ack / nack without the ack plugin -------------------------------------------------------------


def test_ack_and_nack_need_the_ack_plugin(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.AckMessage("m", ack_id="a-1"))
    message = sub.get_nowait()
    assert isinstance(message, mqkit.AckMessage)
    with pytest.raises(mqkit.AckNotSupportedError):
        sub.ack(message.ack_id)
    with pytest.raises(mqkit.AckNotSupportedError):
        sub.nack(message.ack_id)
    with pytest.raises(mqkit.AckNotSupportedError):
        sub.nack(message.ack_id, requeue=False)


def test_generated_ack_id_is_visible(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    original = mqkit.AckMessage("m")
    broker.publish("t", original)
    got = sub.get_nowait()
    assert isinstance(got, mqkit.AckMessage)
    assert got.ack_id
    assert original.ack_id == ""


# -- the buffer API plugins use (remove, buffered, redeliver) --------------------------------------


def test_remove_returns_the_selected_and_keeps_the_order_of_the_rest(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    for i in range(6):
        broker.publish("t", mqkit.Message(str(i)))
    gone = sub.remove(lambda m: int(m.id) % 2 == 1)
    assert ids(gone) == ["1", "3", "5"]
    assert ids(sub.buffered()) == ["0", "2", "4"]
    assert sub.remove(lambda m: False) == []
    assert ids([sub.get_nowait() for _ in range(3)]) == ["0", "2", "4"]


def test_remove_with_a_failing_predicate_removes_nothing(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    for i in range(4):
        broker.publish("t", mqkit.Message(str(i)))

    def picky(message: mqkit.Message) -> bool:
        if message.id == "2":
            raise ValueError("predicate bug")
        return True

    with pytest.raises(ValueError, match="predicate bug"):
        sub.remove(picky)
    assert ids([sub.get_nowait() for _ in range(4)]) == ["0", "1", "2", "3"]


def _remove_while_consuming(broker: mqkit.Broker, n: int) -> None:
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=n))
    for i in range(n):
        broker.publish("t", mqkit.Message(str(i)))
    got: list[int] = []
    go = threading.Event()

    def consume() -> None:
        go.wait(WAIT)
        got.extend(int(m.id) for m in sub)

    thread = threading.Thread(target=consume)
    thread.start()
    go.set()
    removed = [int(m.id) for m in sub.remove(lambda m: int(m.id) % 7 == 0)]
    sub.cancel()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert sorted(got + removed) == list(range(n))
    assert got == sorted(got)
    assert all(i % 7 == 0 for i in removed)


def test_remove_is_safe_while_consumers_pop(make_broker) -> None:
    """Consumers pop without the lock; remove() must neither crash nor lose/duplicate."""
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # make thread switches inside remove() likely
    try:
        for _ in range(5):
            _remove_while_consuming(make_broker(), 3000)
    finally:
        sys.setswitchinterval(old_interval)


def test_remove_makes_room_for_a_blocked_publisher(make_broker) -> None:
    broker = make_broker()
    reached_put = threading.Event()

    def note(message: mqkit.Message) -> bool:
        if message.id == "m2":
            reached_put.set()
        return True

    opts = mqkit.SubOptions(
        buffer_size=1, policy=mqkit.Backpressure.BLOCK_WITH_TIMEOUT, block_timeout=60, filter=note
    )
    sub = broker.subscribe("t", opts)
    broker.publish("t", mqkit.Message("m1"))
    thread = threading.Thread(target=broker.publish, args=("t", mqkit.Message("m2")))
    thread.start()
    assert reached_put.wait(WAIT)
    assert ids(sub.remove(lambda m: m.id == "m1")) == ["m1"]
    thread.join(WAIT)  # released by the room remove() made, long before the 60 s timeout
    assert not thread.is_alive()
    assert ids([sub.get(timeout=WAIT)]) == ["m2"]
    assert sub.stats().dropped == 0


def test_redeliver_puts_a_message_in_front(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=2))
    broker.publish("t", mqkit.Message("a"))
    broker.publish("t", mqkit.Message("b"))
    first = sub.get_nowait()
    assert sub.redeliver(first) is True  # ignores the bound
    assert ids(sub.buffered()) == ["a", "b"]
    assert ids([sub.get_nowait(), sub.get_nowait()]) == ["a", "b"]
    sub.cancel()
    assert sub.redeliver(first) is False
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get_nowait()


def test_queue_len_and_cap_read_what_stats_says(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=3))
    assert (sub.queue_len, sub.queue_cap) == (0, 3)
    for i in range(5):
        broker.publish("t", mqkit.Message(f"m{i}"))
    stats = sub.stats()
    assert (sub.queue_len, sub.queue_cap) == (stats.queue_len, stats.queue_cap) == (3, 3)
    sub.get_nowait()
    assert sub.queue_len == 2
