"""The broker's public methods with the core alone (no built-in plugin loaded)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import attrs
import pytest

import mqkit
from mqkit.core.message import posix_time
from mqkit.plugins.persistence.serializer import message_to_dict
from mqkit.testing import FakeClock


def later() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


@pytest.fixture(params=["make_broker", "config"])
def bare_broker(request: pytest.FixtureRequest, make_broker) -> Iterator[mqkit.Broker]:
    """A broker without feature plugins, built both ways the brief allows."""
    if request.param == "make_broker":
        yield make_broker()
        return
    broker = mqkit.Broker(
        mqkit.Config(enable_priority_queue=False, enable_metrics=False, disable_plugins=("ttl",))
    )
    yield broker
    broker.close()


# -- publish / subscribe ---------------------------------------------------------------------------


def test_publish_subscribe_seed_case(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("topic", mqkit.SubOptions(buffer_size=1))
    broker.publish("topic", mqkit.Message("1", "payload"))
    got = sub.get(timeout=1)
    assert (got.id, got.data, got.topic) == ("1", "payload", "topic")


def test_publish_stamps_a_copy(make_broker, fake_clock: FakeClock) -> None:
    broker = make_broker()
    sub = broker.subscribe("orders")
    original = mqkit.Message("m-1", {"n": 1}, type="created", meta={"k": "v"})
    broker.publish("  orders ", original)
    got = sub.get_nowait()
    assert got is not original
    assert got.topic == "orders"
    assert got.time == fake_clock.now()
    assert got.time is not None and got.time.tzinfo is not None
    assert (got.id, got.data, got.type, dict(got.meta), got.attempt) == (
        "m-1",
        {"n": 1},
        "created",
        {"k": "v"},
        1,
    )
    # The publisher's object is untouched.
    assert original.topic == ""
    assert original.time is None


def test_published_time_reads_as_one_aware_datetime(make_broker, fake_clock: FakeClock) -> None:
    # The copy holds POSIX seconds; every way of reading ``time`` sees the same datetime.
    broker = make_broker()
    sub = broker.subscribe("t")
    fake_clock.advance(1.25)
    broker.publish("t", mqkit.Message("m", {"n": 1}))
    got = sub.get_nowait()
    assert posix_time(got) == fake_clock.now().timestamp()
    when = got.time
    assert when == fake_clock.now() == datetime(2026, 1, 1, 0, 0, 1, 250000, tzinfo=UTC)
    assert when is not None and when.utcoffset() == timedelta(0)
    assert got.time == when and posix_time(got) == 1767225601.25  # made on each read
    assert posix_time(got) == when.timestamp()
    assert got == mqkit.Message("m", {"n": 1}, topic="t", time=when)
    assert "time=datetime.datetime(2026, 1, 1, 0, 0, 1, 250000" in repr(got)
    assert message_to_dict(got)["time"] == message_to_dict(mqkit.Message("m", time=when))["time"]
    assert attrs.evolve(got, id="n").time == when


def test_published_time_with_the_real_clock() -> None:
    with mqkit.Broker(mqkit.Config(enable_metrics=False)) as broker:
        sub = broker.subscribe("t")
        before = datetime.now(UTC)
        broker.publish("t", mqkit.Message("m"))
        after = datetime.now(UTC)
        got = sub.get_nowait()
    assert got.time is not None
    assert before - timedelta(microseconds=1) <= got.time <= after + timedelta(microseconds=1)
    stamped = posix_time(got)
    assert stamped is not None and abs(stamped - got.time.timestamp()) < 1e-6


def test_a_given_time_is_kept_as_given() -> None:
    when = datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    message = mqkit.Message("m", time=when)
    assert message.time == when
    assert posix_time(message) == when.timestamp()
    assert posix_time(mqkit.Message("m")) is None and mqkit.Message("m").time is None


def test_published_type_is_kept(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.PriorityMessage("p", priority=mqkit.Priority.HIGH))
    broker.publish("t", mqkit.TTLMessage("x", expires_at=later()))
    first, second = sub.get_nowait(), sub.get_nowait()
    assert type(first) is mqkit.PriorityMessage
    assert first.priority == mqkit.Priority.HIGH
    assert type(second) is mqkit.TTLMessage


@attrs.frozen
class _Order(mqkit.Message):
    """A user's own slotted message class."""

    sku: str = attrs.field(default="", kw_only=True)


@attrs.frozen(slots=False)
class _DictOrder(mqkit.Message):
    """A user's own message class whose new fields live in a __dict__, not in slots."""

    sku: str = attrs.field(default="", kw_only=True)


@attrs.frozen
class _Sealed(mqkit.Message):
    """A user's own class that refuses subclasses."""

    sku: str = attrs.field(default="", kw_only=True)

    def __init_subclass__(cls) -> None:
        raise TypeError("sealed")


@pytest.mark.parametrize("cls", [_Order, _DictOrder, _Sealed, mqkit.AckMessage])
def test_user_message_classes_are_stamped_as_themselves(
    make_broker, fake_clock: FakeClock, cls: type[mqkit.Message]
) -> None:
    broker = make_broker("ack") if cls is mqkit.AckMessage else make_broker()
    sub = broker.subscribe("orders")
    extra = {"ack_id": "a-1"} if cls is mqkit.AckMessage else {"sku": "S-1"}
    original = cls("m-1", {"n": 1}, meta={"k": "v"}, **extra)  # type: ignore[call-arg]
    broker.publish("orders", original)
    first = sub.get_nowait()
    if cls is mqkit.AckMessage:
        sub.ack("a-1")  # an explicit ack id is taken until its message is settled
    broker.publish("orders", original)
    second = sub.get_nowait()
    for got in (first, second):
        assert type(got) is cls
        assert got == attrs.evolve(original, topic="orders", time=fake_clock.now())
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            got.topic = "elsewhere"  # type: ignore[misc]
    assert first is not second and first is not original
    assert (original.topic, original.time) == ("", None)


def test_publish_without_subscribers_is_fine(make_broker) -> None:
    broker = make_broker()
    broker.publish("nobody", mqkit.Message("m"))
    assert broker.topics() == []


def test_every_subscriber_gets_every_message(make_broker) -> None:
    broker = make_broker()
    subs = [broker.subscribe("user.created") for _ in range(3)]
    other = broker.subscribe("user.deleted")
    for i in range(5):
        broker.publish("user.created", mqkit.Message(f"m{i}"))
    for sub in subs:
        assert [sub.get_nowait().id for _ in range(5)] == [f"m{i}" for i in range(5)]
        assert sub.stats().queue_len == 0
    assert other.stats().received == 0


def test_subscribe_uses_the_default_buffer_size(make_broker) -> None:
    broker = make_broker(config=mqkit.Config(default_buffer_size=7))
    assert broker.subscribe("t").stats().queue_cap == 7
    assert broker.subscribe("t", mqkit.SubOptions(buffer_size=3)).stats().queue_cap == 3


def test_subscription_ids_and_topic(make_broker) -> None:
    broker = make_broker()
    a = broker.subscribe("  a  ")
    b = broker.subscribe("b")
    assert a.topic == "a"
    assert b.id > a.id >= 1
    assert not a.closed


# -- publish_batch ---------------------------------------------------------------------------------


def test_publish_batch_delivers_in_order(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("batch-topic", mqkit.SubOptions(buffer_size=10))
    broker.publish_batch("batch-topic", [mqkit.Message(f"msg-{i}") for i in range(1, 4)])
    assert [sub.get(timeout=1).id for _ in range(3)] == ["msg-1", "msg-2", "msg-3"]


def test_publish_batch_is_all_or_nothing(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    batch = [mqkit.Message("a"), mqkit.Message("b"), mqkit.Message(""), mqkit.Message("d")]
    with pytest.raises(mqkit.InvalidMessageError):
        broker.publish_batch("t", batch)
    with pytest.raises(mqkit.InvalidMessageError):
        broker.publish_batch("t", [mqkit.Message("a"), object()])  # type: ignore[list-item]
    assert sub.stats().received == 0


def test_publish_batch_empty_and_generator(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish_batch("t", [])
    broker.publish_batch("t", (mqkit.Message(str(i)) for i in range(3)))
    assert [sub.get_nowait().id for _ in range(3)] == ["0", "1", "2"]


def test_publish_batch_mixed_types(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish_batch("t", [mqkit.Message("a"), mqkit.PriorityMessage("b")])
    assert [type(sub.get_nowait()) for _ in range(2)] == [mqkit.Message, mqkit.PriorityMessage]


# -- subscribe_batch -------------------------------------------------------------------------------


def test_subscribe_batch_keeps_input_order(make_broker) -> None:
    broker = make_broker()
    topics = ["topic-1", "topic-2", "topic-3"]
    subs = broker.subscribe_batch(topics, mqkit.SubOptions(buffer_size=5))
    assert [s.topic for s in subs] == topics
    for i, topic in enumerate(topics):
        broker.publish(topic, mqkit.Message(f"test-{i}"))
        assert subs[i].get(timeout=1).id == f"test-{i}"
    assert all(s.stats().queue_cap == 5 for s in subs)


def test_subscribe_batch_duplicates_and_empty(make_broker) -> None:
    broker = make_broker()
    assert broker.subscribe_batch([]) == []
    a, b = broker.subscribe_batch(["x", "x"])
    assert a is not b
    broker.publish("x", mqkit.Message("m"))
    assert a.get_nowait().id == b.get_nowait().id == "m"


def test_subscribe_batch_failure_leaves_none(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.InvalidTopicError):
        broker.subscribe_batch(["a", "b", "  ", "c"])
    assert broker.topics() == []
    assert broker.metrics().active_subscribers == 0
    broker.publish("a", mqkit.Message("m"))  # nobody is left to receive it


# -- subscribe_pattern -----------------------------------------------------------------------------


def test_subscribe_pattern_receives_matching_topics(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe_pattern("user.*")
    broker.publish("user.created", mqkit.Message("1"))
    broker.publish("order.created", mqkit.Message("2"))
    broker.publish("user.deleted", mqkit.Message("3"))
    got = [sub.get_nowait() for _ in range(2)]
    assert [(m.id, m.topic) for m in got] == [("1", "user.created"), ("3", "user.deleted")]
    assert sub.topic == "user.*"
    assert sub.stats().received == 2


def test_pattern_and_exact_subscribers_both_receive(make_broker) -> None:
    broker = make_broker()
    exact = broker.subscribe("user.created")
    pattern = broker.subscribe_pattern("user.*")
    broker.publish("user.created", mqkit.Message("m"))
    assert exact.get_nowait().id == pattern.get_nowait().id == "m"


def test_invalid_pattern(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.InvalidTopicError):
        broker.subscribe_pattern("[")


# -- topics / health / metrics / memory ------------------------------------------------------------


def test_topics_lists_exact_topics_with_live_subscriptions(make_broker) -> None:
    broker = make_broker()
    assert broker.topics() == []
    b = broker.subscribe("b")
    broker.subscribe("a")
    broker.subscribe("a")
    broker.subscribe_pattern("c.*")
    assert broker.topics() == ["a", "b"]
    b.cancel()
    assert broker.topics() == ["a"]


def test_health_check_seed_case(make_broker, fake_clock: FakeClock) -> None:
    broker = make_broker()
    broker.subscribe("health-test", mqkit.SubOptions(buffer_size=1))
    broker.publish("health-test", mqkit.Message("m"))
    health = broker.health_check()
    assert health.status == "healthy"
    assert health.total_topics == 1
    assert health.total_subscribers == 1
    assert health.uptime >= 0
    assert health.timestamp == fake_clock.now()
    assert health.problems == ()
    fake_clock.advance(5)
    assert broker.health_check().uptime == pytest.approx(5.0)


def test_health_check_metrics_follow_enable_metrics(make_broker) -> None:
    broker = make_broker(config=mqkit.Config(enable_metrics=False))
    assert broker.health_check().metrics is None


def test_health_check_memory_fields(make_broker) -> None:
    broker = make_broker()
    health = broker.health_check()
    assert health.memory_usage == 0
    assert health.memory_limit == 0


def test_metrics_gauges(make_broker) -> None:
    broker = make_broker()
    snap = broker.metrics()
    assert (snap.active_topics, snap.active_subscribers) == (0, 0)
    a1 = broker.subscribe("a")
    broker.subscribe("a")
    broker.subscribe("b")
    p = broker.subscribe_pattern("c.*")
    snap = broker.metrics()
    assert (snap.active_topics, snap.active_subscribers) == (3, 4)
    a1.cancel()
    p.cancel()
    snap = broker.metrics()
    assert (snap.active_topics, snap.active_subscribers) == (2, 2)


def test_metrics_counters_stay_zero_without_the_metrics_plugin(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.Message("m"))
    sub.get_nowait()
    snap = broker.metrics()
    assert snap.total_published == snap.total_delivered == snap.total_errors == 0
    assert isinstance(snap, mqkit.MetricsSnapshot)


def test_memory_usage_is_zero_without_the_memory_plugin(make_broker) -> None:
    broker = make_broker()
    broker.subscribe("t")
    broker.publish("t", mqkit.Message("m", "x" * 10_000))
    assert broker.memory_usage() == 0


def test_core_broker_has_no_plugins(make_broker) -> None:
    assert make_broker().plugin_names() == []


# -- config ----------------------------------------------------------------------------------------


def test_config_property(make_broker) -> None:
    cfg = mqkit.Config(default_buffer_size=32, max_topics=5)
    broker = make_broker(config=cfg)
    assert broker.config.default_buffer_size == 32
    assert broker.config.max_topics == 5
    assert broker.config.enable_health_check is True


def test_default_broker_config_is_the_seed_default() -> None:
    with mqkit.Broker() as broker:
        assert broker.config.enable_health_check is True
        assert broker.config.default_buffer_size == 16


def test_update_config_seed_case(make_broker) -> None:
    broker = make_broker()
    broker.update_config(broker.config.replace(default_buffer_size=32, max_topics=9))
    assert broker.config.default_buffer_size == 32
    assert broker.config.max_topics == 9
    assert broker.subscribe("t").stats().queue_cap == 32
    before = broker.config
    with pytest.raises(mqkit.InvalidConfigError, match="default_buffer_size must be positive"):
        broker.update_config(before.replace(default_buffer_size=0))
    assert broker.config is before


def test_update_config_applies_limits_to_new_subscriptions(make_broker) -> None:
    broker = make_broker()
    broker.subscribe("a")
    broker.subscribe("b")
    broker.update_config(broker.config.replace(max_topics=2))
    with pytest.raises(mqkit.LimitExceededError):
        broker.subscribe("c")


def test_update_config_rejects_non_config(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.InvalidConfigError):
        broker.update_config({"default_buffer_size": 3})  # type: ignore[arg-type]


def test_broker_rejects_invalid_config() -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Broker(mqkit.Config(default_buffer_size=0))
    assert info.value.field == "default_buffer_size"
    with pytest.raises(mqkit.InvalidConfigError):
        mqkit.Broker({"default_buffer_size": 3})  # type: ignore[arg-type]


# -- lifecycle -------------------------------------------------------------------------------------


def test_context_manager_closes() -> None:
    with mqkit.Broker() as broker:
        assert not broker.closed
        sub = broker.subscribe("t")
    assert broker.closed
    assert sub.closed


def test_context_manager_closes_on_error() -> None:
    with pytest.raises(RuntimeError), mqkit.Broker() as broker:
        raise RuntimeError("boom")
    assert broker.closed


def test_close_and_closed(make_broker) -> None:
    broker = make_broker()
    assert broker.closed is False
    broker.close()
    assert broker.closed is True


# -- features whose plugin is not loaded -----------------------------------------------------------


def test_typed_publishes_need_their_plugins(bare_broker: mqkit.Broker) -> None:
    broker = bare_broker
    sub = broker.subscribe("t")
    with pytest.raises(mqkit.FeatureNotEnabledError, match="priority"):
        broker.publish_priority("t", mqkit.PriorityMessage("p", priority=mqkit.Priority.HIGH))
    with pytest.raises(mqkit.FeatureNotEnabledError, match="ttl"):
        broker.publish_ttl("t", mqkit.TTLMessage("t", expires_at=later()))
    with pytest.raises(mqkit.FeatureNotEnabledError):
        broker.publish_priority_ttl("t", mqkit.PriorityTTLMessage("pt", expires_at=later()))
    with pytest.raises(mqkit.AckNotSupportedError):
        broker.publish_with_ack_ttl("t", mqkit.AckTTLMessage("at", expires_at=later()))
    assert sub.stats().received == 0


def test_ack_not_supported(bare_broker: mqkit.Broker) -> None:
    broker = bare_broker
    with pytest.raises(mqkit.AckNotSupportedError) as info:
        broker.publish_with_ack("t", mqkit.AckMessage("a", ack_id="test-ack-id"))
    assert str(info.value) == "mq: acknowledgment not supported: set enable_ack_support=True"
    with pytest.raises(mqkit.AckNotSupportedError):
        broker.subscribe_with_ack("t")
    with pytest.raises(mqkit.AckNotSupportedError):
        broker.ack("t", "test-ack-id")
    with pytest.raises(mqkit.AckNotSupportedError):
        broker.nack("t", "test-ack-id")
    with pytest.raises(mqkit.AckNotSupportedError):
        broker.nack("t", "test-ack-id", requeue=False)
    sub = broker.subscribe("t")
    with pytest.raises(mqkit.AckNotSupportedError):
        sub.ack("x")
    with pytest.raises(mqkit.AckNotSupportedError):
        sub.nack("x")
    with pytest.raises(mqkit.AckNotSupportedError):
        sub.nack("x", requeue=False)
    assert broker.topics() == ["t"]  # subscribe_with_ack subscribed nothing


def test_transactions_not_supported(bare_broker: mqkit.Broker) -> None:
    broker = bare_broker
    sub = broker.subscribe("t")
    with pytest.raises(mqkit.TransactionNotSupportedError) as info:
        broker.publish_with_transaction("t", mqkit.Message("tx-1"), "tx-1")
    assert str(info.value) == "mq: transaction not supported: set enable_transactions=True"
    with pytest.raises(mqkit.TransactionNotSupportedError):
        broker.commit_transaction("tx-1")
    with pytest.raises(mqkit.TransactionNotSupportedError):
        broker.rollback_transaction("tx-1")
    with pytest.raises(mqkit.TransactionNotSupportedError), broker.transaction() as tx:
        tx.publish("t", mqkit.Message("never"))
    with pytest.raises(mqkit.TransactionNotSupportedError), broker.transaction("tx-2"):
        pass
    assert sub.stats().received == 0


def test_dead_letters_not_supported(bare_broker: mqkit.Broker) -> None:
    broker = bare_broker
    with pytest.raises(mqkit.DeadLetterNotSupportedError) as info:
        broker.publish_to_dead_letter("original-topic", mqkit.Message("dlq-1"), "failed")
    assert str(info.value) == (
        "mq: dead letter queue not supported: set enable_dead_letter_queue=True"
    )
    with pytest.raises(mqkit.DeadLetterNotSupportedError):
        broker.dead_letters()
    with pytest.raises(mqkit.DeadLetterNotSupportedError):
        broker.dead_letters(10)
    with pytest.raises(mqkit.DeadLetterNotSupportedError):
        broker.replay_dead_letters()
    stats = broker.dead_letter_stats()
    assert stats.enabled is False
    assert stats.total_messages == stats.current_count == 0


def test_persistence_not_enabled(bare_broker: mqkit.Broker) -> None:
    broker = bare_broker
    with pytest.raises(mqkit.PersistenceDisabledError):
        broker.recover_messages("t", 10)
    with pytest.raises(mqkit.PersistenceDisabledError):
        broker.recover_messages("t")
    with pytest.raises(mqkit.PersistenceDisabledError):
        broker.replay_messages("t", 10)


def test_protocols_disabled(bare_broker: mqkit.Broker) -> None:
    broker = bare_broker
    with pytest.raises(mqkit.ProtocolDisabledError, match=r"MQTT: set enable_mqtt=True$"):
        broker.start_mqtt_server()
    with pytest.raises(mqkit.ProtocolDisabledError, match=r"AMQP: set enable_amqp=True$"):
        broker.start_amqp_server()


def test_cluster_disabled(bare_broker: mqkit.Broker) -> None:
    broker = bare_broker
    sub = broker.subscribe("cluster-topic")
    with pytest.raises(mqkit.ClusterDisabledError) as info:
        broker.publish_to_cluster("cluster-topic", mqkit.Message("cluster-1"))
    assert str(info.value) == "mq: cluster mode is disabled: set enable_cluster=True"
    with pytest.raises(mqkit.ClusterDisabledError):
        broker.subscribe_from_cluster("cluster-topic", mqkit.SubOptions(buffer_size=10))
    assert broker.cluster_status().status == "disabled"
    assert sub.stats().received == 0
    assert broker.metrics().active_subscribers == 1


def test_feature_errors_are_feature_not_enabled(bare_broker: mqkit.Broker) -> None:
    broker = bare_broker
    calls = [
        lambda: broker.ack("t", "a"),
        lambda: broker.commit_transaction("x"),
        lambda: broker.dead_letters(),
        lambda: broker.recover_messages("t"),
        lambda: broker.start_mqtt_server(),
        lambda: broker.publish_to_cluster("t", mqkit.Message("m")),
        lambda: broker.publish_priority("t", mqkit.PriorityMessage("m")),
    ]
    for call in calls:
        with pytest.raises(mqkit.FeatureNotEnabledError):
            call()
    # Refused feature calls leave the broker fully usable.
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.Message("ok"))
    assert sub.get_nowait().id == "ok"
    assert broker.health_check().status == "healthy"


def test_status_records_are_json_ready(make_broker) -> None:
    import json

    from mqkit.core.convert import unstructure

    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.Message("m"))
    for record in (
        broker.health_check(),
        broker.metrics(),
        broker.dead_letter_stats(),
        broker.cluster_status(),
        sub.stats(),
    ):
        data = json.loads(json.dumps(unstructure(record)))
        assert isinstance(data, dict)
    health = json.loads(json.dumps(unstructure(broker.health_check())))
    assert health["status"] == "healthy"
    assert health["total_subscribers"] == 1


def test_repr_shows_the_state(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    assert "open" in repr(broker) and "open" in repr(sub)
    broker.close()
    assert "closed" in repr(broker) and "closed" in repr(sub)
