"""Port of the seed's ``ttl_test.go`` (seed-spec §4.7).

The seed's ``ttlTracker`` only bookkept expiry: a buffered message was handed out even after it
expired (defect §5.5). mqkit enforces TTL at delivery and sweeps expired messages out of buffers
every second, so the white-box tracker tests become assertions on what a consumer gets, on
``sub.stats()``, on ``metrics()`` and on the ``mqkit_expire`` hook. Time is the fake clock's.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

import mqkit
from mqkit.testing import FakeClock


def after(clock: FakeClock, seconds: float) -> datetime:
    return clock.now() + timedelta(seconds=seconds)


def ttl_broker(make_broker, message_ttl: float, *extra: str, objects=()) -> mqkit.Broker:
    return make_broker(
        "ttl", "metrics", *extra, config=mqkit.Config(message_ttl=message_ttl), objects=objects
    )


def test_ttl_tracker_basic(make_broker, fake_clock: FakeClock) -> None:
    broker = ttl_broker(make_broker, 1.0)
    assert broker.has_plugin("ttl")  # Go: ttlTracker != nil
    sub = broker.subscribe("test-topic")
    broker.publish_ttl("test-topic", mqkit.TTLMessage("msg-1", expires_at=after(fake_clock, 1)))
    assert sub.stats().queue_len == 1  # Go: stats() == (1 tracked, 0 expired)
    assert broker.metrics().total_expired == 0
    fake_clock.advance(0.5)
    assert sub.get_nowait().id == "msg-1"  # not yet expired: handed out
    assert sub.stats().queue_len == 0  # Go: remove -> 0 tracked


def test_ttl_tracker_expiration(make_broker, fake_clock: FakeClock, hook_recorder) -> None:
    broker = ttl_broker(make_broker, 0.1, objects=[hook_recorder])
    sub = broker.subscribe("test-topic")
    broker.publish_ttl("test-topic", mqkit.TTLMessage("msg-1", expires_at=after(fake_clock, 0.05)))
    fake_clock.advance(0.1)  # expired while buffered (before the 1 s sweep)
    # Seed defect §5.5: the seed still handed it out. mqkit withholds it at delivery.
    with pytest.raises(TimeoutError):
        sub.get_nowait()
    [expired] = hook_recorder.of("mqkit_expire")
    assert (expired.topic, expired.message.id) == ("test-topic", "msg-1")
    assert broker.metrics().total_expired == 1


def test_ttl_tracker_cleanup(make_broker, fake_clock: FakeClock, hook_recorder) -> None:
    broker = ttl_broker(make_broker, 0.1, objects=[hook_recorder])
    sub = broker.subscribe("test-topic")
    broker.publish_ttl("test-topic", mqkit.TTLMessage("msg-1", expires_at=after(fake_clock, 0.05)))
    assert sub.stats().queue_len == 1
    fake_clock.advance(1.5)  # the 1 s sweep removes it, with no consumer involved
    assert sub.stats().queue_len == 0
    assert [c.message.id for c in hook_recorder.of("mqkit_expire")] == ["msg-1"]


def test_publish_ttl_success(make_broker, fake_clock: FakeClock) -> None:
    broker = ttl_broker(make_broker, 5.0)
    sub = broker.subscribe("test-topic")
    broker.publish_ttl("test-topic", mqkit.TTLMessage("ttl-1", expires_at=after(fake_clock, 5)))
    assert sub.stats().queue_len == 1
    got = sub.get(timeout=0.1)
    assert got.id == "ttl-1"
    assert type(got) is mqkit.TTLMessage


def test_publish_ttl_expired(make_broker, fake_clock: FakeClock) -> None:
    broker = ttl_broker(make_broker, 5.0)
    sub = broker.subscribe("test-topic")
    with pytest.raises(mqkit.MessageExpiredError, match=r"^mq: message has expired: "):
        broker.publish_ttl("test-topic", mqkit.TTLMessage("e-1", expires_at=after(fake_clock, -1)))
    assert sub.stats().received == 0


def test_publish_ttl_no_expiration(make_broker, fake_clock: FakeClock) -> None:
    # Go: a zero ExpiresAt means no TTL. A Python message without an expiry is one without
    # expires_at; with message_ttl 0 nothing gives it one, so it never expires.
    broker = ttl_broker(make_broker, 0)
    sub = broker.subscribe("test-topic")
    broker.publish("test-topic", mqkit.Message("no-ttl"))
    fake_clock.advance(24 * 3600)
    assert sub.get_nowait().id == "no-ttl"
    assert broker.metrics().total_expired == 0


def test_message_ttl_is_the_default_expiry(make_broker, fake_clock: FakeClock) -> None:
    # Not a Go test: seed defect §5.5 (Config.MessageTTL's value was never used). In mqkit
    # message_ttl is the expiry of a message that carries none.
    broker = ttl_broker(make_broker, 5.0)
    sub = broker.subscribe("test-topic")
    broker.publish("test-topic", mqkit.Message("early"))
    broker.publish("test-topic", mqkit.Message("late"))
    fake_clock.advance(4.9)
    assert sub.get_nowait().id == "early"
    fake_clock.advance(0.1)
    with pytest.raises(TimeoutError):
        sub.get_nowait()
    assert broker.metrics().total_expired == 1


def test_publish_priority_ttl(make_broker, fake_clock: FakeClock) -> None:
    broker = ttl_broker(make_broker, 5.0, "priority")
    sub = broker.subscribe("test-topic")
    broker.publish_priority_ttl(
        "test-topic",
        mqkit.PriorityTTLMessage(
            "priority-ttl-1", priority=mqkit.Priority.HIGH, expires_at=after(fake_clock, 5)
        ),
    )
    assert sub.stats().queue_len == 1
    got = sub.get(timeout=0.1)
    assert (got.id, got.priority) == ("priority-ttl-1", mqkit.Priority.HIGH)


def test_publish_with_ack_ttl(make_broker, fake_clock: FakeClock) -> None:
    broker = ttl_broker(make_broker, 5.0, "ack")
    sub = broker.subscribe("test-topic")
    broker.publish_with_ack_ttl(
        "test-topic",
        mqkit.AckTTLMessage(
            "ack-ttl-1",
            ack_id="ack-ttl-1-ack",
            ack_policy=mqkit.AckPolicy.REQUIRED,
            ack_timeout=1,
            expires_at=after(fake_clock, 5),
        ),
    )
    assert sub.stats().queue_len == 1  # Go: TTL tracked 1
    assert sub.get(timeout=0.1).id == "ack-ttl-1"
    ack = broker.get_plugin("ack")
    assert ack.pending_count() == 1  # Go: ack pending 1
    broker.ack("test-topic", "ack-ttl-1-ack")
    assert ack.pending_count() == 0


def test_ttl_tracker_close(make_broker, fake_clock: FakeClock, hook_recorder) -> None:
    broker = ttl_broker(make_broker, 1.0, objects=[hook_recorder])
    broker.subscribe("test-topic")
    broker.publish_ttl("test-topic", mqkit.TTLMessage("msg-1", expires_at=after(fake_clock, 0.5)))
    broker.close()
    with pytest.raises(mqkit.BrokerClosedError):
        broker.publish_ttl("test-topic", mqkit.TTLMessage("msg-2", expires_at=after(fake_clock, 5)))
    # Go: the tracker is cleared and its loop stopped. mqkit: the sweep timer is gone, so
    # nothing expires in the background after close.
    assert broker.timers.pending == 0
    fake_clock.advance(5)
    assert hook_recorder.of("mqkit_expire") == []


def test_ttl_disabled(fake_clock: FakeClock, make_broker) -> None:
    # Go: with the default config there is no tracker, but PublishTTL still works. In mqkit the
    # ttl plugin loads by default (DESIGN: a message's own expires_at is always honoured).
    with mqkit.Broker(clock=fake_clock) as broker:
        assert broker.config.message_ttl == 0
        assert broker.has_plugin("ttl")
        sub = broker.subscribe("test-topic")
        broker.publish_ttl("test-topic", mqkit.TTLMessage("m-1", expires_at=after(fake_clock, 1)))
        assert sub.get_nowait().id == "m-1"
    # Only a broker without the ttl plugin refuses TTL messages.
    broker = make_broker()
    with pytest.raises(mqkit.FeatureNotEnabledError, match="ttl"):
        broker.publish_ttl("test-topic", mqkit.TTLMessage("m-2", expires_at=after(fake_clock, 1)))


def test_validate_ttl(make_broker, fake_clock: FakeClock) -> None:
    # Go calls validateTTL directly; here it is observed through publish_ttl.
    broker = ttl_broker(make_broker, 0)
    broker.publish_ttl("t", mqkit.TTLMessage("future", expires_at=after(fake_clock, 30)))
    broker.publish("t", mqkit.Message("no-expiry"))  # Go: zero ExpiresAt -> nil
    expired_at = after(fake_clock, -1)
    with pytest.raises(mqkit.MessageExpiredError) as caught:
        broker.publish_ttl("t", mqkit.TTLMessage("past", expires_at=expired_at))
    assert str(caught.value) == (
        f"mq: message has expired: message expired at {expired_at.isoformat()}"
    )
    # mqkit also refuses an instant it cannot compare (a naive datetime).
    with pytest.raises(mqkit.InvalidMessageError, match="timezone-aware"):
        broker.publish_ttl(
            "t", mqkit.TTLMessage("naive", expires_at=after(fake_clock, 30).replace(tzinfo=None))
        )


def test_ttl_tracker_concurrent(make_broker, fake_clock: FakeClock, run_concurrently, drain):
    # Go only logs when fewer than 100 are tracked. Here all 100 must be buffered and handed out.
    broker = ttl_broker(make_broker, 10.0)
    sub = broker.subscribe("test-topic", mqkit.SubOptions(buffer_size=200))
    ids = [chr(i) for i in range(100)]
    expires = after(fake_clock, 10)
    run_concurrently(
        100,
        lambda i: broker.publish_ttl("test-topic", mqkit.TTLMessage(ids[i], expires_at=expires)),
    )
    assert sub.stats().queue_len == 100
    assert sorted(m.id for m in drain(sub)) == ids
