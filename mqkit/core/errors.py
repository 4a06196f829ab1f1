"""The error hierarchy: every error mqkit raises on purpose is an :class:`MQError`.

Each class carries the seed's sentinel text as its default message (``mq: broker is closed``).
``SomeError.because(detail)`` builds the seed's wrapped form, ``"<default>: <detail>"``, so
``InvalidTopicError.because("cannot be empty")`` reads ``mq: invalid topic: cannot be empty``.
A detail never repeats the default: a "not enabled" error's detail names the setting that
enables the feature (``mq: acknowledgment not supported: set enable_ack_support=True``), or says
that this version of mqkit cannot enable it.
"""

from __future__ import annotations

from typing import ClassVar, Self

__all__ = [
    "AckNotFoundError",
    "AckNotSupportedError",
    "BrokerClosedError",
    "ClusterDisabledError",
    "ClusterError",
    "ClusterUnavailableError",
    "DeadLetterNotSupportedError",
    "FeatureNotEnabledError",
    "InvalidArgumentError",
    "InvalidConfigError",
    "InvalidMessageError",
    "InvalidTopicError",
    "LimitExceededError",
    "MQError",
    "MemoryLimitExceededError",
    "MessageExpiredError",
    "NotInitializedError",
    "PersistenceDisabledError",
    "PersistenceError",
    "PluginError",
    "ProtocolDisabledError",
    "ProtocolError",
    "RequestTimeoutError",
    "SerializationError",
    "SubscriptionClosedError",
    "TransactionNotFoundError",
    "TransactionNotSupportedError",
    "TransactionTimeoutError",
]


class MQError(Exception):
    """Base class of every error mqkit raises on purpose."""

    default: ClassVar[str] = "mq: error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(self.default if message is None else message)

    @classmethod
    def because(cls, detail: str) -> Self:
        """Return the error with the seed's wrapped text: ``"<default>: <detail>"``."""
        return cls(f"{cls.default}: {detail}")

    @property
    def message(self) -> str:
        """The full text of the error."""
        return str(self.args[0]) if self.args else self.default


class NotInitializedError(MQError):
    """A component the operation needs was never set up.

    The seed returns it from methods called on a nil broker; Python has no nil receiver, so mqkit
    itself never raises it. It is kept so that code ported from the seed keeps its names.
    """

    default = "mq: broker not initialized"


class BrokerClosedError(MQError):
    """The broker is closed: it no longer publishes, subscribes, acks or reads its store."""

    default = "mq: broker is closed"


class InvalidTopicError(MQError):
    """A topic (or glob pattern) is empty, too long, or not a valid pattern."""

    default = "mq: invalid topic"


class InvalidMessageError(MQError):
    """A message has no id, is of the wrong type for the entry point, or has a bad field."""

    default = "mq: invalid message"


class MessageExpiredError(MQError):
    """A message's ``expires_at`` has passed before it was published."""

    default = "mq: message has expired"


class TransactionNotFoundError(MQError):
    """No open transaction has this id (never begun, committed, rolled back or timed out)."""

    default = "mq: transaction not found"


class TransactionTimeoutError(TransactionNotFoundError):
    """A transaction ran past ``transaction_timeout`` and was rolled back.

    Raised by a later commit or rollback of that id (while the broker still remembers how the
    transaction ended). It is a :class:`TransactionNotFoundError`, as the seed's commit after a
    timeout is: the transaction is no longer open.
    """

    default = "mq: transaction timeout"


class LimitExceededError(MQError):
    """A configured limit (``max_topics``, ``max_subscribers``, memory) would be exceeded."""

    default = "mq: limit exceeded"


class MemoryLimitExceededError(LimitExceededError):
    """Accepting the message would take the broker past ``max_memory_usage``."""

    default = "mq: memory limit exceeded"


class FeatureNotEnabledError(MQError):
    """The operation needs a feature whose plugin is not enabled.

    ``Broker(...)`` raises it too when a flag asks for a feature this installation cannot
    provide: its plugin's extra is not installed, or this version of mqkit has no such plugin
    (``enable_amqp``).
    """

    default = "mq: feature not enabled"


class AckNotSupportedError(FeatureNotEnabledError):
    """Acknowledgement support (``enable_ack_support``) is off."""

    default = "mq: acknowledgment not supported"


class TransactionNotSupportedError(FeatureNotEnabledError):
    """Transactions (``enable_transactions``) are off."""

    default = "mq: transaction not supported"


class DeadLetterNotSupportedError(FeatureNotEnabledError):
    """The dead letter queue (``enable_dead_letter_queue``) is off."""

    default = "mq: dead letter queue not supported"


class ClusterDisabledError(FeatureNotEnabledError):
    """Cluster mode (``enable_cluster``) is off, or its extra is not installed."""

    default = "mq: cluster mode is disabled"


class ClusterError(MQError):
    """Cluster mode could not do what was asked: a replica did not confirm, a node id is taken."""

    default = "mq: cluster error"


class ClusterUnavailableError(ClusterError):
    """Redis cannot be reached (within the ``[cluster]`` connect and socket timeouts)."""

    default = "mq: cluster unavailable"


class ProtocolDisabledError(FeatureNotEnabledError):
    """A protocol gateway (``enable_mqtt``, ``enable_amqp``) is off."""

    default = "mq: protocol not enabled"


class ProtocolError(MQError, OSError):
    """A protocol gateway cannot do its network work: its port is in use, say.

    It is an :class:`OSError` too (``errno`` is the socket error's), as the failed ``bind`` is.
    """

    default = "mq: protocol error"


class PersistenceDisabledError(FeatureNotEnabledError):
    """Persistence (``enable_persistence``) is off."""

    default = "mq: persistence is not enabled"


class InvalidConfigError(MQError):
    """A configuration value is invalid; the message names the field."""

    default = "mq: invalid configuration"

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        """The name of the offending field (or key, or environment variable), when known."""


class InvalidArgumentError(MQError, ValueError):
    """A number argument is NaN, infinite or no number at all (a ``timeout``, a ``limit``).

    It is a :class:`ValueError` too, as Python's own ``queue.Queue.get(timeout=-1)`` raises one.
    """

    default = "mq: invalid argument"


class SubscriptionClosedError(MQError):
    """The subscription was cancelled (or its broker closed) and its buffer is drained."""

    default = "mq: subscription is closed"


class AckNotFoundError(MQError):
    """No subscription holds this ack id: it is unknown, or already acked or settled."""

    default = "mq: ack id not found"


class SerializationError(MQError):
    """A payload cannot be serialised (for the store or a wire protocol) or deserialised."""

    default = "mq: serialization failed"


class PersistenceError(MQError):
    """The persistence store failed: locked, unopenable, full, read-only or corrupted."""

    default = "mq: persistence failed"


class PluginError(MQError):
    """A plugin could not be loaded or validated, or raised an unexpected exception."""

    default = "mq: plugin error"


class RequestTimeoutError(MQError, TimeoutError):
    """``Broker.request``/``arequest`` got no reply in time.

    It is a :class:`TimeoutError` too, as ``Subscription.get`` raises one when its time runs out.
    """

    default = "mq: request timed out"
