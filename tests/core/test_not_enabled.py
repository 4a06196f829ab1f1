"""Honest errors for what is off or not built (issue 15, point 2).

Every "not enabled" path of a default broker names the setting that enables it, and no error
text repeats itself; a flag asking for a feature this version lacks fails ``Broker(...)``.
"""

from __future__ import annotations

import itertools
import re
import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest

import mqkit

Call = Callable[[mqkit.Broker], object]


def _later() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(hours=1)


def _in_transaction(broker: mqkit.Broker) -> None:
    with broker.transaction() as tx:
        tx.publish("t", mqkit.Message("never"))


def _sub_ack(broker: mqkit.Broker) -> None:
    broker.subscribe("acks").ack("x")


def _sub_nack(broker: mqkit.Broker) -> None:
    broker.subscribe("nacks").nack("x")


# (name, call, error class, the setting the message must name)
PATHS: list[tuple[str, Call, type[mqkit.FeatureNotEnabledError], str]] = [
    (
        "publish_with_ack",
        lambda b: b.publish_with_ack("t", mqkit.AckMessage("a", ack_id="a")),
        mqkit.AckNotSupportedError,
        "enable_ack_support=True",
    ),
    (
        "publish_with_ack_ttl",
        lambda b: b.publish_with_ack_ttl("t", mqkit.AckTTLMessage("a", expires_at=_later())),
        mqkit.AckNotSupportedError,
        "enable_ack_support=True",
    ),
    ("subscribe_with_ack", lambda b: b.subscribe_with_ack("t"), mqkit.AckNotSupportedError,
     "enable_ack_support=True"),
    ("ack", lambda b: b.ack("t", "x"), mqkit.AckNotSupportedError, "enable_ack_support=True"),
    ("nack", lambda b: b.nack("t", "x"), mqkit.AckNotSupportedError, "enable_ack_support=True"),
    ("Subscription.ack", _sub_ack, mqkit.AckNotSupportedError, "enable_ack_support=True"),
    ("Subscription.nack", _sub_nack, mqkit.AckNotSupportedError, "enable_ack_support=True"),
    (
        "publish_with_transaction",
        lambda b: b.publish_with_transaction("t", mqkit.Message("m"), "tx"),
        mqkit.TransactionNotSupportedError,
        "enable_transactions=True",
    ),
    ("commit_transaction", lambda b: b.commit_transaction("tx"),
     mqkit.TransactionNotSupportedError, "enable_transactions=True"),
    ("rollback_transaction", lambda b: b.rollback_transaction("tx"),
     mqkit.TransactionNotSupportedError, "enable_transactions=True"),
    ("transaction", _in_transaction, mqkit.TransactionNotSupportedError,
     "enable_transactions=True"),
    (
        "publish_to_dead_letter",
        lambda b: b.publish_to_dead_letter("t", mqkit.Message("m"), "why"),
        mqkit.DeadLetterNotSupportedError,
        "enable_dead_letter_queue=True",
    ),
    ("dead_letters", lambda b: b.dead_letters(), mqkit.DeadLetterNotSupportedError,
     "enable_dead_letter_queue=True"),
    ("replay_dead_letters", lambda b: b.replay_dead_letters(),
     mqkit.DeadLetterNotSupportedError, "enable_dead_letter_queue=True"),
    ("recover_messages", lambda b: b.recover_messages("t"), mqkit.PersistenceDisabledError,
     "enable_persistence=True"),
    ("replay_messages", lambda b: b.replay_messages("t"), mqkit.PersistenceDisabledError,
     "enable_persistence=True"),
    ("start_mqtt_server", lambda b: b.start_mqtt_server(), mqkit.ProtocolDisabledError,
     "enable_mqtt=True"),
    ("start_amqp_server", lambda b: b.start_amqp_server(), mqkit.ProtocolDisabledError,
     "enable_amqp=True"),
    ("publish_to_cluster", lambda b: b.publish_to_cluster("t", mqkit.Message("m")),
     mqkit.ClusterDisabledError, "enable_cluster=True"),
    ("subscribe_from_cluster", lambda b: b.subscribe_from_cluster("t"),
     mqkit.ClusterDisabledError, "enable_cluster=True"),
    ("subscribe_from_cluster_filter", lambda b: b.subscribe_from_cluster_filter("t/+"),
     mqkit.ClusterDisabledError, "enable_cluster=True"),
    ("subscribe_from_cluster_pattern", lambda b: b.subscribe_from_cluster_pattern("t.*"),
     mqkit.ClusterDisabledError, "enable_cluster=True"),
]  # fmt: skip

# Off in a default broker, so the typed publishes need their own configs.
TYPED: list[tuple[str, Call, mqkit.Config, str]] = [
    (
        "publish_priority",
        lambda b: b.publish_priority("t", mqkit.PriorityMessage("p", priority=1)),
        mqkit.Config(enable_priority_queue=False),
        "enable_priority_queue=True",
    ),
    (
        "publish_priority_ttl",
        lambda b: b.publish_priority_ttl("t", mqkit.PriorityTTLMessage("p", expires_at=_later())),
        mqkit.Config(enable_priority_queue=False),
        "enable_priority_queue=True",
    ),
    (
        "publish_ttl",
        lambda b: b.publish_ttl("t", mqkit.TTLMessage("t", expires_at=_later())),
        mqkit.Config(disable_plugins=("ttl",)),
        "disable_plugins",
    ),
]


def repeated_phrase(text: str) -> str | None:
    """The first run of two words that occurs twice in ``text`` (case-insensitive), if any."""
    words = re.findall(r"[\w=.']+", text.lower())
    seen: set[tuple[str, str]] = set()
    for pair in itertools.pairwise(words):
        if pair in seen:
            return " ".join(pair)
        seen.add(pair)
    return None


def test_repeated_phrase_finds_the_old_texts() -> None:
    # the checker itself: the texts issue 15 quotes are caught, honest ones pass
    assert repeated_phrase("mq: cluster mode is disabled: cluster mode is disabled")
    assert repeated_phrase("persistence is not enabled: persistence is not enabled")
    assert repeated_phrase("mq: acknowledgment not supported: set enable_ack_support=True") is None


@pytest.mark.parametrize(("name", "call", "error", "setting"), PATHS, ids=[p[0] for p in PATHS])
def test_each_not_enabled_path_names_its_setting(
    name: str, call: Call, error: type[mqkit.FeatureNotEnabledError], setting: str
) -> None:
    with mqkit.Broker() as broker, pytest.raises(error) as info:
        call(broker)
    text = str(info.value)
    assert text.startswith(f"{error.default}: "), text
    assert setting in text, text
    assert repeated_phrase(text) is None, text


@pytest.mark.parametrize(("name", "call", "config", "setting"), TYPED, ids=[t[0] for t in TYPED])
def test_each_typed_publish_names_its_setting(
    name: str, call: Call, config: mqkit.Config, setting: str
) -> None:
    with mqkit.Broker(config) as broker, pytest.raises(mqkit.FeatureNotEnabledError) as info:
        call(broker)
    text = str(info.value)
    assert setting in text, text
    assert repeated_phrase(text) is None, text


def test_enable_amqp_is_available_now() -> None:
    # issue 18: the AMQP gateway exists; enabling it starts nothing until start_amqp_server()
    with mqkit.Broker(mqkit.Config(enable_amqp=True, amqp_port=0)) as broker:
        assert broker.has_plugin("amqp")
        host, port = broker.start_amqp_server()
        assert host == "127.0.0.1" and port > 0


def test_enable_amqp_without_its_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a missing `amqp` extra looks like: pamqp cannot be imported. The plugin's module
    # still loads (it imports pamqp when a broker builds it), so other brokers work.
    for name in [n for n in sys.modules if n == "pamqp" or n.startswith("pamqp.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pamqp", None)
    with mqkit.Broker() as broker, pytest.raises(mqkit.ProtocolDisabledError):
        broker.start_amqp_server()
    with pytest.raises(mqkit.PluginError) as info:
        mqkit.Broker(mqkit.Config(enable_amqp=True))
    text = str(info.value)
    assert "pip install 'mqkit[amqp]'" in text, text
    assert repeated_phrase(text) is None, text


def test_enable_cluster_is_available_now() -> None:
    # issue 17: the cluster plugin exists; without a reachable Redis the broker still starts
    # (its status says so) and the local broker works
    port = _unused_port()
    settings = {"cluster": {"url": f"redis://127.0.0.1:{port}/0", "connect_timeout": 0.5}}
    cfg = mqkit.Config(enable_cluster=True, cluster_node_id="node-1", settings=settings)
    with mqkit.Broker(cfg) as broker:
        assert broker.has_plugin("cluster")
        assert broker.cluster_status().status == "disconnected"
        with pytest.raises(mqkit.ClusterUnavailableError):
            broker.publish_to_cluster("t", mqkit.Message("m"))


def test_enable_cluster_without_its_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a missing `cluster` extra looks like: redis-py cannot be imported. The plugin's
    # module still loads (it imports redis when a broker builds it), so other brokers work.
    for name in [n for n in sys.modules if n == "redis" or n.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    with mqkit.Broker() as broker, pytest.raises(mqkit.ClusterDisabledError):
        broker.publish_to_cluster("t", mqkit.Message("m"))
    with pytest.raises(mqkit.PluginError) as info:
        mqkit.Broker(mqkit.Config(enable_cluster=True, cluster_node_id="node-1"))
    text = str(info.value)
    assert "pip install 'mqkit[cluster]'" in text, text
    assert repeated_phrase(text) is None, text


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_flag_whose_plugin_cannot_be_imported_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a missing extra looks like to the entry point: its module cannot be imported.
    for name in [n for n in sys.modules if n.startswith("mqkit.protocols.mqtt")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mqkit.protocols.mqtt", None)
    # the flag is off: the broker builds; asked for the gateway, it names the extra
    with mqkit.Broker() as broker, pytest.raises(mqkit.ProtocolDisabledError) as off:
        broker.start_mqtt_server()
    assert "pip install 'mqkit[mqtt]'" in str(off.value)
    with pytest.raises(mqkit.FeatureNotEnabledError) as info:
        mqkit.Broker(mqkit.Config(enable_mqtt=True))
    text = str(info.value)
    assert "enable_mqtt=True" in text and "pip install 'mqkit[mqtt]'" in text, text
    assert repeated_phrase(text) is None, text
