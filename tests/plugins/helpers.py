"""Small helpers shared by the feature-plugin tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import mqkit
from mqkit.testing import FakeClock, HookRecorder

MakeBroker = Callable[..., mqkit.Broker]

DLQ = "dlq"
"""The dead letter topic every test that turns the DLQ on uses."""


def drain(sub: mqkit.Subscription) -> list[mqkit.Message]:
    """Every message the subscription hands out now, in order (never waits)."""
    out: list[mqkit.Message] = []
    while True:
        try:
            out.append(sub.get_nowait())
        except (TimeoutError, mqkit.SubscriptionClosedError):
            return out


def drain_ids(sub: mqkit.Subscription) -> list[str]:
    """The ids of ``drain(sub)``."""
    return [m.id for m in drain(sub)]


def in_(clock: FakeClock, seconds: float) -> datetime:
    """The fake instant ``seconds`` from now."""
    return clock.now() + timedelta(seconds=seconds)


def drops(recorder: HookRecorder) -> list[tuple[str, str]]:
    """(message id, reason) of every recorded ``mqkit_drop``."""
    return [(c.message.id, c.reason) for c in recorder.of("mqkit_drop")]


def dead_letter_summary(broker: mqkit.Broker) -> list[tuple[str, str, str, int]]:
    """(id, original topic, reason, attempts) of every dead letter, oldest first."""
    return [(d.message.id, d.original_topic, d.reason, d.attempts) for d in broker.dead_letters()]
