"""Port of the seed's ``priority_test.go`` (seed-spec §4.5).

The seed's priority heap only reordered messages racing for its dispatcher goroutine; a single
publisher always saw FIFO order (defect §5.14). mqkit orders each subscription's buffer, so the
white-box heap test becomes an ordering test through the public API.
"""

from __future__ import annotations

import threading

import pytest

import mqkit


def test_priority_queue_ordering(make_broker, drain) -> None:
    # Go pushes (Low, seq 2), (High, 1), (High, 3), (Normal, 4) and pops (High,1), (High,3),
    # (Normal,4), (Low,2): higher priority first, FIFO (by sequence) within a level.
    broker = make_broker("priority")
    sub = broker.subscribe("priority-topic")
    broker.publish_priority(
        "priority-topic", mqkit.PriorityMessage("high-1", priority=mqkit.Priority.HIGH)
    )
    broker.publish_priority(
        "priority-topic", mqkit.PriorityMessage("low-2", priority=mqkit.Priority.LOW)
    )
    broker.publish_priority(
        "priority-topic", mqkit.PriorityMessage("high-3", priority=mqkit.Priority.HIGH)
    )
    broker.publish_priority(
        "priority-topic", mqkit.PriorityMessage("normal-4", priority=mqkit.Priority.NORMAL)
    )
    assert [m.id for m in drain(sub)] == ["high-1", "high-3", "normal-4", "low-2"]


class _Cancelled(mqkit.MQError):
    default = "publish cancelled"


class _CancelToken:
    """A plugin that refuses publishes while cancelled: the analogue of a cancelled context."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    @mqkit.hookimpl
    def mqkit_publish(self) -> None:
        if self.cancelled.is_set():
            raise _Cancelled()


def test_publish_priority_respects_context_cancel(make_broker) -> None:
    # Python has no context.Context, and mqkit's publish_priority never waits for a dispatcher
    # (DESIGN), so there is no wait to interrupt. The fact kept: a priority publish the caller
    # has cancelled fails, and nothing of it is published. Cancellation here is a plugin that
    # refuses publishes while its token is set.
    token = _CancelToken()
    broker = make_broker("priority", "metrics", objects=[token])
    sub = broker.subscribe("topic")
    token.cancelled.set()
    with pytest.raises(_Cancelled):
        broker.publish_priority("topic", mqkit.PriorityMessage("p-1", priority=40))
    assert sub.stats().received == 0
    assert broker.metrics().total_published == 0
    token.cancelled.clear()
    broker.publish_priority("topic", mqkit.PriorityMessage("p-2", priority=40))
    assert sub.get_nowait().id == "p-2"
