"""The priority buffer itself: per-level deques, eviction, ``take_front``, lock-free consumers."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator

import pytest

import mqkit
from mqkit import Backpressure, Priority, PriorityMessage, SubOptions
from mqkit.core.subscription import FifoBuffer
from mqkit.testing import HookRecorder

from .helpers import drain_ids, drops

P = Priority

PUBLISHERS = 2
CONSUMERS = 3
PER_PUBLISHER = 2000
ROUNDS = 4
LEVELS = (P.LOW, P.NORMAL, P.HIGH, 25, -3)


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads far more often than the default 5 ms, so races show up in few iterations."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class Errors:
    """Every exception raised in a test's threads (the thread excepthook included)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[BaseException] = []

    def add(self, exc: BaseException) -> None:
        with self.lock:
            self.seen.append(exc)

    def guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                self.add(exc)

        return run


@pytest.fixture
def errors() -> Iterator[Errors]:
    found = Errors()
    before = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            found.add(args.exc_value)

    threading.excepthook = hook
    try:
        yield found
    finally:
        threading.excepthook = before


def start(*targets: Callable[[], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    return threads


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(60)
    assert not [t for t in threads if t.is_alive()], "a thread did not finish"


# -- lock-free consumers against evicting publishers -------------------------------------------------


def run_round(
    broker: mqkit.Broker, recorder: HookRecorder, errors: Errors, buffer_size: int
) -> None:
    """Publishers overflow a small DROP_OLDEST buffer while consumers pop; account for all."""
    recorder.clear()
    sub = broker.subscribe(
        "jobs", SubOptions(buffer_size=buffer_size, policy=Backpressure.DROP_OLDEST)
    )
    received: list[list[str]] = [[] for _ in range(CONSUMERS)]
    go = threading.Event()

    def publisher(n: int) -> Callable[[], None]:
        def run() -> None:
            go.wait(30)
            for i in range(PER_PUBLISHER):
                broker.publish("jobs", PriorityMessage(f"{n}-{i}", priority=LEVELS[i % 5]))

        return run

    def consumer(n: int) -> Callable[[], None]:
        def run() -> None:
            go.wait(30)
            got = received[n]
            while True:
                try:
                    # Both lock-free fast paths: get_nowait spins, get waits.
                    message = sub.get_nowait() if n % 2 else sub.get(timeout=30)
                except TimeoutError:
                    continue
                except mqkit.SubscriptionClosedError:
                    return
                got.append(message.id)

        return run

    consumers = start(*(errors.guard(consumer(n)) for n in range(CONSUMERS)))
    publishers = start(*(errors.guard(publisher(n)) for n in range(PUBLISHERS)))
    go.set()
    join(publishers)
    sub.cancel()  # consumers drain what is left, then stop
    join(consumers)

    assert errors.seen == []
    taken = [mid for got in received for mid in got]
    drop_calls = recorder.of("mqkit_drop")
    dropped = [call.message.id for call in drop_calls]
    assert {call.reason for call in drop_calls} <= {"drop_oldest", "drop_newest"}
    published = {f"{n}-{i}" for n in range(PUBLISHERS) for i in range(PER_PUBLISHER)}
    assert len(taken) == len(set(taken)), "a message was delivered twice"
    assert len(dropped) == len(set(dropped)), "a message was dropped twice"
    assert not set(taken) & set(dropped), "a message was both delivered and dropped"
    assert set(taken) | set(dropped) == published, "a message was lost"
    rejected = sum(call.reason == "drop_newest" for call in drop_calls)
    assert sub.stats() == mqkit.SubscriptionStats(
        received=len(published) - rejected,
        dropped=len(dropped),
        queue_len=0,
        queue_cap=buffer_size,
    )


@pytest.mark.parametrize("buffer_size", [1, 2, 5])
@pytest.mark.parametrize("plugins", [("priority",), ()], ids=["priority", "fifo"])
def test_evicting_publishers_and_lock_free_consumers_lose_and_duplicate_nothing(
    make_broker, busy_switching: None, errors: Errors, buffer_size: int, plugins: tuple[str, ...]
) -> None:
    recorder = HookRecorder(hooks=["mqkit_drop"])
    broker = make_broker(*plugins, objects=[recorder])
    for _ in range(ROUNDS):
        run_round(broker, recorder, errors, buffer_size)


class Emptier:
    """A consumer thread that, when asked, takes ``count`` buffered messages (lock-free)."""

    def __init__(self, sub: mqkit.Subscription, count: int) -> None:
        self.sub = sub
        self.count = count
        self.asked = threading.Event()
        self.done = threading.Event()
        self.taken: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self.asked.wait(30):
            # The buffer holds ``count`` messages: each get_nowait pops without the lock
            # (which the evicting publisher holds).
            self.taken.extend(self.sub.get_nowait().id for _ in range(self.count))
        self.done.set()

    def empty_now(self) -> None:
        """Called in the publisher's thread, inside the eviction: let the consumer empty it."""
        if not self.asked.is_set():
            self.asked.set()
            assert self.done.wait(30), "the consumer did not empty the buffer"


def test_consumer_emptying_the_priority_buffer_during_eviction_makes_room(
    make_broker, hook_recorder: HookRecorder
) -> None:
    broker = make_broker("priority", objects=[hook_recorder])
    sub = broker.subscribe("jobs", SubOptions(buffer_size=3, policy=Backpressure.DROP_OLDEST))
    for name, prio in [("low-a", P.LOW), ("high-b", P.HIGH), ("low-c", P.LOW)]:
        broker.publish("jobs", PriorityMessage(name, priority=prio))
    emptier = Emptier(sub, 3)

    class RacingPriority(int):
        """LOW, but looking at it (as eviction must) lets the consumer empty the buffer."""

        def __lt__(self, other: object) -> bool:
            emptier.empty_now()
            return int(self) < other  # type: ignore[operator]

        def __le__(self, other: object) -> bool:
            emptier.empty_now()
            return int(self) <= other  # type: ignore[operator]

        def __gt__(self, other: object) -> bool:
            emptier.empty_now()
            return int(self) > other  # type: ignore[operator]

        def __ge__(self, other: object) -> bool:
            emptier.empty_now()
            return int(self) >= other  # type: ignore[operator]

        def __neg__(self) -> int:
            emptier.empty_now()
            return -int(self)

    broker.publish("jobs", PriorityMessage("low-d", priority=RacingPriority(P.LOW)))
    emptier.thread.join(30)
    assert emptier.taken == ["high-b", "low-a", "low-c"]
    # The consumer made room: the new message entered and nothing was dropped.
    assert drops(hook_recorder) == []
    assert sub.stats() == mqkit.SubscriptionStats(
        received=4, dropped=0, queue_len=1, queue_cap=3
    )
    assert drain_ids(sub) == ["low-d"]


def test_consumer_emptying_a_fifo_buffer_before_its_eviction_makes_room(
    make_broker, hook_recorder: HookRecorder
) -> None:
    emptiers: list[Emptier] = []

    class RacingFifo(FifoBuffer):
        """The FIFO buffer, with a consumer taking everything just before ``evict`` pops."""

        def evict(self, incoming: mqkit.Message, /) -> mqkit.Message:
            emptiers[0].empty_now()
            return super().evict(incoming)

    class RacingBuffers:
        plugin_info = mqkit.PluginInfo(name="racing-buffers")

        @mqkit.hookimpl
        def mqkit_subscription_buffer(
            self, broker: mqkit.Broker, subscription: mqkit.Subscription
        ) -> FifoBuffer:
            return RacingFifo()

    broker = make_broker(objects=[hook_recorder, RacingBuffers()])
    sub = broker.subscribe("jobs", SubOptions(buffer_size=2, policy=Backpressure.DROP_OLDEST))
    broker.publish("jobs", mqkit.Message("a"))
    broker.publish("jobs", mqkit.Message("b"))
    emptiers.append(Emptier(sub, 2))
    broker.publish("jobs", mqkit.Message("c"))
    emptiers[0].thread.join(30)
    assert emptiers[0].taken == ["a", "b"]
    assert drops(hook_recorder) == []
    assert sub.stats() == mqkit.SubscriptionStats(
        received=3, dropped=0, queue_len=1, queue_cap=2
    )
    assert drain_ids(sub) == ["c"]
