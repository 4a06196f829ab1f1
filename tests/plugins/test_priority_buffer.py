"""The priority buffer itself: per-level deques, eviction, ``take_front``, lock-free consumers."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mqkit
from mqkit import Backpressure, Priority, PriorityMessage, SubOptions
from mqkit.core.subscription import FifoBuffer
from mqkit.plugins.priority import PriorityBuffer
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


# -- lock-free consumers against evicting publishers -----------------------------------------------


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
        delivered=len(taken),
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
        received=4, dropped=0, queue_len=1, queue_cap=3, delivered=3
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
        received=3, dropped=0, queue_len=1, queue_cap=2, delivered=2
    )
    assert drain_ids(sub) == ["c"]


# -- the buffer itself: levels, order, eviction, take_front ----------------------------------------


def pm(name: str, priority: int) -> PriorityMessage:
    return PriorityMessage(name, priority=priority)


def ids(messages: Iterable[mqkit.Message]) -> list[str]:
    return [m.id for m in messages]


def filled(*entries: tuple[str, int]) -> PriorityBuffer:
    buf = PriorityBuffer()
    for name, prio in entries:
        buf.append(pm(name, prio))
    return buf


def pop_all(buf: PriorityBuffer) -> list[str]:
    out = []
    while True:
        try:
            out.append(buf.popleft().id)
        except IndexError:
            return out


def test_levels_come_out_highest_first_fifo_within_each() -> None:
    buf = filled(("low-1", P.LOW), ("high-1", P.HIGH), ("low-2", P.LOW), ("high-2", P.HIGH))
    buf.append(mqkit.Message("plain"))  # NORMAL
    buf.append(pm("normal", P.NORMAL))
    assert (len(buf), bool(buf)) == (6, True)
    assert ids(buf) == ["high-1", "high-2", "plain", "normal", "low-1", "low-2"]
    assert pop_all(buf) == ["high-1", "high-2", "plain", "normal", "low-1", "low-2"]
    assert (len(buf), bool(buf), list(buf)) == (0, False, [])
    with pytest.raises(IndexError):
        buf.popleft()


def test_appendleft_puts_a_redelivered_message_ahead_of_its_level_only() -> None:
    buf = filled(("normal-1", P.NORMAL), ("high-1", P.HIGH), ("normal-2", P.NORMAL))
    buf.appendleft(pm("normal-again", P.NORMAL))
    buf.appendleft(pm("low-again", P.LOW))  # a level that was not there
    buf.appendleft(pm("highest-again", P.HIGHEST))
    assert ids(buf) == [
        "highest-again",
        "high-1",
        "normal-again",
        "normal-1",
        "normal-2",
        "low-again",
    ]
    assert pop_all(buf) == [
        "highest-again",
        "high-1",
        "normal-again",
        "normal-1",
        "normal-2",
        "low-again",
    ]


def test_a_level_that_empties_and_many_levels_that_come_and_go_keep_the_order() -> None:
    buf = PriorityBuffer()
    for round_ in range(5):
        for prio in range(30):  # more levels than are kept empty
            buf.append(pm(f"{round_}-{prio}", prio * 7 - 100))
        buf.append(mqkit.Message(f"{round_}-plain"))
        got = pop_all(buf)
        assert got[0] == f"{round_}-29"
        assert got == [f"{round_}-{p}" for p in range(29, 17, -1)] + [f"{round_}-plain"] + [
            f"{round_}-{p}" for p in range(17, -1, -1)
        ]


def test_clear_removes_every_message_and_the_buffer_stays_usable() -> None:
    buf = filled(("a", 1), ("b", 2), ("c", 3))
    buf.clear()
    assert (len(buf), bool(buf), list(buf)) == (0, False, [])
    buf.append(pm("d", 2))
    buf.append(pm("e", 5))
    assert pop_all(buf) == ["e", "d"]


def test_evict_takes_the_oldest_of_the_lowest_level() -> None:
    buf = filled(("low-a", P.LOW), ("high-b", P.HIGH), ("low-c", P.LOW), ("lowest-d", P.LOWEST))
    assert buf.evict(pm("normal-e", P.NORMAL)).id == "lowest-d"
    assert buf.evict(pm("normal-f", P.NORMAL)).id == "low-a"
    assert buf.evict(mqkit.Message("plain")).id == "low-c"  # a plain message counts as NORMAL
    assert ids(buf) == ["high-b"]


def test_evict_of_a_message_at_the_lowest_level_takes_an_older_one_of_that_level() -> None:
    buf = filled(("low-a", P.LOW), ("high-b", P.HIGH), ("low-c", P.LOW))
    assert buf.evict(pm("low-d", P.LOW)).id == "low-a"
    assert ids(buf) == ["high-b", "low-c"]


def test_evict_of_a_message_below_everything_returns_it() -> None:
    buf = filled(("low-a", P.LOW), ("high-b", P.HIGH))
    incoming = pm("lowest-c", P.LOWEST)
    assert buf.evict(incoming) is incoming
    assert ids(buf) == ["high-b", "low-a"]
    assert filled(("n", P.NORMAL)).evict(pm("any-int", -(10**30))).id == "any-int"


def test_evict_takes_a_redelivered_message_first_it_heads_its_level() -> None:
    buf = filled(("low-a", P.LOW), ("high-b", P.HIGH))
    buf.appendleft(pm("low-again", P.LOW))
    assert buf.evict(pm("normal-c", P.NORMAL)).id == "low-again"


def test_evict_from_an_empty_buffer_finds_nothing() -> None:
    buf = filled(("a", P.LOW))
    buf.popleft()  # a consumer emptied it: levels remain, messages do not
    with pytest.raises(IndexError):
        buf.evict(pm("b", P.HIGH))
    with pytest.raises(IndexError):
        PriorityBuffer().evict(pm("c", P.LOW))


def test_take_front_takes_each_levels_leading_selected_messages() -> None:
    buf = filled(
        ("old-high-1", P.HIGH),
        ("old-low-1", P.LOW),
        ("new-high-2", P.HIGH),
        ("old-high-3", P.HIGH),  # behind a message that stays: stays too
        ("old-low-2", P.LOW),
        ("new-normal", P.NORMAL),
    )
    taken = buf.take_front(lambda m: m.id.startswith("old"))
    assert ids(taken) == ["old-high-1", "old-low-1", "old-low-2"]
    assert ids(buf) == ["new-high-2", "old-high-3", "new-normal"]
    assert buf.take_front(lambda m: False) == []
    assert ids(buf.take_front(lambda m: True)) == ["new-high-2", "old-high-3", "new-normal"]
    assert (len(buf), PriorityBuffer().take_front(lambda m: True)) == (0, [])


def test_take_front_examines_what_it_removes_plus_one_per_level() -> None:
    # Flat cost, counted: 30 stale messages at the fronts of 3 levels holding 30,000.
    buf = PriorityBuffer()
    for i in range(30_000):
        buf.append(pm(f"{'stale' if i < 30 else 'fresh'}-{i}", (i % 3) * 10))
    examined: list[str] = []

    def stale(message: mqkit.Message) -> bool:
        examined.append(message.id)
        return message.id.startswith("stale")

    taken = buf.take_front(stale)
    assert len(taken) == 30
    assert len(examined) == 30 + 3  # each level's first fresh message stops its level
    assert len(buf) == 30_000 - 30
    examined.clear()
    assert buf.take_front(stale) == []
    assert len(examined) == 3


def test_take_front_with_a_raising_predicate_removes_nothing() -> None:
    buf = filled(("a", P.HIGH), ("b", P.HIGH), ("c", P.LOW), ("boom", P.LOW), ("d", P.LOW))

    def predicate(message: mqkit.Message) -> bool:
        if message.id == "boom":
            raise RuntimeError("predicate failed")
        return True

    with pytest.raises(RuntimeError, match="predicate failed"):
        buf.take_front(predicate)
    assert ids(buf) == ["a", "b", "c", "boom", "d"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["append", "appendleft", "popleft", "evict", "take_front"]),
            st.integers(min_value=-12, max_value=12),
        ),
        max_size=120,
    )
)
def test_the_buffer_behaves_as_its_model(ops: list[tuple[str, int]]) -> None:
    """Per-level lists as the model: delivery order, eviction, take_front, length."""
    buf = PriorityBuffer()
    model: dict[int, list[str]] = {}
    for n, (op, prio) in enumerate(ops):
        name = str(n)
        if op == "append":
            buf.append(pm(name, prio))
            model.setdefault(prio, []).append(name)
        elif op == "appendleft":
            buf.appendleft(pm(name, prio))
            model.setdefault(prio, []).insert(0, name)
        elif op == "popleft":
            present = [p for p in model if model[p]]
            if present:
                assert buf.popleft().id == model[max(present)].pop(0)
            else:
                with pytest.raises(IndexError):
                    buf.popleft()
        elif op == "evict":
            present = [p for p in model if model[p]]
            if not present:
                with pytest.raises(IndexError):
                    buf.evict(pm(name, prio))
            elif prio < min(present):
                assert buf.evict(pm(name, prio)).id == name
            else:
                assert buf.evict(pm(name, prio)).id == model[min(present)].pop(0)
        else:
            step = abs(prio) or 1

            def selected(message: mqkit.Message, step: int = step) -> bool:
                return int(message.id) % step == 0

            expected = []
            for p in sorted(model, reverse=True):
                while model[p] and int(model[p][0]) % step == 0:
                    expected.append(model[p].pop(0))
            assert ids(buf.take_front(selected)) == expected
        in_order = [name for p in sorted(model, reverse=True) for name in model[p]]
        assert ids(buf) == in_order
        assert (len(buf), bool(buf)) == (len(in_order), bool(in_order))


def test_consumers_popping_lock_free_against_every_locked_operation(
    busy_switching: None, errors: Errors
) -> None:
    """The buffer alone: publishers append, evict, redeliver and sweep under a lock (as a
    subscription does) while consumers pop without it; every message has exactly one fate."""
    buf = PriorityBuffer()
    lock = threading.Lock()
    cap = 6
    fates: dict[str, list[str]] = {"consumed": [], "evicted": [], "swept": [], "rejected": []}
    fate_lock = threading.Lock()
    publishing = threading.Event()
    publishing.set()

    def record(fate: str, messages: Iterable[mqkit.Message]) -> None:
        with fate_lock:
            fates[fate].extend(m.id for m in messages)

    def publisher(n: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(3000):
                message = pm(f"{n}-{i}", LEVELS[(i * 7 + n) % 5])
                with lock:
                    if i % 50 == 7:  # the TTL sweep
                        record("swept", buf.take_front(lambda m: m.id.endswith(("1", "5"))))
                    if i % 13 == 5:
                        buf.appendleft(message)  # a redelivery ignores the bound
                        continue
                    victim = None
                    if len(buf) >= cap:
                        with contextlib.suppress(IndexError):  # consumers made room
                            victim = buf.evict(message)
                    if victim is message:
                        record("rejected", [message])
                        continue
                    if victim is not None:
                        record("evicted", [victim])
                    buf.append(message)

        return run

    def consumer() -> None:
        got = []
        last_round = False
        while True:
            try:
                got.append(buf.popleft())
            except IndexError:
                # Stop at an empty buffer seen by a pop that began after the last publish
                # (a pop that began earlier may have passed a level before it was filled).
                if last_round:
                    break
                last_round = not publishing.is_set()
        record("consumed", got)

    consumers = start(*(errors.guard(consumer) for _ in range(CONSUMERS)))
    join(start(*(errors.guard(publisher(n)) for n in range(PUBLISHERS))))
    publishing.clear()
    join(consumers)

    assert errors.seen == []
    assert len(buf) == 0
    every = [mid for fate in fates.values() for mid in fate]
    assert len(every) == len(set(every)), "a message had two fates"
    assert set(every) == {f"{n}-{i}" for n in range(PUBLISHERS) for i in range(3000)}
    assert fates["evicted"], "the buffer never overflowed: the test tests nothing"
