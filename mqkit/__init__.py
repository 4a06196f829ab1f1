"""mqkit: a typed, in-process message broker for Python, built from pluggy plugins.

Everything public is importable from here::

    import mqkit

    with mqkit.Broker() as broker:
        sub = broker.subscribe("events")
        broker.publish("events", mqkit.Message("m-1", "hello"))
        print(sub.get(timeout=1).data)

Or let the broker call a function for each message (typed handlers, ``docs/handlers.md``)::

    broker = mqkit.Broker()

    @broker.subscriber("events")
    def on_event(text: str) -> None:
        print(text)

    broker.run()  # until SIGINT/SIGTERM
"""

from mqkit.core.broker import Broker, Transaction
from mqkit.core.config import Config
from mqkit.core.errors import (
    AckNotFoundError,
    AckNotSupportedError,
    BrokerClosedError,
    ClusterDisabledError,
    ClusterError,
    ClusterUnavailableError,
    DeadLetterNotSupportedError,
    FeatureNotEnabledError,
    InvalidArgumentError,
    InvalidConfigError,
    InvalidMessageError,
    InvalidTopicError,
    LimitExceededError,
    MemoryLimitExceededError,
    MessageExpiredError,
    MQError,
    NotInitializedError,
    PersistenceDisabledError,
    PersistenceError,
    PluginError,
    ProtocolDisabledError,
    ProtocolError,
    RequestTimeoutError,
    SerializationError,
    SubscriptionClosedError,
    TransactionNotFoundError,
    TransactionNotSupportedError,
    TransactionTimeoutError,
)
from mqkit.core.features import (
    AckFeature,
    ClusterFeature,
    DeadLetterFeature,
    Feature,
    MemoryFeature,
    MetricsFeature,
    PersistenceFeature,
    ProtocolFeature,
    TransactionFeature,
)
from mqkit.core.hookspecs import for_messages, hookimpl
from mqkit.core.message import (
    AckMessage,
    AckPolicy,
    AckTTLMessage,
    Message,
    Priority,
    PriorityMessage,
    PriorityTTLMessage,
    TTLMessage,
)
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo, Requirement
from mqkit.core.settings import Settings
from mqkit.core.shards import ByteShard
from mqkit.core.status import (
    ClusterStatus,
    DeadLetter,
    DeadLetterStats,
    HealthStatus,
    MetricsSnapshot,
    SubscriptionStats,
    TopicMetrics,
)
from mqkit.core.subscription import Backpressure, Buffer, SubOptions, Subscription, Taps
from mqkit.core.timers import Clock, FakeClock, TimerHandle, TimerService
from mqkit.plugins.persistence.serializer import register_payload_type

__version__ = "0.1.0"

__all__ = [
    "AckFeature",
    "AckMessage",
    "AckNotFoundError",
    "AckNotSupportedError",
    "AckPolicy",
    "AckTTLMessage",
    "Backpressure",
    "Broker",
    "BrokerClosedError",
    "Buffer",
    "ByteShard",
    "Clock",
    "ClusterDisabledError",
    "ClusterError",
    "ClusterFeature",
    "ClusterStatus",
    "ClusterUnavailableError",
    "Config",
    "DeadLetter",
    "DeadLetterFeature",
    "DeadLetterNotSupportedError",
    "DeadLetterStats",
    "FakeClock",
    "Feature",
    "FeatureNotEnabledError",
    "HealthStatus",
    "InvalidArgumentError",
    "InvalidConfigError",
    "InvalidMessageError",
    "InvalidTopicError",
    "LimitExceededError",
    "MQError",
    "MemoryFeature",
    "MemoryLimitExceededError",
    "Message",
    "MessageExpiredError",
    "MetricsFeature",
    "MetricsSnapshot",
    "NotInitializedError",
    "PersistenceDisabledError",
    "PersistenceError",
    "PersistenceFeature",
    "Plugin",
    "PluginError",
    "PluginInfo",
    "Priority",
    "PriorityMessage",
    "PriorityTTLMessage",
    "ProtocolDisabledError",
    "ProtocolError",
    "ProtocolFeature",
    "RequestTimeoutError",
    "Requirement",
    "SerializationError",
    "Settings",
    "SubOptions",
    "Subscription",
    "SubscriptionClosedError",
    "SubscriptionStats",
    "TTLMessage",
    "Taps",
    "TimerHandle",
    "TimerService",
    "TopicMetrics",
    "Transaction",
    "TransactionFeature",
    "TransactionNotFoundError",
    "TransactionNotSupportedError",
    "TransactionTimeoutError",
    "__version__",
    "for_messages",
    "hookimpl",
    "register_payload_type",
]
