"""The error hierarchy, the seed's error texts, and every error path of the core broker."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

import mqkit

ALL_ERRORS = [
    mqkit.NotInitializedError,
    mqkit.BrokerClosedError,
    mqkit.InvalidTopicError,
    mqkit.InvalidMessageError,
    mqkit.MessageExpiredError,
    mqkit.TransactionNotFoundError,
    mqkit.TransactionTimeoutError,
    mqkit.MemoryLimitExceededError,
    mqkit.LimitExceededError,
    mqkit.FeatureNotEnabledError,
    mqkit.InvalidConfigError,
    mqkit.InvalidArgumentError,
    mqkit.SubscriptionClosedError,
    mqkit.AckNotFoundError,
    mqkit.SerializationError,
    mqkit.PersistenceError,
    mqkit.PluginError,
    mqkit.TransactionNotSupportedError,
    mqkit.DeadLetterNotSupportedError,
    mqkit.ClusterDisabledError,
    mqkit.AckNotSupportedError,
    mqkit.ProtocolDisabledError,
    mqkit.PersistenceDisabledError,
]

NOT_SUPPORTED = [
    mqkit.TransactionNotSupportedError,
    mqkit.DeadLetterNotSupportedError,
    mqkit.ClusterDisabledError,
    mqkit.AckNotSupportedError,
    mqkit.ProtocolDisabledError,
    mqkit.PersistenceDisabledError,
]

SEED_TEXTS = {
    mqkit.NotInitializedError: "mq: broker not initialized",
    mqkit.InvalidTopicError: "mq: invalid topic",
    mqkit.InvalidConfigError: "mq: invalid configuration",
    mqkit.BrokerClosedError: "mq: broker is closed",
    mqkit.ClusterDisabledError: "mq: cluster mode is disabled",
    mqkit.TransactionNotSupportedError: "mq: transaction not supported",
    mqkit.DeadLetterNotSupportedError: "mq: dead letter queue not supported",
    mqkit.MemoryLimitExceededError: "mq: memory limit exceeded",
    mqkit.MessageExpiredError: "mq: message has expired",
    mqkit.TransactionNotFoundError: "mq: transaction not found",
    mqkit.TransactionTimeoutError: "mq: transaction timeout",
}


# -- the hierarchy -----------------------------------------------------------------------------


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: e.__name__)
def test_every_error_is_an_mqerror(error: type[mqkit.MQError]) -> None:
    assert issubclass(error, mqkit.MQError)
    assert issubclass(error, Exception)
    assert str(error()).startswith("mq: ")


@pytest.mark.parametrize("error", NOT_SUPPORTED, ids=lambda e: e.__name__)
def test_not_supported_errors_are_feature_not_enabled(error: type[mqkit.MQError]) -> None:
    assert issubclass(error, mqkit.FeatureNotEnabledError)


def test_memory_limit_is_a_limit_error() -> None:
    assert issubclass(mqkit.MemoryLimitExceededError, mqkit.LimitExceededError)
    assert not issubclass(mqkit.LimitExceededError, mqkit.MemoryLimitExceededError)


def test_mqerror_is_not_a_builtin_timeout() -> None:
    # get(timeout=...) raises the builtin TimeoutError, which is not an MQError.
    assert not issubclass(TimeoutError, mqkit.MQError)


@pytest.mark.parametrize("error", sorted(SEED_TEXTS, key=lambda e: e.__name__), ids=str)
def test_seed_sentinel_texts(error: type[mqkit.MQError]) -> None:
    assert str(error()) == SEED_TEXTS[error]
    assert error().message == SEED_TEXTS[error]


def test_because_wraps_with_the_seed_format() -> None:
    err = mqkit.InvalidTopicError.because("cannot be empty")
    assert isinstance(err, mqkit.InvalidTopicError)
    assert str(err) == "mq: invalid topic: cannot be empty"
    assert err.message == "mq: invalid topic: cannot be empty"


def test_invalid_config_error_carries_the_field() -> None:
    err = mqkit.InvalidConfigError("mq: invalid configuration: x", field="x")
    assert err.field == "x"
    assert mqkit.InvalidConfigError().field is None


# -- exact seed texts raised by the broker -------------------------------------------------------


def test_empty_topic_text(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.InvalidTopicError) as info:
        broker.publish("", mqkit.Message("m"))
    assert str(info.value) == "mq: invalid topic: cannot be empty"


def test_empty_id_text(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.InvalidMessageError) as info:
        broker.publish("t", mqkit.Message(""))
    assert str(info.value) == "mq: message cannot be nil: ID is required"


@pytest.mark.parametrize("bad", [42, None, b"m-1"], ids=["int", "None", "bytes"])
def test_an_id_that_is_no_str_is_named_not_called_missing(make_broker, bad: object) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    for publish in (
        lambda: broker.publish("t", mqkit.Message(bad)),  # type: ignore[arg-type]
        lambda: broker.publish_batch("t", [mqkit.Message(bad)]),  # type: ignore[arg-type]
    ):
        with pytest.raises(mqkit.InvalidMessageError) as info:
            publish()
        text = str(info.value)
        assert f"message id must be a str, not {type(bad).__name__} {bad!r}" in text
        assert "required" not in text
    assert sub.stats().received == 0


def test_broker_closed_text(make_broker) -> None:
    broker = make_broker()
    broker.close()
    with pytest.raises(mqkit.BrokerClosedError) as info:
        broker.publish("t", mqkit.Message("m"))
    assert str(info.value) == "mq: broker is closed"


def test_too_long_topic_text(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.InvalidTopicError) as info:
        broker.subscribe("a" * 1025)
    assert str(info.value) == "mq: invalid topic: topic too long (max 1024 characters)"


# -- invalid topics ------------------------------------------------------------------------------

BAD_TOPICS = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="spaces"),
    pytest.param("\t\n\r ", id="whitespace"),
    pytest.param("a" * 1025, id="1025-ascii"),
    pytest.param("\U0001f600" * 300, id="300x4-byte"),
    pytest.param("\U0001f600" * 257, id="257x4-byte"),
    pytest.param("\u00e9" * 513, id="513x2-byte"),
    pytest.param(None, id="None"),
    pytest.param(42, id="int"),
    pytest.param(b"topic", id="bytes"),
    pytest.param(["topic"], id="list"),
]

GOOD_TOPICS = [
    pytest.param("a" * 1024, id="1024-ascii"),
    pytest.param("\U0001f600" * 256, id="256x4-byte"),
    pytest.param("\u00e9" * 512, id="512x2-byte"),
    pytest.param("  " + "a" * 1024 + "\n", id="padding-not-counted"),
    pytest.param("a:b/c#d*", id="punctuation"),
    pytest.param("x", id="one-char"),
]


@pytest.mark.parametrize("topic", BAD_TOPICS)
def test_invalid_topic_everywhere(make_broker, topic: object) -> None:
    broker = make_broker()
    msg = mqkit.Message("m")
    with pytest.raises(mqkit.InvalidTopicError):
        broker.publish(topic, msg)  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidTopicError):
        broker.publish_batch(topic, [msg])  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidTopicError):
        broker.publish_batch(topic, [])  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidTopicError):
        broker.subscribe(topic)  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidTopicError):
        broker.subscribe_pattern(topic)  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidTopicError):
        broker.subscribe_batch(["ok", topic])  # type: ignore[list-item]
    assert broker.topics() == []
    assert broker.metrics().active_subscribers == 0


@pytest.mark.parametrize("topic", GOOD_TOPICS)
def test_valid_topics_are_accepted(make_broker, topic: str) -> None:
    broker = make_broker()
    sub = broker.subscribe(topic)
    assert sub.topic == topic.strip()
    broker.publish(topic, mqkit.Message("m"))
    assert sub.get_nowait().topic == topic.strip()


def test_non_str_topic_names_the_type(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.InvalidTopicError, match="must be a str"):
        broker.publish(123, mqkit.Message("m"))  # type: ignore[arg-type]


def test_lone_surrogate_topic_is_invalid(make_broker) -> None:
    broker = make_broker()
    for topic in ("\ud800", "a\udfffb", "\ud800" * 300):
        with pytest.raises(mqkit.InvalidTopicError):
            broker.subscribe(topic)
        with pytest.raises(mqkit.InvalidTopicError):
            broker.publish(topic, mqkit.Message("m"))


# -- invalid messages ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(mqkit.Message(""), id="empty-id"),
        pytest.param(mqkit.PriorityMessage(""), id="empty-id-priority"),
        pytest.param(mqkit.Message(5), id="int-id"),  # type: ignore[arg-type]
        pytest.param(mqkit.Message(None), id="None-id"),  # type: ignore[arg-type]
        pytest.param(None, id="None"),
        pytest.param("m-1", id="str"),
        pytest.param({"id": "m-1"}, id="dict"),
    ],
)
def test_invalid_message(make_broker, bad: object) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.Message("warm-up"))  # the class's fast path is primed
    assert sub.get_nowait().id == "warm-up"
    with pytest.raises(mqkit.InvalidMessageError):
        broker.publish("t", bad)  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidMessageError):
        broker.publish_batch("t", [mqkit.Message("ok"), bad])  # type: ignore[list-item]
    assert sub.stats().received == 1
    with pytest.raises(TimeoutError):
        sub.get_nowait()


def test_non_message_names_the_type(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.InvalidMessageError, match="expected Message, got dict"):
        broker.publish("t", {"id": "x"})  # type: ignore[arg-type]


def _later() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


@pytest.mark.parametrize(
    ("method", "wrong"),
    [
        ("publish_priority", mqkit.Message("m")),
        ("publish_priority", mqkit.TTLMessage("m", expires_at=_later())),
        ("publish_ttl", mqkit.Message("m")),
        ("publish_ttl", mqkit.PriorityMessage("m")),
        ("publish_with_ack", mqkit.Message("m")),
        ("publish_priority_ttl", mqkit.PriorityMessage("m")),
        ("publish_with_ack_ttl", mqkit.AckMessage("m")),
        ("publish_priority", None),
    ],
)
def test_typed_entry_point_rejects_the_wrong_type(make_broker, method: str, wrong: object) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    with pytest.raises(mqkit.InvalidMessageError):
        getattr(broker, method)("t", wrong)
    assert sub.stats().received == 0


# -- closed broker -------------------------------------------------------------------------------


def test_closed_broker_raises_broker_closed(make_broker) -> None:
    broker = make_broker()
    broker.close()
    msg = mqkit.Message("m")
    calls = [
        lambda: broker.publish("t", msg),
        lambda: broker.publish_batch("t", [msg]),
        lambda: broker.publish_batch("t", []),
        lambda: broker.subscribe("t"),
        lambda: broker.subscribe_batch(["t"]),
        lambda: broker.subscribe_pattern("t.*"),
        lambda: broker.update_config(broker.config),
    ]
    for call in calls:
        with pytest.raises(mqkit.BrokerClosedError):
            call()


# -- limits --------------------------------------------------------------------------------------


def test_max_topics(make_broker) -> None:
    broker = make_broker(config=mqkit.Config(max_topics=2))
    a1 = broker.subscribe("a")
    broker.subscribe("b")
    a2 = broker.subscribe("a")  # an existing topic is not a new one
    with pytest.raises(mqkit.LimitExceededError, match="max_topics"):
        broker.subscribe("c")
    with pytest.raises(mqkit.LimitExceededError):
        broker.subscribe_pattern("c.*")
    assert broker.topics() == ["a", "b"]
    a1.cancel()
    assert broker.topics() == ["a", "b"]  # another subscription still holds "a"
    with pytest.raises(mqkit.LimitExceededError):
        broker.subscribe("c")
    a2.cancel()
    assert broker.topics() == ["b"]
    broker.subscribe("c")
    assert broker.topics() == ["b", "c"]


def test_max_topics_counts_patterns(make_broker) -> None:
    broker = make_broker(config=mqkit.Config(max_topics=1))
    broker.subscribe_pattern("orders.*")
    broker.subscribe_pattern("orders.*")
    with pytest.raises(mqkit.LimitExceededError):
        broker.subscribe("x")


def test_max_subscribers_is_per_topic(make_broker) -> None:
    broker = make_broker(config=mqkit.Config(max_subscribers=2))
    first = broker.subscribe("a")
    broker.subscribe("a")
    with pytest.raises(mqkit.LimitExceededError, match="max_subscribers"):
        broker.subscribe("a")
    broker.subscribe("b")
    broker.subscribe("b")
    first.cancel()
    broker.subscribe("a")  # room again
    assert broker.metrics().active_subscribers == 4


def test_limit_error_in_subscribe_batch_leaves_nothing(make_broker) -> None:
    broker = make_broker(config=mqkit.Config(max_subscribers=1))
    broker.subscribe("x")
    with pytest.raises(mqkit.LimitExceededError):
        broker.subscribe_batch(["a", "b", "x", "c"])
    assert broker.topics() == ["x"]
    assert broker.metrics().active_subscribers == 1


# -- subscriptions -------------------------------------------------------------------------------


def test_get_after_cancel_once_drained(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", mqkit.Message("m1"))
    sub.cancel()
    assert sub.get().id == "m1"
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get()
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get(timeout=0)
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get_nowait()


def test_get_timeout_raises_builtin_timeout(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.01)
    with pytest.raises(TimeoutError):
        sub.get(timeout=0)
    with pytest.raises(TimeoutError):
        sub.get(timeout=-1)
    with pytest.raises(TimeoutError):
        sub.get_nowait()


def test_aget_timeout(make_broker) -> None:
    import asyncio

    broker = make_broker()
    sub = broker.subscribe("t")

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await sub.aget(timeout=0.01)
        with pytest.raises(TimeoutError):
            await sub.aget(timeout=0)
        sub.cancel()
        with pytest.raises(mqkit.SubscriptionClosedError):
            await sub.aget(timeout=1)

    asyncio.run(main())


def test_bad_sub_options(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.InvalidConfigError):
        broker.subscribe("t", mqkit.SubOptions(buffer_size=-1))
    with pytest.raises(mqkit.InvalidConfigError):
        broker.subscribe("t", {"buffer_size": 1})  # type: ignore[arg-type]
    assert broker.topics() == []


# -- the error hook ------------------------------------------------------------------------------


def test_failed_operations_fire_mqkit_error(make_broker, hook_recorder) -> None:
    broker = make_broker(objects=[hook_recorder])
    with pytest.raises(mqkit.InvalidMessageError):
        broker.publish("orders", mqkit.Message(""))
    with pytest.raises(mqkit.InvalidTopicError):
        broker.subscribe(" ")
    with pytest.raises(mqkit.TransactionNotSupportedError):
        broker.commit_transaction("tx")
    calls = hook_recorder.of("mqkit_error")
    assert [(c.operation, c.topic, type(c.error)) for c in calls] == [
        ("publish", "orders", mqkit.InvalidMessageError),
        ("subscribe", " ", mqkit.InvalidTopicError),
        ("commit_transaction", "", mqkit.TransactionNotSupportedError),
    ]
    assert all(c.broker is broker for c in calls)


def _closed_broker_calls(broker: mqkit.Broker) -> list[tuple[str, Callable[[], object]]]:
    """Every reported operation, called on a closed broker: (what it reports, the call)."""
    m = mqkit.Message("m")
    later = datetime.now(UTC) + timedelta(hours=1)
    return [
        ("publish t", lambda: broker.publish("t", m)),
        ("publish_batch t", lambda: broker.publish_batch("t", [m])),
        ("publish_priority t", lambda: broker.publish_priority("t", mqkit.PriorityMessage("m"))),
        ("publish_ttl t", lambda: broker.publish_ttl("t", mqkit.TTLMessage("m", expires_at=later))),
        ("publish_with_ack t", lambda: broker.publish_with_ack("t", mqkit.AckMessage("m"))),
        (
            "publish_priority_ttl t",
            lambda: broker.publish_priority_ttl(
                "t", mqkit.PriorityTTLMessage("m", expires_at=later)
            ),
        ),
        (
            "publish_with_ack_ttl t",
            lambda: broker.publish_with_ack_ttl("t", mqkit.AckTTLMessage("m", expires_at=later)),
        ),
        ("subscribe t", lambda: broker.subscribe("t")),
        ("subscribe_pattern t.*", lambda: broker.subscribe_pattern(pattern="t.*")),
        ("subscribe_matching k", lambda: broker.subscribe_matching("k", bool)),
        ("subscribe t", lambda: broker.subscribe_batch(["t", "u"])),
        ("subscribe_with_ack t", lambda: broker.subscribe_with_ack("t")),
        ("ack t", lambda: broker.ack("t", "a")),
        ("nack t", lambda: broker.nack("t", "a", requeue=False)),
        ("publish_with_transaction t", lambda: broker.publish_with_transaction("t", m, "x")),
        ("commit_transaction ", lambda: broker.commit_transaction("x")),
        ("rollback_transaction ", lambda: broker.rollback_transaction("x")),
        ("transaction ", lambda: broker.transaction().__enter__()),
        (
            "publish_to_dead_letter t",
            lambda: broker.publish_to_dead_letter(original_topic="t", message=m, reason="r"),
        ),
        ("dead_letters ", lambda: broker.dead_letters(1)),
        ("replay_dead_letters ", lambda: broker.replay_dead_letters()),
        ("recover_messages t", lambda: broker.recover_messages("t", 1)),
        ("recover_messages t", lambda: broker.replay_messages("t")),
        ("publish_to_cluster t", lambda: broker.publish_to_cluster("t", m)),
        ("subscribe_from_cluster t", lambda: broker.subscribe_from_cluster("t")),
        (
            "subscribe_from_cluster_filter t/+",
            lambda: broker.subscribe_from_cluster_filter("t/+"),
        ),
        (
            "subscribe_from_cluster_pattern t.*",
            lambda: broker.subscribe_from_cluster_pattern("t.*"),
        ),
        ("start_mqtt_server ", broker.start_mqtt_server),
        ("update_config ", lambda: broker.update_config(mqkit.Config())),
    ]


def test_every_operation_reports_its_failure_once_by_name_and_topic(
    make_broker, hook_recorder
) -> None:
    broker = make_broker(objects=[hook_recorder])
    broker.close()
    calls = _closed_broker_calls(broker)
    for expected, call in calls:
        hook_recorder.clear()
        with pytest.raises(mqkit.BrokerClosedError) as caught:
            call()
        reports = [(c.operation, c.topic, c.error) for c in hook_recorder.of("mqkit_error")]
        operation, topic = expected.split(" ")
        assert reports == [(operation, topic, caught.value)], expected


def test_plugin_api_calls_do_not_report_failures(make_broker, hook_recorder) -> None:
    broker = make_broker(objects=[hook_recorder])
    broker.close()
    with pytest.raises(mqkit.BrokerClosedError):
        broker.stamp("t", mqkit.Message("m"))
    with pytest.raises(mqkit.BrokerClosedError):
        broker.dispatch([mqkit.Message("m")])
    with pytest.raises(mqkit.BrokerClosedError):
        broker.routes("t")
    assert hook_recorder.of("mqkit_error") == []


def test_a_failure_is_reported_by_the_innermost_operation_only(make_broker, hook_recorder) -> None:
    broker = make_broker(
        "priority",
        "transactions",
        "deadletter",
        config=mqkit.Config(dead_letter_topic="dlq"),
        objects=[hook_recorder],
    )
    with pytest.raises(mqkit.InvalidTopicError):
        broker.publish_priority(" ", mqkit.PriorityMessage("m"))  # publish raises it
    with pytest.raises(mqkit.InvalidTopicError):
        broker.publish_to_dead_letter(" ", mqkit.Message("m"), "r")
    with pytest.raises(mqkit.InvalidTopicError), broker.transaction() as tx:
        tx.publish(" ", mqkit.Message("m"))
    reports = [(c.operation, c.topic) for c in hook_recorder.of("mqkit_error")]
    assert reports == [
        ("publish", " "),
        ("publish_to_dead_letter", " "),
        ("publish_with_transaction", " "),
    ]


def test_an_error_raised_inside_a_transaction_block_is_not_the_brokers(
    make_broker, hook_recorder
) -> None:
    broker = make_broker("transactions", objects=[hook_recorder])
    with pytest.raises(mqkit.InvalidArgumentError), broker.transaction() as tx:
        tx.publish("t", mqkit.Message("m"))
        raise mqkit.InvalidArgumentError("the caller's own")
    assert hook_recorder.of("mqkit_error") == []
