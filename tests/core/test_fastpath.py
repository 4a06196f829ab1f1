"""The per-message path: taps chosen once per subscription, counters the consumers do not pay
for, ``get_many``, and the broker defaults calling no hook for a plain message."""

from __future__ import annotations

import asyncio
import threading

import pytest

import mqkit
from mqkit import Config, Message, PriorityMessage, SubOptions, Taps
from mqkit.core.subscription import FifoBuffer
from mqkit.testing import make_broker as build


class _Tapper:
    """A third-party plugin that withholds messages whose id starts with "x" and samples."""

    def __init__(self) -> None:
        self.sampled: list[tuple[str, int]] = []
        self.asked = 0

    @mqkit.hookimpl
    def mqkit_subscription_taps(self, subscription: mqkit.Subscription) -> Taps:
        self.asked += 1
        return Taps(withhold=self.withhold, sample=self.sample)

    def withhold(self, subscription: mqkit.Subscription, message: Message) -> bool:
        return message.id.startswith("x")

    def sample(self, subscription: mqkit.Subscription, message: Message, weight: int) -> None:
        self.sampled.append((message.id, weight))


class _Broken:
    @mqkit.hookimpl
    def mqkit_subscription_taps(self, subscription: mqkit.Subscription) -> Taps:
        raise RuntimeError("no taps today")


def test_taps_withhold_and_sample_without_a_hook_per_message(make_broker) -> None:
    tapper = _Tapper()
    broker = make_broker(objects=[tapper])
    sub = broker.subscribe("t", SubOptions(buffer_size=1000))
    for i in range(200):
        broker.publish("t", Message(f"x{i}" if i % 10 == 0 else f"m{i}"))
    got = [m.id for m in sub.get_many(1000, timeout=0)]
    assert got == [f"m{i}" for i in range(200) if i % 10]
    stats = sub.stats()
    assert (stats.received, stats.delivered, stats.queue_len) == (200, 180, 0)
    # Every hand-out of the first 64 is sampled (weight 1), then one in 64 (weight 64).
    assert [w for _, w in tapper.sampled[:64]] == [1] * 64
    assert [w for _, w in tapper.sampled[64:]] == [64] * len(tapper.sampled[64:])
    # One in 64 taken from the buffer (the 20 withheld count as taken too).
    assert len(tapper.sampled) == 64 + (200 - 64) // 64
    assert tapper.asked == 1


def test_a_failing_taps_plugin_is_reported_and_left_out(make_broker) -> None:
    broker = make_broker(objects=[_Broken()])
    sub = broker.subscribe("t")
    broker.publish("t", Message("m"))
    assert sub.get_nowait().id == "m"
    assert broker.health_check().status == "degraded"


def test_taps_are_chosen_again_when_the_plugin_set_changes() -> None:
    with build("ttl") as broker:
        sub = broker.subscribe("t")
        assert sub.stats().buffered_bytes == 0
        broker.publish("t", Message("before", "x" * 100))
        broker.update_config(broker.config.replace(max_memory_usage=1 << 20, disable_plugins=()))
        assert broker.has_plugin("memory")
        held = broker.memory_usage()
        assert held > 100 and sub.stats().buffered_bytes == held  # counted when switched on
        assert sub.get_nowait().id == "before"
        assert broker.memory_usage() == 0


def test_broker_defaults_call_no_hook_for_a_plain_message() -> None:
    with mqkit.Broker() as broker:
        sub = broker.subscribe("t")
        broker.publish("t", Message("m"))
        assert sub.get_nowait().id == "m"
        hooks = broker.hooks
        assert not hooks.published_on and not hooks.delivered_on
        assert Message in hooks.publish_idle and Message in hooks.take_idle
        assert Message in hooks.buffer_idle  # the priority plugin's buffer is not needed
        assert broker.metrics().total_delivered == 1


class _DeliveredPriority:
    """Records the ``mqkit_delivered`` calls for priority messages (narrowed to that class)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @mqkit.hookimpl
    @mqkit.for_messages(lambda cls, config: issubclass(cls, PriorityMessage))
    def mqkit_delivered(self, subscription: mqkit.Subscription, message: Message) -> None:
        self.seen.append(message.id)


@pytest.mark.parametrize("sampled", [False, True])
def test_an_age_limit_alone_passes_young_messages_and_withholds_old_ones(
    make_broker, fake_clock, sampled: bool
) -> None:
    # message_ttl's age limit is the subscription's only take-side tap: a young message of a
    # class no take hook concerns passes on a short test; anything else takes the full way.
    recorder = _DeliveredPriority()
    plugins = ("ttl", "metrics") if sampled else ("ttl",)
    broker = make_broker(*plugins, config=Config(message_ttl=0.5), objects=[recorder])
    sub = broker.subscribe("t", SubOptions(buffer_size=1000))
    for i in range(100):
        broker.publish("t", PriorityMessage(f"p{i}") if i % 10 == 0 else Message(f"m{i}"))
    got = [sub.get_nowait().id for _ in range(60)]
    assert got == [f"{'p' if i % 10 == 0 else 'm'}{i}" for i in range(60)]
    assert recorder.seen == [f"p{i}" for i in range(0, 60, 10)]
    fake_clock.advance(0.6)  # the 40 left are too old now (the first sweep, at 1 s, has not run)
    broker.publish("t", Message("fresh"))
    assert [m.id for m in sub.get_many(100, timeout=0)] == ["fresh"]
    assert recorder.seen == [f"p{i}" for i in range(0, 60, 10)]
    stats = sub.stats()
    assert (stats.received, stats.delivered, stats.queue_len) == (101, 61, 0)
    if sampled:
        assert broker.metrics().total_delivered == 61


# -- get_many ----------------------------------------------------------------------------------


def test_get_many_takes_what_is_buffered_up_to_max(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    for i in range(5):
        broker.publish("t", Message(str(i)))
    assert [m.id for m in sub.get_many(3)] == ["0", "1", "2"]
    assert [m.id for m in sub.get_many(10, timeout=0)] == ["3", "4"]
    with pytest.raises(TimeoutError):
        sub.get_many(10, timeout=0)
    sub.cancel()
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get_many(1)


def test_get_many_waits_for_the_first_message(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    got: list[list[str]] = []
    waiting = threading.Thread(target=lambda: got.append([m.id for m in sub.get_many(5)]))
    waiting.start()
    broker.publish("t", Message("m"))
    waiting.join(10)
    assert got and got[0][0] == "m"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3", None])
def test_get_many_refuses_a_bad_max_before_taking_anything(make_broker, bad: object) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", Message("m"))
    with pytest.raises(mqkit.InvalidArgumentError, match="max_messages"):
        sub.get_many(bad)  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidArgumentError, match="max_messages"):
        asyncio.run(sub.aget_many(bad))  # type: ignore[arg-type]
    assert sub.get_nowait().id == "m"  # nothing was taken


def test_aget_many(make_broker) -> None:
    broker = make_broker("ttl", "memory", config=Config(max_memory_usage=1 << 20))
    sub = broker.subscribe("t")

    async def main() -> list[str]:
        for i in range(4):
            broker.publish("t", Message(str(i)))
        first = await sub.aget_many(3, timeout=1)
        rest = await sub.aget_many(3, timeout=1)
        return [m.id for m in first + rest]

    assert asyncio.run(main()) == ["0", "1", "2", "3"]
    assert broker.memory_usage() == 0


def test_get_many_skips_withheld_messages(make_broker, fake_clock) -> None:
    broker = make_broker("ttl", config=Config(message_ttl=10))
    sub = broker.subscribe("t")
    broker.publish("t", Message("old"))
    fake_clock.advance(5)
    broker.publish("t", Message("new"))
    fake_clock.advance(6)  # "old" expired, "new" did not
    assert [m.id for m in sub.get_many(5)] == ["new"]
    assert sub.stats().delivered == 1


# -- the lazy priority buffer --------------------------------------------------------------------


def test_plain_messages_keep_a_fifo_until_a_priority_message_arrives(make_broker) -> None:
    broker = make_broker("priority")
    sub = broker.subscribe("t")
    for i in range(3):
        broker.publish("t", Message(f"plain-{i}"))
    assert type(sub._buf).__name__ == "FifoBuffer"
    broker.publish("t", PriorityMessage("urgent", priority=mqkit.Priority.HIGH))
    broker.publish("t", PriorityMessage("low", priority=mqkit.Priority.LOW))
    broker.publish("t", Message("plain-3"))
    assert type(sub._buf).__name__ == "PriorityBuffer"
    got = [m.id for m in sub.get_many(10)]
    assert got == ["urgent", "plain-0", "plain-1", "plain-2", "plain-3", "low"]


def test_a_priority_batch_and_a_transaction_move_the_buffer_too(make_broker) -> None:
    broker = make_broker("priority", "transactions")
    sub = broker.subscribe("t")
    broker.publish("t", Message("plain"))
    with broker.transaction() as tx:
        tx.publish("t", PriorityMessage("high", priority=30))
    broker.publish_batch("t", [PriorityMessage("low", priority=0), Message("plain-2")])
    assert [m.id for m in sub.get_many(10)] == ["high", "plain", "plain-2", "low"]


# -- a consumer that looked while another took the last message ------------------------------


class _Raced(FifoBuffer):
    """A buffer that holds a message but whose next two pops find it gone: what a consumer
    sees when a lock-free consumer takes the last message between its look and its pop."""

    __slots__ = ("races",)

    def popleft(self) -> Message:
        if self.races:
            self.races -= 1
            raise IndexError("taken by another consumer")
        return super().popleft()


class _RacedPlugin:
    def __init__(self) -> None:
        self.buffer = _Raced()
        self.buffer.races = 0

    @mqkit.hookimpl
    def mqkit_subscription_buffer(self) -> FifoBuffer:
        return self.buffer


def test_a_get_whose_pop_lost_the_race_waits_instead_of_raising(make_broker) -> None:
    plugin = _RacedPlugin()
    broker = make_broker(objects=[plugin])
    sub = broker.subscribe("t")
    broker.publish("t", Message("m"))
    plugin.buffer.races = 2  # the lock-free pop and the pop under the lock both lose
    with pytest.raises(TimeoutError):
        sub.get(timeout=0)
    assert sub.get(timeout=0).id == "m"  # it was there all along: nothing lost
