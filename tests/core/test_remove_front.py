"""``Subscription.remove_front`` (plugin API): take from the front while a predicate holds."""

from __future__ import annotations

import sys
import threading
from collections import deque

import pytest

import mqkit
from mqkit.core.hookspecs import hookimpl
from mqkit.core.plugins import PluginInfo

WAIT = 10.0  # generous upper bound for anything that must happen "soon"


def ids(messages: list[mqkit.Message]) -> list[str]:
    return [m.id for m in messages]


def fill(broker: mqkit.Broker, n: int, opts: mqkit.SubOptions | None = None) -> mqkit.Subscription:
    sub = broker.subscribe("t", opts or mqkit.SubOptions(buffer_size=max(n, 1)))
    for i in range(n):
        broker.publish("t", mqkit.Message(str(i)))
    return sub


def test_remove_front_stops_at_the_first_message_the_predicate_refuses(make_broker) -> None:
    broker = make_broker()
    sub = fill(broker, 6)
    looked: list[str] = []

    def small(message: mqkit.Message) -> bool:
        looked.append(message.id)
        return int(message.id) in (0, 1, 2, 4)

    assert ids(sub.remove_front(small)) == ["0", "1", "2"]
    assert looked == ["0", "1", "2", "3"]  # what it took and the one it stopped at: no walk
    assert ids(sub.buffered()) == ["3", "4", "5"]
    assert sub.remove_front(lambda m: False) == []
    assert ids(sub.remove_front(lambda m: True)) == ["3", "4", "5"]
    assert sub.remove_front(lambda m: True) == []  # empty


def test_remove_front_with_a_failing_predicate_removes_nothing(make_broker) -> None:
    broker = make_broker()
    sub = fill(broker, 4)

    def picky(message: mqkit.Message) -> bool:
        if message.id == "2":
            raise ValueError("predicate bug")
        return True

    with pytest.raises(ValueError, match="predicate bug"):
        sub.remove_front(picky)
    assert ids([sub.get_nowait() for _ in range(4)]) == ["0", "1", "2", "3"]


def test_remove_front_makes_room_for_a_blocked_publisher(make_broker) -> None:
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
    assert ids(sub.remove_front(lambda m: m.id == "m1")) == ["m1"]
    thread.join(WAIT)  # released by the room remove_front() made, long before the 60 s timeout
    assert not thread.is_alive()
    assert ids([sub.get(timeout=WAIT)]) == ["m2"]
    assert sub.stats().dropped == 0


class _PlainBuffer(deque[mqkit.Message]):
    """A third-party buffer that has no ``take_front``."""

    def evict(self, incoming: mqkit.Message, /) -> mqkit.Message:
        return self.popleft()


class _PlainBufferPlugin:
    plugin_info = PluginInfo(name="plain-buffer", description="a buffer without take_front")

    @hookimpl
    def mqkit_subscription_buffer(
        self, broker: mqkit.Broker, subscription: mqkit.Subscription
    ) -> _PlainBuffer:
        return _PlainBuffer()


def test_a_buffer_without_take_front_is_walked(make_broker) -> None:
    broker = make_broker(objects=[_PlainBufferPlugin()])
    sub = fill(broker, 5)
    assert ids(sub.remove_front(lambda m: int(m.id) % 2 == 0)) == ["0", "2", "4"]
    assert ids([sub.get_nowait(), sub.get_nowait()]) == ["1", "3"]


def _remove_front_while_consuming(broker: mqkit.Broker, n: int) -> None:
    sub = fill(broker, n)
    got: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    go = threading.Event()

    def consume(out: list[int]) -> None:
        go.wait(WAIT)
        try:
            out.extend(int(m.id) for m in sub)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(out,)) for out in got]
    for thread in threads:
        thread.start()
    go.set()
    taken: list[int] = []
    for limit in range(n // 8, n + 1, n // 8):
        taken += [int(m.id) for m in sub.remove_front(lambda m, x=limit: int(m.id) < x)]
    sub.cancel()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(got[0] + got[1] + taken) == list(range(n))  # no loss, no duplicate


def test_remove_front_while_consumers_pop(make_broker) -> None:
    """Consumers pop without the lock: nothing lost, nothing handed out twice, no exception."""
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches inside remove_front() become likely
    try:
        for _ in range(5):
            _remove_front_while_consuming(make_broker(), 4000)
    finally:
        sys.setswitchinterval(old_interval)
