"""Typed handlers (``@broker.subscriber``), ``@broker.publisher``, request-reply, run/serve."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypedDict

import attrs
import pytest

import mqkit

WAIT = 10.0  # seconds an awaited event may take (generous: it normally takes milliseconds)


@attrs.frozen
class Order:
    id: str
    qty: int


@dataclasses.dataclass(frozen=True)
class Parcel:
    order: str
    weight: float


class Note(TypedDict):
    text: str


def acking(**changes: Any) -> mqkit.Config:
    fields: dict[str, Any] = {
        "enable_ack_support": True,
        "enable_dead_letter_queue": True,
        "dead_letter_topic": "dlq",
        "max_ack_retries": 2,
    }
    fields.update(changes)
    return mqkit.Config(**fields)


class DeadLetters:
    """A plugin that records what is dead-lettered (``mqkit_dead_letter``), with an event."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []  # (message id, reason)
        self.changed = threading.Condition()

    @mqkit.hookimpl
    def mqkit_dead_letter(self, message: mqkit.Message, reason: str) -> None:
        with self.changed:
            self.seen.append((message.id, reason))
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[tuple[str, str]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.seen) >= count, WAIT), self.seen
            return list(self.seen)


class Collected:
    """What handlers saw, with a wait for a count."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.changed = threading.Condition()

    def add(self, item: Any) -> None:
        with self.changed:
            self.items.append(item)
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[Any]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.items) >= count, WAIT), self.items
            return list(self.items)


@pytest.fixture
def serving() -> Iterator[Callable[[mqkit.Broker], None]]:
    """``serving(broker)``: run ``broker.serve()`` on a loop thread until the test ends."""
    started: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], threading.Thread]] = []

    def start(broker: mqkit.Broker) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        holder: list[asyncio.Future[None]] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            holder.append(asyncio.ensure_future(broker.serve()))
            ready.set()
            # Cancelled at the end, or ended before by a test that closed the broker.
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(holder[0])
            loop.close()

        thread = threading.Thread(target=main)
        thread.start()
        assert ready.wait(WAIT)
        started.append((loop, holder[0], thread))

    yield start
    for loop, task, thread in started:
        with contextlib.suppress(RuntimeError):  # the loop closed: serve() saw the broker close
            loop.call_soon_threadsafe(task.cancel)
        thread.join(WAIT)
        assert not thread.is_alive()


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- typed payloads --------------------------------------------------------------------------------


def test_sync_handlers_get_their_payloads_structured(serving) -> None:
    broker = mqkit.Broker()
    seen = Collected()

    @broker.subscriber("orders")
    def on_order(order: Order) -> None:
        seen.add(order)

    @broker.subscriber("parcels")
    def on_parcel(parcel: Parcel, message: mqkit.Message) -> None:
        seen.add((parcel, message.id, message.topic))

    @broker.subscriber("notes")
    def on_note(note: Note) -> None:
        seen.add(note)

    @broker.subscriber("numbers")
    def on_number(*, message: mqkit.Message, number: int) -> None:
        seen.add((number, message.id))

    @broker.subscriber("first.message")
    def on_first(message: mqkit.Message, order: Order) -> None:  # the message first
        seen.add((message.id, order))

    @broker.subscriber("raw")
    def on_raw(data) -> None:  # type: ignore[no-untyped-def]  # unannotated: the raw payload
        seen.add(data)

    serving(broker)
    broker.publish("orders", mqkit.Message("1", {"id": "a", "qty": 2}))
    broker.publish("orders", mqkit.Message("2", Order("b", 3)))  # already an Order
    broker.publish("parcels", mqkit.Message("3", {"order": "a", "weight": 1.5}))
    broker.publish("notes", mqkit.Message("4", {"text": "hi"}))
    broker.publish("numbers", mqkit.Message("5", 7))
    broker.publish("raw", mqkit.Message("6", b"\x00bytes"))
    broker.publish("first.message", mqkit.Message("7", {"id": "c", "qty": 1}))
    got = seen.wait_for(7)
    assert ("7", Order("c", 1)) in got
    assert Order("a", 2) in got
    assert Order("b", 3) in got
    assert (Parcel("a", 1.5), "3", "parcels") in got
    assert {"text": "hi"} in got
    assert (7, "5") in got
    assert b"\x00bytes" in got
    broker.close()


def test_async_handler_gets_payload_and_message() -> None:
    broker = mqkit.Broker()
    seen: list[tuple[Order, str]] = []
    done = asyncio.Event()

    @broker.subscriber("orders.*")  # a glob pattern
    async def on_order(order: Order, message: mqkit.Message) -> None:
        seen.append((order, message.topic))
        if len(seen) == 2:
            done.set()

    async def main() -> None:
        task = asyncio.create_task(broker.serve())
        broker.publish("orders.new", mqkit.Message("1", {"id": "a", "qty": 1}))
        broker.publish("orders.old", mqkit.Message("2", {"id": "b", "qty": 2}))
        async with asyncio.timeout(WAIT):
            await done.wait()
        await stop(task)

    run(main())
    assert seen == [(Order("a", 1), "orders.new"), (Order("b", 2), "orders.old")]
    assert broker.closed  # serve() closes the broker when it ends


def test_messages_published_before_serving_are_handled(serving) -> None:
    broker = mqkit.Broker()
    seen = Collected()

    @broker.subscriber("early")
    def on_early(text: str) -> None:
        seen.add(text)

    broker.publish("early", mqkit.Message("1", "before"))  # subscribed at registration
    serving(broker)

    @broker.subscriber("late")  # registered while running: starts at once
    async def on_late(text: str) -> None:
        seen.add(text)

    broker.publish("late", mqkit.Message("2", "after"))
    assert sorted(seen.wait_for(2)) == ["after", "before"]
    broker.close()


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [mqkit.Message, mqkit.AckMessage])
def test_a_payload_that_does_not_structure_is_dead_lettered_at_once(serving, kind) -> None:
    dead = DeadLetters()
    broker = mqkit.Broker(acking(), plugins=[dead])
    calls: list[Order] = []

    @broker.subscriber("orders")
    def on_order(order: Order) -> None:
        calls.append(order)

    serving(broker)
    broker.publish("orders", kind("1", {"id": "a", "qty": "many"}))
    ((msg_id, reason),) = dead.wait_for(1)
    assert msg_id == "1"
    assert reason.startswith("payload does not structure as Order: ")
    assert "qty: expected an integer, got 'many'" in reason
    (letter,) = broker.dead_letters()
    assert letter.attempts == 1  # never retried
    assert letter.message.data == {"id": "a", "qty": "many"}
    assert calls == []
    assert broker.metrics().total_redelivered == 0
    broker.close()


def test_a_message_of_another_class_than_the_annotation_is_dead_lettered(serving) -> None:
    dead = DeadLetters()
    broker = mqkit.Broker(acking(), plugins=[dead])

    @broker.subscriber("jobs")
    def on_job(job: str, message: mqkit.AckMessage) -> None:
        raise AssertionError("not called")

    serving(broker)
    broker.publish("jobs", mqkit.Message("plain-1", "x"))
    ((msg_id, reason),) = dead.wait_for(1)
    assert msg_id == "plain-1"
    assert reason.endswith("on_job takes AckMessage messages, got Message 'plain-1'")
    broker.close()


def test_without_a_dead_letter_queue_an_unusable_payload_is_counted_and_logged(
    serving, caplog
) -> None:
    broker = mqkit.Broker()
    dropped = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "was dropped, not dead-lettered" in record.getMessage():
                dropped.set()

    watch = Watch()
    logging.getLogger("mqkit.handlers").addHandler(watch)
    try:

        @broker.subscriber("numbers")
        def on_number(number: int) -> None:
            raise AssertionError("not called")

        serving(broker)
        with caplog.at_level(logging.ERROR, "mqkit.handlers"):
            broker.publish("numbers", mqkit.Message("n-1", "seven"))
            assert dropped.wait(WAIT)
    finally:
        logging.getLogger("mqkit.handlers").removeHandler(watch)
    texts = [r.getMessage() for r in caplog.records]
    assert any("cannot take message 'n-1'" in t and "expected an integer" in t for t in texts)
    assert broker.dead_letter_stats().dropped == 1
    health = broker.health_check()
    assert health.status == "degraded"
    assert "1 dead letter(s) dropped: the dead letter queue is off" in health.problems
    broker.close()


def test_a_raising_handler_is_retried_then_dead_lettered(serving, caplog) -> None:
    dead = DeadLetters()
    broker = mqkit.Broker(acking(max_ack_retries=2), plugins=[dead])
    attempts: list[int] = []

    @broker.subscriber("jobs")
    def on_job(job: str, message: mqkit.AckMessage) -> None:
        attempts.append(message.attempt)
        raise RuntimeError(f"cannot do {job}")

    serving(broker)
    with caplog.at_level(logging.WARNING, "mqkit.handlers"):
        broker.publish_with_ack("jobs", mqkit.AckMessage("j-1", "the job"))
        ((msg_id, reason),) = dead.wait_for(1)
    assert (msg_id, reason) == ("j-1", "nacked after 3 attempts")
    assert attempts == [1, 2, 3]  # max_ack_retries=2: three deliveries
    levels = [r.levelname for r in caplog.records if "cannot do the job" in r.getMessage()]
    assert levels == ["WARNING", "WARNING", "ERROR"]
    assert all(r.exc_info for r in caplog.records if "cannot do the job" in r.getMessage())
    broker.close()


def test_a_raising_handler_dead_letters_a_plain_message_at_once(serving) -> None:
    dead = DeadLetters()
    broker = mqkit.Broker(acking(), plugins=[dead])

    @broker.subscriber("jobs")
    async def on_job(job: str) -> None:
        raise ValueError("bad job")

    serving(broker)
    broker.publish("jobs", mqkit.Message("j-1", "x"))
    ((msg_id, reason),) = dead.wait_for(1)
    assert msg_id == "j-1"
    assert reason.startswith("handler test_a_raising_handler_dead_letters_a_plain_message_at_")
    assert reason.endswith("on_job raised ValueError('bad job')")
    broker.close()


def test_returning_acks() -> None:
    dead = DeadLetters()
    broker = mqkit.Broker(acking(), plugins=[dead])
    seen = Collected()

    @broker.subscriber("jobs", concurrency=2)
    def on_job(job: str, message: mqkit.AckMessage) -> None:
        seen.add(message.attempt)

    async def main() -> None:
        task = asyncio.create_task(broker.serve())
        for i in range(5):
            broker.publish_with_ack("jobs", mqkit.AckMessage(f"j-{i}", f"job {i}"))
        await asyncio.to_thread(seen.wait_for, 5)
        await stop(task)  # waits for the acks in flight, then cancels the subscription

    run(main())
    assert seen.items == [1] * 5  # no redelivery
    assert dead.seen == []  # an unacked delivery would be dead-lettered by the cancel


# -- concurrency -----------------------------------------------------------------------------------


def test_a_sync_handler_runs_at_most_concurrency_messages_at_once(serving) -> None:
    broker = mqkit.Broker()
    limit = 3
    barrier = threading.Barrier(limit, timeout=WAIT)  # passes only with `limit` in flight
    lock = threading.Lock()
    in_flight = peak = 0
    seen = Collected()

    @broker.subscriber("work", concurrency=limit, options=mqkit.SubOptions(buffer_size=64))
    def work(n: int) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        barrier.wait()
        with lock:
            in_flight -= 1
        seen.add(n)

    for n in range(4 * limit):
        broker.publish("work", mqkit.Message(str(n), n))
    serving(broker)
    assert sorted(seen.wait_for(4 * limit)) == list(range(4 * limit))
    assert peak == limit
    broker.close()


def test_an_async_handler_runs_at_most_concurrency_messages_at_once() -> None:
    broker = mqkit.Broker()
    limit = 4
    in_flight = peak = 0
    seen: list[int] = []
    done = asyncio.Event()

    async def main() -> None:
        barrier = asyncio.Barrier(limit)

        @broker.subscriber("work", concurrency=limit, options=mqkit.SubOptions(buffer_size=64))
        async def work(n: int) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            async with asyncio.timeout(WAIT):
                await barrier.wait()
            in_flight -= 1
            seen.append(n)
            if len(seen) == 3 * limit:
                done.set()

        for n in range(3 * limit):
            broker.publish("work", mqkit.Message(str(n), n))
        task = asyncio.create_task(broker.serve())
        async with asyncio.timeout(WAIT):
            await done.wait()
        await stop(task)

    run(main())
    assert sorted(seen) == list(range(12))
    assert peak == limit


# -- stopping --------------------------------------------------------------------------------------


class StopWatch(logging.Handler):
    """Sets ``stopping`` when the handlers log that they stop taking messages."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "no new message is taken" in record.getMessage():
            self.stopping.set()

    def __enter__(self) -> StopWatch:
        logger = logging.getLogger("mqkit.handlers")
        logger.addHandler(self)
        self._level = logger.level
        logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("mqkit.handlers")
        logger.removeHandler(self)
        logger.setLevel(self._level)


def test_run_stops_on_sigterm_finishing_what_is_in_flight_losing_and_duplicating_nothing() -> None:
    dead = DeadLetters()
    broker = mqkit.Broker(acking(), plugins=[dead])
    handled: list[str] = []
    lock = threading.Lock()
    ids = [f"m-{i}" for i in range(40)]

    with StopWatch() as watch:

        @broker.subscriber("jobs", concurrency=2, options=mqkit.SubOptions(buffer_size=64))
        def job(text: str, message: mqkit.AckMessage) -> None:
            with lock:
                handled.append(message.id)
                count = len(handled)
            if count >= 3:  # both workers hold a message when the stop begins
                if count == 3:
                    os.kill(os.getpid(), signal.SIGTERM)  # run() stops cleanly on it
                assert watch.stopping.wait(WAIT)
                with lock:
                    handled.append("finished " + message.id)

        for msg_id in ids:
            broker.publish_with_ack("jobs", mqkit.AckMessage(msg_id, msg_id))
        broker.run()  # from the main thread: SIGTERM handled

    assert broker.closed
    taken = [h for h in handled if not h.startswith("finished ")]
    # Two handled, then one or two in flight while stopping (the second worker may not have
    # taken one yet); nothing taken after the stop began.
    assert len(taken) in (3, 4)
    assert sorted(taken) == ids[: len(taken)]
    finished = {h for h in handled if h.startswith("finished ")}
    assert finished == {f"finished {msg_id}" for msg_id in taken[2:]}
    lettered = [msg_id for msg_id, reason in dead.seen]
    assert all(reason == "unsubscribed before ack" for _, reason in dead.seen)
    assert len(taken) == len(set(taken))  # nothing handled twice
    assert not set(taken) & set(lettered)  # nothing both handled and dead-lettered
    assert sorted(taken + lettered) == sorted(ids)  # nothing lost
    assert sorted(lettered) == sorted(ids[len(taken) :])  # the rest: buffered, never taken


def test_cancelling_serve_finishes_in_flight_async_messages() -> None:
    dead = DeadLetters()
    broker = mqkit.Broker(acking(), plugins=[dead])
    handled: list[str] = []
    ids = [f"m-{i}" for i in range(20)]

    async def main() -> None:
        task: asyncio.Task[None] | None = None

        @broker.subscriber("jobs", concurrency=3, options=mqkit.SubOptions(buffer_size=64))
        async def job(text: str) -> None:
            handled.append(text)
            if len(handled) == 2:
                assert task is not None
                task.cancel()
                await asyncio.to_thread(watch.stopping.wait, WAIT)
                handled.append("finished " + text)

        for msg_id in ids:
            broker.publish_with_ack("jobs", mqkit.AckMessage(msg_id, msg_id))
        task = asyncio.create_task(broker.serve())
        with pytest.raises(asyncio.CancelledError):
            await task

    with StopWatch() as watch:
        run(main())
    assert broker.closed
    assert "finished m-1" in handled
    taken = [h for h in handled if not h.startswith("finished ")]
    lettered = [msg_id for msg_id, _ in dead.seen]
    assert len(taken) == len(set(taken))
    assert not set(taken) & set(lettered)
    assert sorted(taken + lettered) == sorted(ids)


def test_serve_returns_when_the_broker_is_closed() -> None:
    broker = mqkit.Broker()

    @broker.subscriber("t")
    def handler(text: str) -> None:
        broker.close()

    async def main() -> None:
        task = asyncio.create_task(broker.serve())
        broker.publish("t", mqkit.Message("1", "close"))
        async with asyncio.timeout(WAIT):
            await task

    run(main())
    assert broker.closed


def test_serve_refuses_a_second_run_and_a_closed_broker() -> None:
    broker = mqkit.Broker()

    @broker.subscriber("ping")
    async def ping(n: int) -> int:
        return n

    async def main() -> None:
        task = asyncio.create_task(broker.serve())
        assert (await broker.arequest("ping", 1, timeout=WAIT)).data == 1  # it runs
        with pytest.raises(RuntimeError, match="already run"):
            await broker.serve()
        await stop(task)
        with pytest.raises(mqkit.BrokerClosedError):
            await broker.serve()

    run(main())


def test_run_refuses_to_run_inside_an_event_loop() -> None:
    broker = mqkit.Broker()

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"await broker\.serve"):
            broker.run()

    run(main())
    broker.close()


# -- publisher and request-reply -------------------------------------------------------------------


@pytest.mark.parametrize("order", ["publisher inside", "publisher outside"])
def test_publisher_publishes_the_return_value(serving, order) -> None:
    broker = mqkit.Broker()
    out = broker.subscribe("shipped")

    def ship(o: Order) -> Parcel | None:
        return None if o.qty == 0 else Parcel(o.id, o.qty * 0.5)

    if order == "publisher inside":
        broker.subscriber("orders")(broker.publisher("shipped")(ship))
    else:
        broker.publisher("shipped")(broker.subscriber("orders")(ship))
    serving(broker)
    broker.publish("orders", mqkit.Message("1", {"id": "a", "qty": 0}))  # None: nothing
    broker.publish("orders", mqkit.Message("2", {"id": "b", "qty": 4}))
    assert out.get(WAIT).data == {"order": "b", "weight": 2.0}  # unstructured plain data
    with pytest.raises(TimeoutError):
        out.get(0)
    broker.close()


def test_request_gets_the_handlers_reply_and_times_out_without_one(serving) -> None:
    broker = mqkit.Broker()

    @broker.subscriber("double")
    def double(n: int) -> int:
        return 2 * n

    @broker.subscriber("quote")
    async def quote(order: Order) -> mqkit.Message:
        return mqkit.Message("q-1", {"price": order.qty * 10}, meta={"currency": "EUR"})

    serving(broker)
    reply = broker.request("double", 21, timeout=WAIT)
    assert reply.data == 42
    assert set(reply.meta) == {"correlation_id"}
    reply = broker.request("quote", Order("a", 3), timeout=WAIT)
    assert (reply.id, reply.data, reply.meta["currency"]) == ("q-1", {"price": 30}, "EUR")
    request = mqkit.Message("r-1", 5, meta={"trace": "t"})
    assert broker.request("double", request, timeout=WAIT).data == 10
    with pytest.raises(mqkit.RequestTimeoutError, match="no reply to a request on 'nobody'"):
        broker.request("nobody", 1, timeout=0.05)
    with pytest.raises(TimeoutError):  # a TimeoutError too
        broker.request("nobody", 1, timeout=0.05)
    with pytest.raises(mqkit.InvalidArgumentError):
        broker.request("double", 1, timeout=float("nan"))
    assert [t for t in broker.topics() if t.startswith("mqkit.reply.")] == []  # cleaned up
    broker.close()


def test_arequest_from_a_coroutine() -> None:
    broker = mqkit.Broker()

    @broker.subscriber("echo")
    async def echo(text: str, message: mqkit.Message) -> str:
        return f"{text} ({message.meta['correlation_id'] != ''})"

    async def main() -> None:
        task = asyncio.create_task(broker.serve())
        reply = await broker.arequest("echo", "hi", timeout=WAIT)
        assert reply.data == "hi (True)"
        with pytest.raises(mqkit.RequestTimeoutError):
            await broker.arequest("nobody", "hi", timeout=0.05)
        await stop(task)

    run(main())


# -- groups and registration errors ----------------------------------------------------------------


def test_handlers_of_one_group_share_the_messages(serving) -> None:
    broker = mqkit.Broker()
    seen = Collected()

    @broker.subscriber("jobs", group="workers", options=mqkit.SubOptions(buffer_size=64))
    def first(n: int) -> None:
        seen.add(("first", n))

    @broker.subscriber("jobs", group="workers")
    async def second(n: int) -> None:
        seen.add(("second", n))

    @broker.subscriber("jobs", options=mqkit.SubOptions(buffer_size=64))  # no group: a copy
    def audit(n: int) -> None:
        seen.add(("audit", n))

    assert len(broker.subscriptions("jobs")) == 2
    serving(broker)
    for n in range(20):
        broker.publish("jobs", mqkit.Message(str(n), n))
    got = seen.wait_for(40)
    assert sorted(n for who, n in got if who == "audit") == list(range(20))
    assert sorted(n for who, n in got if who != "audit") == list(range(20))  # each once
    broker.close()


def not_resolvable(x: Missing) -> None:  # type: ignore[name-defined]  # noqa: F821
    pass


@pytest.mark.parametrize(
    ("register", "text"),
    [
        (lambda b: b.subscriber("t", concurrency=0), "concurrency must be an int of at least 1"),
        (lambda b: b.subscriber("t", concurrency=True), "concurrency must be an int"),
        (lambda b: b.subscriber("t", group=""), "group must be None or a non-empty str"),
        (lambda b: b.subscriber("")(print), "invalid topic"),
        (lambda b: b.subscriber("t")(lambda a, b: None), "parameter 'b' has nothing to receive"),
        (lambda b: b.subscriber("t")(not_resolvable), "its annotations do not resolve"),
        (lambda b: b.subscriber("t")(42), "a handler must be callable"),
    ],
)
def test_a_bad_registration_is_refused_and_subscribes_nothing(register, text) -> None:
    broker = mqkit.Broker()
    with pytest.raises(mqkit.MQError, match=text):
        register(broker)
    assert broker.subscriptions() == []
    broker.close()


def test_a_payload_type_the_converter_cannot_make_is_refused_at_registration() -> None:
    broker = mqkit.Broker()

    class Opaque:
        def __init__(self, x: int) -> None:
            self.x = x

    def handler(value: Opaque) -> None:
        pass

    handler.__annotations__["value"] = Opaque
    with pytest.raises(mqkit.InvalidArgumentError, match="payloads cannot be structured as"):
        broker.subscriber("t")(handler)
    broker.close()
