"""mqkit-audit: an audit trail of every message's life, and a topic deny-list.

Enable it by name - the package declares the entry point ``audit`` in the group
``mqkit.plugins``::

    broker = mqkit.Broker(mqkit.Config(plugins=["audit"]))
    audit = broker.get_plugin("audit")

Its settings are its own section, ``[audit]`` (:class:`AuditSettings`): a table in the config
file, ``MQKIT_AUDIT_DENY=internal.*,secret.*`` in the environment, or in code
``mqkit.Config(plugins=["audit"], settings={"audit": AuditSettings(max_records=100)})``. An
instance passed as ``mqkit.Broker(plugins=[AuditPlugin(deny=...)])`` may override them.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import deque
from collections.abc import Sequence
from datetime import datetime

import attrs

import mqkit

__all__ = ["AuditPlugin", "AuditRecord", "AuditSettings", "TopicDeniedError"]


class TopicDeniedError(mqkit.MQError):
    """A message was published to a topic the audit plugin's deny-list names."""

    default = "audit: topic denied"


@attrs.frozen(kw_only=True)
class AuditRecord:
    """One event in a message's life."""

    event: str
    """``published``, ``delivered``, ``acked``, ``nacked``, ``expired``, ``dead-lettered``."""
    topic: str
    message_id: str
    time: datetime
    detail: str = ""


@attrs.frozen(slots=True, kw_only=True)
class AuditSettings(mqkit.Settings):
    """The ``[audit]`` section: what the plugin refuses and how much it remembers."""

    deny: tuple[str, ...] = ("internal.*",)
    """Glob patterns of topics a publish is refused on."""
    max_records: int = 10_000
    """Records kept; the oldest go first."""

    def rules(self) -> list[tuple[str, bool, str]]:
        """Checked by ``Broker(...)``: an error names ``audit.max_records`` and the value."""
        return [("max_records", self.max_records < 1, "must be at least 1")]


class AuditPlugin(mqkit.Plugin):
    """Records every message's lifecycle; refuses topics that match a deny pattern.

    ``deny`` holds glob patterns (``"internal.*"``); ``max_records`` bounds the trail (the
    oldest records go first). Either left out (as the entry point does) comes from the
    ``[audit]`` section when the broker starts. Its hooks are checked by mypy (a
    ``mqkit.Plugin`` declares every hook with its full signature).
    """

    plugin_info = mqkit.PluginInfo(
        name="audit",
        description="an audit trail of every message, and a topic deny-list",
        settings=AuditSettings,
        section="audit",
    )

    def __init__(self, deny: Sequence[str] | None = None, max_records: int | None = None) -> None:
        self._given = (None if deny is None else tuple(deny), max_records)
        self.deny = AuditSettings().deny if deny is None else tuple(deny)
        self._lock = threading.Lock()
        self._records: deque[AuditRecord] = deque(maxlen=max_records)
        self._broker: mqkit.Broker | None = None

    # -- reading the trail ---------------------------------------------------------------------

    def records(self, message_id: str | None = None) -> list[AuditRecord]:
        """The trail, oldest first (only ``message_id``'s events when given)."""
        with self._lock:
            return [r for r in self._records if message_id in (None, r.message_id)]

    def history(self, message_id: str) -> list[str]:
        """The events of one message, in order: ``["published", "delivered", "acked"]``."""
        return [r.event for r in self.records(message_id)]

    # -- hooks -------------------------------------------------------------------------------

    def _record(self, event: str, topic: str, message: mqkit.Message, detail: str = "") -> None:
        broker = self._broker
        now = broker.clock.now() if broker is not None else datetime.now().astimezone()
        with self._lock:
            self._records.append(
                AuditRecord(
                    event=event, topic=topic, message_id=message.id, time=now, detail=detail
                )
            )

    @mqkit.hookimpl
    def mqkit_broker_start(self, broker: mqkit.Broker) -> None:
        """Remember the broker (for its clock); read the ``[audit]`` section."""
        self._broker = broker
        settings = broker.settings(AuditSettings)  # typed: an AuditSettings
        deny, max_records = self._given
        self.deny = settings.deny if deny is None else deny
        with self._lock:
            size = settings.max_records if max_records is None else max_records
            self._records = deque(self._records, maxlen=size)

    @mqkit.hookimpl
    def mqkit_broker_close(self, broker: mqkit.Broker) -> None:
        """Forget the broker; the trail stays readable."""
        self._broker = None

    @mqkit.hookimpl
    def mqkit_publish(self, broker: mqkit.Broker, topic: str, message: mqkit.Message) -> None:
        """Refuse a denied topic (nothing is delivered or stored), else record the publish."""
        for pattern in self.deny:
            if fnmatch.fnmatchcase(topic, pattern):
                self._record("denied", topic, message, pattern)
                raise TopicDeniedError.because(f"{topic!r} matches {pattern!r}")
        self._record("published", topic, message)

    @mqkit.hookimpl
    def mqkit_delivered(
        self, broker: mqkit.Broker, subscription: mqkit.Subscription, message: mqkit.Message
    ) -> None:
        """Record a hand-out to a consumer."""
        self._record("delivered", message.topic, message, f"attempt {message.attempt}")

    @mqkit.hookimpl
    def mqkit_ack(
        self, broker: mqkit.Broker, subscription: mqkit.Subscription, message: mqkit.Message
    ) -> None:
        """Record an acknowledgement."""
        self._record("acked", message.topic, message)

    @mqkit.hookimpl
    def mqkit_nack(
        self,
        broker: mqkit.Broker,
        subscription: mqkit.Subscription,
        message: mqkit.Message,
        requeue: bool,
    ) -> None:
        """Record a rejection."""
        self._record("nacked", message.topic, message, "requeue" if requeue else "no requeue")

    @mqkit.hookimpl
    def mqkit_expire(self, broker: mqkit.Broker, topic: str, message: mqkit.Message) -> None:
        """Record an expiry."""
        self._record("expired", topic, message)

    @mqkit.hookimpl
    def mqkit_dead_letter(
        self,
        broker: mqkit.Broker,
        topic: str,
        message: mqkit.Message,
        reason: str,
        subscription: mqkit.Subscription | None,
    ) -> None:
        """Record a dead letter and why."""
        self._record("dead-lettered", topic, message, reason)
