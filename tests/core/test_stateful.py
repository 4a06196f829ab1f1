"""A model-based test: publish / subscribe / cancel / get against a simple model."""

from __future__ import annotations

import itertools

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

import mqkit
from mqkit.testing import FakeClock
from mqkit.testing import make_broker as build_broker

TOPICS = ["a", "b", "c.x", "c.y"]
PATTERNS = ["c.*", "?", "[ab]"]
BIG = 10_000


@attrs.define(eq=False)
class ModelSub:
    """What one subscription should hold: a FIFO list, its bound and its counters."""

    real: mqkit.Subscription
    key: str
    pattern: bool
    cap: int
    queue: list[str] = attrs.field(factory=list)
    received: int = 0
    dropped: int = 0
    delivered: int = 0
    closed: bool = False

    def matches(self, topic: str) -> bool:
        if not self.pattern:
            return self.key == topic
        return {
            "c.*": topic.startswith("c."),
            "?": len(topic) == 1,
            "[ab]": topic in ("a", "b"),
        }[self.key]

    def offer(self, message_id: str) -> None:
        """DROP_OLDEST: the new message always gets in; a full buffer loses its oldest."""
        self.received += 1
        self.queue.append(message_id)
        if len(self.queue) > self.cap:
            self.queue.pop(0)
            self.dropped += 1


class BrokerMachine(RuleBasedStateMachine):
    subs = Bundle("subs")

    def __init__(self) -> None:
        super().__init__()
        self.broker = build_broker(clock=FakeClock())
        self.live: dict[str, list[ModelSub]] = {}  # key -> live model subscriptions
        self.ids = itertools.count()

    def _add(self, sub: mqkit.Subscription, key: str, pattern: bool, cap: int) -> ModelSub:
        model = ModelSub(sub, key, pattern, cap)
        self.live.setdefault(key, []).append(model)
        return model

    def _deliver(self, topic: str, message_id: str) -> None:
        for models in self.live.values():
            for model in models:
                if model.matches(topic):
                    model.offer(message_id)

    @initialize()
    def start(self) -> None:
        assert self.broker.topics() == []

    @rule(target=subs, topic=st.sampled_from(TOPICS))
    def subscribe(self, topic: str) -> ModelSub:
        sub = self.broker.subscribe(topic, mqkit.SubOptions(buffer_size=BIG))
        return self._add(sub, topic, pattern=False, cap=BIG)

    @rule(target=subs, topic=st.sampled_from(TOPICS), cap=st.integers(1, 3))
    def subscribe_small_drop_oldest(self, topic: str, cap: int) -> ModelSub:
        opts = mqkit.SubOptions(buffer_size=cap, policy=mqkit.Backpressure.DROP_OLDEST)
        return self._add(self.broker.subscribe(topic, opts), topic, pattern=False, cap=cap)

    @rule(target=subs, pattern=st.sampled_from(PATTERNS))
    def subscribe_pattern(self, pattern: str) -> ModelSub:
        sub = self.broker.subscribe_pattern(pattern, mqkit.SubOptions(buffer_size=BIG))
        return self._add(sub, pattern, pattern=True, cap=BIG)

    @rule(topic=st.sampled_from(TOPICS))
    def publish(self, topic: str) -> None:
        message_id = f"m{next(self.ids)}"
        self.broker.publish(topic, mqkit.Message(message_id))
        self._deliver(topic, message_id)

    @rule(topic=st.sampled_from(TOPICS), n=st.integers(0, 4))
    def publish_batch(self, topic: str, n: int) -> None:
        batch = [f"m{next(self.ids)}" for _ in range(n)]
        self.broker.publish_batch(topic, [mqkit.Message(i) for i in batch])
        for message_id in batch:
            self._deliver(topic, message_id)

    @rule(topic=st.sampled_from(TOPICS))
    def publish_invalid(self, topic: str) -> None:
        with pytest.raises(mqkit.InvalidMessageError):
            self.broker.publish_batch(topic, [mqkit.Message("ok"), mqkit.Message("")])

    @rule(model=subs)
    def cancel(self, model: ModelSub) -> None:
        model.real.cancel()
        if not model.closed:
            model.closed = True
            self.live[model.key].remove(model)
            if not self.live[model.key]:
                del self.live[model.key]

    @rule(model=subs)
    def get(self, model: ModelSub) -> None:
        if model.queue:
            assert model.real.get_nowait().id == model.queue.pop(0)
            model.delivered += 1
        elif model.closed:
            with pytest.raises(mqkit.SubscriptionClosedError):
                model.real.get_nowait()
        else:
            with pytest.raises(TimeoutError):
                model.real.get_nowait()

    @rule(model=subs)
    def drain(self, model: ModelSub) -> None:
        if not model.closed:
            return
        assert [m.id for m in model.real] == model.queue
        model.queue.clear()

    @invariant()
    def stats_match(self) -> None:
        for models in self.live.values():
            for model in models:
                stats = model.real.stats()
                assert stats == mqkit.SubscriptionStats(
                    received=model.received,
                    dropped=model.dropped,
                    queue_len=len(model.queue),
                    queue_cap=model.cap,
                    delivered=model.delivered,
                )
                assert not model.real.closed

    @invariant()
    def topics_match(self) -> None:
        exact = sorted(k for k, models in self.live.items() if models and k not in PATTERNS)
        assert self.broker.topics() == exact
        snap = self.broker.metrics()
        assert snap.active_topics == len(self.live)
        assert snap.active_subscribers == sum(len(m) for m in self.live.values())

    def teardown(self) -> None:
        self.broker.close()
        for models in self.live.values():
            for model in models:
                assert model.real.closed
                assert [m.id for m in model.real] == model.queue


BrokerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    database=None,
)
TestBrokerMachine = BrokerMachine.TestCase
