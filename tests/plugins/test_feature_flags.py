"""Feature flags: a feature that is off raises its error; plugins off by name; switching
features on and off at run time is all or nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import mqkit
from mqkit import (
    AckMessage,
    AckNotSupportedError,
    AckTTLMessage,
    Config,
    DeadLetterNotSupportedError,
    FeatureNotEnabledError,
    InvalidConfigError,
    Message,
    PriorityMessage,
    PriorityTTLMessage,
    TransactionNotSupportedError,
    TTLMessage,
)
from mqkit.testing import FakeClock

from .helpers import DLQ, drain, drain_ids, in_

Op = Callable[[mqkit.Broker, mqkit.Subscription, FakeClock], Any]


def enter_transaction(broker: mqkit.Broker) -> None:
    with broker.transaction():
        pass  # never reached: entering raises


OFF_OPS: dict[str, tuple[type[FeatureNotEnabledError], Op]] = {
    "ack": (AckNotSupportedError, lambda b, s, c: b.ack("t", "x")),
    "nack": (AckNotSupportedError, lambda b, s, c: b.nack("t", "x")),
    "sub.ack": (AckNotSupportedError, lambda b, s, c: s.ack("x")),
    "sub.nack": (AckNotSupportedError, lambda b, s, c: s.nack("x", requeue=False)),
    "publish_with_ack": (
        AckNotSupportedError,
        lambda b, s, c: b.publish_with_ack("t", AckMessage("m")),
    ),
    "publish_with_ack_ttl": (
        AckNotSupportedError,
        lambda b, s, c: b.publish_with_ack_ttl("t", AckTTLMessage("m", expires_at=in_(c, 9))),
    ),
    "subscribe_with_ack": (AckNotSupportedError, lambda b, s, c: b.subscribe_with_ack("t")),
    "publish_with_transaction": (
        TransactionNotSupportedError,
        lambda b, s, c: b.publish_with_transaction("t", Message("m"), "tx"),
    ),
    "commit_transaction": (
        TransactionNotSupportedError,
        lambda b, s, c: b.commit_transaction("tx"),
    ),
    "rollback_transaction": (
        TransactionNotSupportedError,
        lambda b, s, c: b.rollback_transaction("tx"),
    ),
    "transaction": (TransactionNotSupportedError, lambda b, s, c: enter_transaction(b)),
    "publish_to_dead_letter": (
        DeadLetterNotSupportedError,
        lambda b, s, c: b.publish_to_dead_letter("t", Message("m"), "r"),
    ),
    "dead_letters": (DeadLetterNotSupportedError, lambda b, s, c: b.dead_letters()),
    "replay_dead_letters": (DeadLetterNotSupportedError, lambda b, s, c: b.replay_dead_letters()),
    "publish_priority": (
        FeatureNotEnabledError,
        lambda b, s, c: b.publish_priority("t", PriorityMessage("m")),
    ),
    "publish_priority_ttl": (
        FeatureNotEnabledError,
        lambda b, s, c: b.publish_priority_ttl("t", PriorityTTLMessage("m", expires_at=in_(c, 9))),
    ),
    "publish_ttl": (
        FeatureNotEnabledError,
        lambda b, s, c: b.publish_ttl("t", TTLMessage("m", expires_at=in_(c, 9))),
    ),
}


@pytest.mark.parametrize("name", list(OFF_OPS))
def test_a_feature_that_is_off_raises_its_error(
    make_broker, fake_clock: FakeClock, name: str
) -> None:
    broker = make_broker("metrics")  # every feature plugin off
    sub = broker.subscribe("t")
    error, op = OFF_OPS[name]
    with pytest.raises(error) as info:
        op(broker, sub, fake_clock)
    assert isinstance(info.value, FeatureNotEnabledError)
    assert drain(sub) == []
    if not name.startswith("sub."):
        assert broker.metrics().total_errors == 1


def test_seed_error_texts(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(AckNotSupportedError, match=r"^mq: acknowledgment not supported"):
        broker.ack("t", "x")
    with pytest.raises(TransactionNotSupportedError, match=r"^mq: transaction not supported"):
        broker.commit_transaction("x")
    with pytest.raises(DeadLetterNotSupportedError, match=r"^mq: dead letter queue not supported"):
        broker.dead_letters()


def test_disabling_the_ttl_plugin_by_name(fake_clock: FakeClock) -> None:
    with mqkit.Broker(Config(disable_plugins=("ttl",)), clock=fake_clock) as broker:
        assert not broker.has_plugin("ttl")
        assert broker.has_plugin("priority")
        with pytest.raises(FeatureNotEnabledError, match="ttl"):
            broker.publish_ttl("t", TTLMessage("m", expires_at=in_(fake_clock, 60)))
        with pytest.raises(FeatureNotEnabledError, match="ttl"):
            broker.publish_priority_ttl("t", PriorityTTLMessage("m", expires_at=in_(fake_clock, 9)))


def test_disabling_the_priority_plugin_by_name_with_its_flag_off() -> None:
    config = Config(enable_priority_queue=False, disable_plugins=("priority",))
    with mqkit.Broker(config) as broker:
        assert not broker.has_plugin("priority")
        with pytest.raises(FeatureNotEnabledError, match="priority"):
            broker.publish_priority("t", PriorityMessage("m"))


CONFLICTS = {
    "priority": Config(),  # enable_priority_queue is on by default
    "ttl": Config(message_ttl=5),
    "ack": Config(enable_ack_support=True),
    "transactions": Config(enable_transactions=True),
    "deadletter": Config(enable_dead_letter_queue=True, dead_letter_topic=DLQ),
    "memory": Config(max_memory_usage=1000),
    "metrics": Config(),  # enable_metrics is on by default
}


@pytest.mark.parametrize("plugin", list(CONFLICTS))
def test_flag_enabling_a_disabled_plugin_is_invalid(plugin: str) -> None:
    config = CONFLICTS[plugin].replace(disable_plugins=(plugin,))
    with pytest.raises(InvalidConfigError, match=f"plugin '{plugin}'") as info:
        mqkit.Broker(config)
    assert info.value.field == "disable_plugins"  # type: ignore[attr-defined]


@pytest.mark.parametrize("plugin", ["ack", "memory", "ttl"])
def test_update_config_into_a_conflict_changes_nothing(make_broker, plugin: str) -> None:
    broker = make_broker("metrics", config=Config(disable_plugins=("ack", "memory", "ttl")))
    before = (broker.config, broker.plugin_names())
    change = {
        "ack": {"enable_ack_support": True},
        "memory": {"max_memory_usage": 1000},
        "ttl": {"message_ttl": 5},
    }[plugin]
    with pytest.raises(InvalidConfigError):
        broker.update_config(broker.config.replace(**change))
    assert (broker.config, broker.plugin_names()) == before


# -- switching at run time -------------------------------------------------------------------------


def runtime_broker(make_broker) -> mqkit.Broker:
    """Every switchable feature off; no plugin named in disable_plugins except ttl."""
    broker = make_broker("ttl")
    broker.update_config(broker.config.replace(disable_plugins=()))
    assert broker.plugin_names() == ["ttl"]
    return broker


def switch(broker: mqkit.Broker, **changes: Any) -> None:
    broker.update_config(broker.config.replace(**changes))


def test_ack_on_at_run_time_works_fully_and_off_raises_again(
    make_broker, fake_clock: FakeClock
) -> None:
    broker = runtime_broker(make_broker)
    sub = broker.subscribe("t")
    broker.publish("t", AckMessage("before"))  # published while ack support was off
    switch(broker, enable_ack_support=True, default_ack_timeout=5)
    with_ack = broker.subscribe_with_ack("t")
    got = sub.get_nowait()
    assert got.ack_id
    fake_clock.advance(5)
    assert sub.get_nowait().attempt == 2  # the deadline ran
    sub.ack(got.ack_id)
    broker.publish_with_ack("t", AckMessage("after", ack_id="A"))
    assert drain_ids(with_ack) == ["after"]
    assert drain_ids(sub) == ["after"]
    broker.ack("t", "A")
    switch(broker, enable_ack_support=False)
    for op in ("ack", "nack", "sub.ack", "sub.nack", "publish_with_ack", "subscribe_with_ack"):
        with pytest.raises(AckNotSupportedError):
            OFF_OPS[op][1](broker, sub, fake_clock)


def test_ack_off_at_run_time_forgets_pending_deliveries(make_broker, fake_clock) -> None:
    broker = runtime_broker(make_broker)
    switch(broker, enable_ack_support=True, default_ack_timeout=5)
    sub = broker.subscribe("t")
    broker.publish_with_ack("t", AckMessage("m", ack_id="P"))
    sub.get_nowait()
    switch(broker, enable_ack_support=False)
    fake_clock.advance(50)
    assert drain(sub) == []  # no deadline of the old plugin runs
    switch(broker, enable_ack_support=True)
    with pytest.raises(mqkit.AckNotFoundError):
        sub.ack("P")


def test_transactions_on_at_run_time_work_fully_and_off_raises_again(
    make_broker, fake_clock: FakeClock
) -> None:
    broker = runtime_broker(make_broker)
    sub = broker.subscribe("t")
    switch(broker, enable_transactions=True, transaction_timeout=5)
    broker.publish_with_transaction("t", Message("a"), "tx")
    broker.commit_transaction("tx")
    with broker.transaction() as tx:
        tx.publish("t", Message("b"))
    broker.publish_with_transaction("t", Message("timed-out"), "late")
    fake_clock.advance(5)
    with pytest.raises(mqkit.TransactionNotFoundError):
        broker.commit_transaction("late")
    assert drain_ids(sub) == ["a", "b"]
    broker.publish_with_transaction("t", Message("open"), "open")
    switch(broker, enable_transactions=False)
    for op in ("publish_with_transaction", "commit_transaction", "rollback_transaction"):
        with pytest.raises(TransactionNotSupportedError):
            OFF_OPS[op][1](broker, sub, fake_clock)
    with pytest.raises(TransactionNotSupportedError):
        enter_transaction(broker)
    switch(broker, enable_transactions=True)
    with pytest.raises(mqkit.TransactionNotFoundError):
        broker.commit_transaction("open")  # rolled back when the feature went off
    assert drain(sub) == []


def test_dead_letter_queue_on_at_run_time_works_fully_and_off_raises_again(
    make_broker, fake_clock: FakeClock
) -> None:
    broker = runtime_broker(make_broker)
    switch(broker, enable_ack_support=True, default_ack_timeout=1, max_ack_retries=0)
    sub = broker.subscribe("t")
    switch(broker, enable_dead_letter_queue=True, dead_letter_topic=DLQ)
    dlq = broker.subscribe(DLQ)
    broker.publish_to_dead_letter("t", Message("manual"), "r")
    broker.publish_with_ack("t", AckMessage("acked-never"))
    sub.get_nowait()
    fake_clock.advance(1)  # the ack plugin reaches the new dead letter queue
    assert [d.message.id for d in broker.dead_letters()] == ["manual", "acked-never"]
    assert [m.meta["x-original-topic"] for m in drain(dlq)] == ["t", "t"]
    assert broker.dead_letter_stats().enabled
    assert broker.replay_dead_letters(1) == 1
    assert drain_ids(sub) == ["manual"]
    switch(broker, enable_dead_letter_queue=False)
    for op in ("publish_to_dead_letter", "dead_letters", "replay_dead_letters"):
        with pytest.raises(DeadLetterNotSupportedError):
            OFF_OPS[op][1](broker, sub, fake_clock)
    assert not broker.dead_letter_stats().enabled


def test_metrics_on_at_run_time_count_and_off_stop(make_broker) -> None:
    broker = runtime_broker(make_broker)
    sub = broker.subscribe("t")
    broker.publish("t", Message("uncounted"))
    switch(broker, enable_metrics=True)
    broker.publish("t", Message("counted"))
    drain(sub)
    metrics = broker.metrics()
    assert (metrics.total_published, metrics.total_delivered) == (1, 2)
    assert broker.health_check().metrics == metrics
    switch(broker, enable_metrics=False)
    broker.publish("t", Message("uncounted-again"))
    assert broker.metrics() == mqkit.MetricsSnapshot(active_topics=1, active_subscribers=1)
    assert broker.health_check().metrics is None


def test_memory_on_at_run_time_counts_what_is_held_and_enforces_the_limit(
    make_broker,
) -> None:
    broker = runtime_broker(make_broker)
    sub = broker.subscribe("t")
    broker.publish("t", Message("before", "x" * 300))
    assert broker.memory_usage() == 0
    switch(broker, max_memory_usage=1000)
    held = broker.memory_usage()
    assert held > 300  # the message buffered before the switch is counted
    with pytest.raises(mqkit.MemoryLimitExceededError):
        broker.publish("t", Message("big", "x" * 1000))
    assert drain_ids(sub) == ["before"]
    assert broker.memory_usage() == 0
    switch(broker, max_memory_usage=0)
    broker.publish("t", Message("big", "x" * 1000))
    assert broker.memory_usage() == 0
    assert drain_ids(sub) == ["big"]


def test_default_ttl_on_at_run_time_sweeps_unread_buffers(
    make_broker, fake_clock: FakeClock
) -> None:
    broker = runtime_broker(make_broker)
    switch(broker, enable_metrics=True, max_memory_usage=10**6)
    sub = broker.subscribe("t")
    switch(broker, message_ttl=1)
    broker.publish("t", Message("m"))
    fake_clock.advance(2)
    assert sub.stats().queue_len == 0  # swept without any get()
    assert broker.memory_usage() == 0
    assert broker.metrics().total_expired == 1


def test_a_rejected_update_leaves_no_feature_half_enabled(make_broker, fake_clock) -> None:
    broker = runtime_broker(make_broker)
    sub = broker.subscribe("t")
    before = (broker.config, broker.plugin_names())
    with pytest.raises(InvalidConfigError, match="dead_letter_topic"):
        switch(
            broker,
            enable_ack_support=True,
            enable_transactions=True,
            enable_dead_letter_queue=True,  # without a dead_letter_topic
        )
    assert (broker.config, broker.plugin_names()) == before
    for op in ("ack", "publish_with_transaction", "dead_letters"):
        with pytest.raises(FeatureNotEnabledError):
            OFF_OPS[op][1](broker, sub, fake_clock)
    with pytest.raises(InvalidConfigError):
        switch(broker, enable_ack_support=True, max_dead_letters=0)
    assert (broker.config, broker.plugin_names()) == before


def test_switching_everything_on_at_once(make_broker, fake_clock) -> None:
    broker = runtime_broker(make_broker)
    switch(
        broker,
        enable_ack_support=True,
        enable_transactions=True,
        enable_dead_letter_queue=True,
        dead_letter_topic=DLQ,
        enable_metrics=True,
        max_memory_usage=10**6,
    )
    assert set(broker.plugin_names()) == {
        "ttl",
        "ack",
        "transactions",
        "deadletter",
        "metrics",
        "memory",
    }
    sub = broker.subscribe("t")
    with broker.transaction() as tx:
        tx.publish("t", AckMessage("m", ack_id="K"))
    got = sub.get_nowait()
    sub.nack(got.ack_id, requeue=False)
    assert [d.reason for d in broker.dead_letters()] == ["nacked after 1 attempts"]
    assert broker.memory_usage() > 0
    metrics = broker.metrics()
    assert (metrics.total_published, metrics.total_nacked, metrics.total_dead_lettered) == (2, 1, 1)
