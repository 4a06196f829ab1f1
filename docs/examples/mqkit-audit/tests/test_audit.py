"""Tests of the mqkit-audit plugin, through its installed entry point."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

import pytest
from mqkit_audit import AuditPlugin, AuditSettings, TopicDeniedError

import mqkit


def test_the_entry_point_is_installed() -> None:
    (ep,) = importlib.metadata.entry_points(group="mqkit.plugins", name="audit")
    assert ep.value == "mqkit_audit:AuditPlugin"
    assert ep.load() is AuditPlugin


def test_enabled_by_name_through_the_entry_point() -> None:
    with mqkit.Broker(mqkit.Config(plugins=["audit"])) as broker:
        assert "audit" in broker.plugin_names()
        audit = broker.get_plugin("audit")
        assert isinstance(audit, AuditPlugin)
        sub = broker.subscribe("orders")
        broker.publish("orders", mqkit.Message("o-1"))
        assert sub.get(timeout=1).id == "o-1"
        assert audit.history("o-1") == ["published", "delivered"]


def test_installing_alone_changes_nothing() -> None:
    with mqkit.Broker() as broker:
        assert "audit" not in broker.plugin_names()
        broker.publish("internal.secrets", mqkit.Message("s-1"))  # not refused


def test_denied_topics_are_refused_and_nothing_is_delivered() -> None:
    with mqkit.Broker(mqkit.Config(plugins=["audit"])) as broker:
        sub = broker.subscribe_pattern("internal.*")
        with pytest.raises(TopicDeniedError, match=r"matches 'internal\.\*'"):
            broker.publish("internal.keys", mqkit.Message("k-1"))
        with pytest.raises(TimeoutError):
            sub.get(timeout=0)
        assert broker.metrics().total_errors == 1


def test_its_settings_section_comes_from_the_config() -> None:
    config = mqkit.Config(plugins=["audit"], settings={"audit": {"deny": ["secret.*"]}})
    with mqkit.Broker(config) as broker:
        with pytest.raises(TopicDeniedError, match=r"matches 'secret\.\*'"):
            broker.publish("secret.keys", mqkit.Message("k-1"))
        broker.publish("internal.keys", mqkit.Message("k-2"))  # no longer denied
    with pytest.raises(mqkit.InvalidConfigError, match=r"audit\.max_records must be at least 1"):
        mqkit.Broker(mqkit.Config(plugins=["audit"], settings={"audit": {"max_records": 0}}))
    env = {"MQKIT_PLUGINS": "audit", "MQKIT_AUDIT_DENY": "a.*,b.*"}
    with mqkit.Broker(mqkit.Config.from_env(environ=env)) as broker:
        assert broker.settings(AuditSettings).deny == ("a.*", "b.*")


def test_the_whole_life_of_an_ack_message(
    make_broker: Callable[..., mqkit.Broker], fake_clock: mqkit.FakeClock
) -> None:
    # mqkit.testing's fixtures: a broker with only the named built-in plugins, on a fake clock.
    audit = AuditPlugin(deny=())
    broker = make_broker(
        "ack",
        "deadletter",
        config=mqkit.Config(dead_letter_topic="dlq", max_ack_retries=1),
        objects=[audit],
    )
    sub = broker.subscribe("jobs")
    broker.publish("jobs", mqkit.AckMessage("j-1", ack_timeout=10))
    first = sub.get(timeout=0)
    fake_clock.advance(10)  # the deadline passes: redelivered
    again = sub.get(timeout=0)
    assert (first.attempt, again.attempt) == (1, 2)
    sub.nack(again.ack_id, requeue=False)  # type: ignore[attr-defined]
    assert audit.history("j-1") == [
        "published",
        "delivered",
        "delivered",
        "nacked",
        "published",  # the dead letter copy, published to "dlq" ...
        "dead-lettered",  # ... then the dead letter is reported
    ]
    (dead,) = [r for r in audit.records("j-1") if r.event == "dead-lettered"]
    assert dead.topic == "jobs" and dead.detail == "nacked after 2 attempts"
