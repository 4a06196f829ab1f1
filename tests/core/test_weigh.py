"""``Taps.weigh``: a subscription keeps a plugin's own measure of its buffer, on every path.

The AMQP gateway's ``x-max-length-bytes`` reads it instead of walking the queue; these tests
hold the sum against a walk of ``buffered()`` after every kind of change.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mqkit
from mqkit import Backpressure, Message, PriorityMessage, SubOptions, Taps
from mqkit.testing import make_broker


def _weight(message: Message) -> int:
    data = message.data
    if data == "boom":
        raise ValueError("cannot weigh this one")
    return len(data) if isinstance(data, str) else 0


class _Weigher:
    """A third-party plugin weighing the subscriptions of topics starting with "w"."""

    def __init__(self, on: bool = True) -> None:
        self.on = on

    @mqkit.hookimpl
    def mqkit_subscription_taps(self, subscription: mqkit.Subscription) -> Taps | None:
        if not self.on or not subscription.topic.startswith("w"):
            return None
        return Taps(weigh=_weight)


def _walk(sub: mqkit.Subscription) -> int:
    return sum(0 if m.data == "boom" else len(m.data) for m in sub.buffered())


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 40), st.integers(0, 3)),
        st.tuples(st.just("get"), st.integers(1, 4), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("remove_front"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("redeliver"), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(
    ops=_OPS,
    plugins=st.sampled_from([(), ("priority",), ("memory",), ("priority", "memory")]),
    policy=st.sampled_from([Backpressure.DROP_OLDEST, Backpressure.DROP_NEWEST]),
)
def test_the_weighed_sum_follows_every_change_of_the_buffer(
    ops: list[tuple[str, int, int]], plugins: tuple[str, ...], policy: Backpressure
) -> None:
    config = mqkit.Config(max_memory_usage=1 << 30) if "memory" in plugins else None
    with make_broker(*plugins, config=config, objects=[_Weigher()]) as broker:
        sub = broker.subscribe("w", SubOptions(buffer_size=8, policy=policy))
        taken: list[Message] = []
        for n, (op, a, b) in enumerate(ops):
            if op == "publish":
                data = "boom" if a == 0 else "x" * a
                message: Message = (
                    PriorityMessage(f"m{n}", data, priority=b * 10) if b else Message(f"m{n}", data)
                )
                broker.publish("w", message)
            elif op == "get":
                taken += sub.get_many(a, timeout=0) if sub.stats().queue_len else []
            elif op == "remove":
                sub.remove(lambda m, a=a: len(m.data) % 2 == a % 2)
            elif op == "remove_front":
                sub.remove_front(lambda m, a=a: len(m.data) < a)
            elif taken:
                sub.redeliver(taken.pop())
            assert sub.weighed == _walk(sub), op
        sub.get_many(100, timeout=0) if sub.stats().queue_len else None
        assert sub.weighed == _walk(sub) == 0


def test_a_weigher_counts_what_was_buffered_before_it_and_only_its_subscriptions() -> None:
    weigher = _Weigher(on=False)
    with make_broker(objects=[weigher]) as broker:
        weighed = broker.subscribe("w", SubOptions(buffer_size=100))
        other = broker.subscribe("other", SubOptions(buffer_size=100))
        for topic in ("w", "other"):
            broker.publish(topic, Message("a", "xyz"))
            broker.publish(topic, Message("b", "boom"))  # the weigher fails: it weighs 0
        assert weighed.weighed == 0
        # The plugin set changes (the memory plugin comes): taps are chosen again.
        weigher.on = True
        broker.update_config(broker.config.replace(max_memory_usage=1 << 20, disable_plugins=()))
        assert (weighed.weighed, other.weighed) == (3, 0)
        assert weighed.buffered_bytes > 0  # metering bytes too leaves the weighed sum alone
        broker.publish("w", Message("c", "12345"))
        assert weighed.weighed == 8
        assert weighed.get_nowait().id == "a"
        assert weighed.weighed == 5
        broker.update_config(broker.config.replace(max_memory_usage=0))  # memory goes
        assert weighed.buffered_bytes == 0 and weighed.weighed == 5
        assert weighed.get_nowait().id == "b"
        assert weighed.weighed == 5
        weigher.on = False
        broker.update_config(broker.config.replace(max_memory_usage=1 << 20, disable_plugins=()))
        assert weighed.weighed == 0  # no weigher: nothing kept
        weigher.on = True
        broker.update_config(broker.config.replace(max_memory_usage=0))
        assert weighed.weighed == 5
        weighed.cancel()
        assert weighed.weighed == 0


@pytest.mark.parametrize("policy", [Backpressure.DROP_OLDEST, Backpressure.DROP_NEWEST])
def test_a_full_buffer_weighs_what_it_keeps(policy: Backpressure) -> None:
    with make_broker("ttl", objects=[_Weigher()]) as broker:
        sub = broker.subscribe("w", SubOptions(buffer_size=3, policy=policy))
        for i in range(10):
            broker.publish("w", Message(f"m{i}", "x" * (i + 1)))
        kept = [len(m.data) for m in sub.buffered()]
        assert kept == ([8, 9, 10] if policy is Backpressure.DROP_OLDEST else [1, 2, 3])
        assert sub.weighed == sum(kept)


def test_a_weigher_that_raises_is_reported_as_a_plugin_error() -> None:
    """It counts as 0 and the buffer changes all the same; health_check() names it."""
    clock = mqkit.FakeClock()
    with make_broker(objects=[_Weigher()], clock=clock) as broker:
        sub = broker.subscribe("w")
        broker.publish("w", Message("a", "boom"))  # fails as it enters the buffer
        broker.publish("w", Message("b", "xyz"))
        assert sub.weighed == 3
        clock.advance(0)  # the report runs on the timer service, with no lock held
        problems = broker.health_check().problems
        assert f"plugin 'weigh of subscription #{sub.id}' failed 1 time(s)" in problems
        assert [m.id for m in (sub.get_nowait(), sub.get_nowait())] == ["a", "b"]
        assert sub.weighed == 0  # "a" failed again as it left: a second report
        clock.advance(0)
        problems = broker.health_check().problems
        assert f"plugin 'weigh of subscription #{sub.id}' failed 2 time(s)" in problems
