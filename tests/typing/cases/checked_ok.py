"""Plugins that must type-check under ``mypy --strict`` (no ``# E:`` line here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import assert_type

import mqkit


class Audit(mqkit.Plugin):
    """Full signatures, the hooks' own types; built with the broker."""

    plugin_info = mqkit.PluginInfo(name="audit")

    def __init__(self, broker: mqkit.Broker) -> None:
        self.broker = broker
        self.seen: list[str] = []

    @mqkit.hookimpl(tryfirst=True)
    @mqkit.for_messages(lambda cls, config: issubclass(cls, mqkit.TTLMessage))
    def mqkit_deliver(
        self, broker: mqkit.Broker, subscription: mqkit.Subscription, message: mqkit.Message
    ) -> bool | None:
        return None

    @mqkit.hookimpl
    def mqkit_publish(self, broker: mqkit.Broker, topic: str, message: mqkit.Message) -> None:
        self.seen.append(topic)  # None is within "bool | None"

    @mqkit.hookimpl
    def mqkit_health(self, broker: mqkit.Broker) -> list[str]:  # a narrower return: allowed
        return []

    @mqkit.hookimpl
    def mqkit_published(
        self,
        broker: mqkit.Broker,
        messages: Sequence[object],  # a wider parameter type: allowed
        copies: Sequence[int],
    ) -> None:
        pass

    @mqkit.hookimpl
    def mqkit_authenticate(
        self,
        broker: mqkit.Broker,
        protocol: str,
        client_id: str,
        username: str | None,
        password: bytes | None,
        method: str,
        data: bytes | None,
        state: dict[str, object],
    ) -> bytes:
        return b"challenge"


class Counting(mqkit.MetricsFeature, mqkit.Plugin):
    """A feature interface and the hook declarations together."""

    def __init__(self) -> None:  # no broker: built as Counting()
        self.published = 0

    @mqkit.hookimpl
    def mqkit_published(
        self, broker: mqkit.Broker, messages: Sequence[mqkit.Message], copies: Sequence[int]
    ) -> None:
        self.published += len(messages)

    def snapshot(self) -> mqkit.MetricsSnapshot:
        return mqkit.MetricsSnapshot(total_published=self.published)


class Unchecked:
    """Not a ``mqkit.Plugin``: pluggy's subsets of arguments stay allowed (and unchecked)."""

    @mqkit.hookimpl
    def mqkit_delivered(self, message: mqkit.Message) -> None:
        pass


config = mqkit.Config(enable_metrics=False)  # Counting replaces the built-in metrics
with mqkit.Broker(config, plugins=[Audit, Counting(), Unchecked()]) as broker:
    subscription = broker.subscribe("t")
    broker.publish("t", mqkit.Message("m-1"))
    audit = broker.get_plugin("audit")
    assert isinstance(audit, Audit) and audit.broker is broker  # built as Audit(broker)
    assert audit.seen == ["t"] and broker.metrics().total_published == 1
    # The markers keep each implementation's signature as written (what the checks rely on).
    message = subscription.get(timeout=1)
    assert_type(audit.mqkit_deliver(broker, subscription, message), bool | None)
    assert_type(audit.mqkit_health(broker), list[str])
