"""``mqkit.Plugin``: the base class that has mypy check a plugin's hook implementations.

A plugin class that subclasses :class:`Plugin` has every ``mqkit_*`` method checked as an
override of the hook's declaration below: a wrong return type (``int`` from ``mqkit_deliver``)
or a wrong parameter type is a mypy error in the plugin's own module. The declarations are
the hook specifications of :mod:`mqkit.core.hookspecs`, one for one (a test keeps them equal).

They exist for the type checker only (``if TYPE_CHECKING``): at run time :class:`Plugin` is an
empty class. So a subclass implements exactly the hooks it defines - pluggy registers only its
marked methods, and the hook facade's flags (``deliver_on``, the ``*_idle`` sets) see a plugin
that implements ``mqkit_publish`` alone as implementing ``mqkit_publish`` alone - and the base
class costs nothing, at registration or per message.

**The full signature.** A checked implementation declares every argument of its hook, in the
hook's order, with the hook's names (``def mqkit_deliver(self, broker, subscription,
message)``): mypy's override rule refuses a method that takes fewer arguments than the one it
overrides. pluggy's "any subset of the arguments" still holds for plugins that do not subclass
:class:`Plugin` (unchecked). The full signature is also the fastest form: the facade calls
such an implementation directly, where a subset costs an adapter call per hook call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from mqkit.core.broker import Broker
    from mqkit.core.errors import MQError
    from mqkit.core.message import Message
    from mqkit.core.plugins import PluginInfo
    from mqkit.core.subscription import Buffer, Subscription, Taps

__all__ = ["Plugin"]


class Plugin:
    """Base class of a type-checked plugin: mypy checks each hook it implements (opt-in).

    Subclass it and implement hooks with their full signatures, each marked
    ``@mqkit.hookimpl``; mypy then checks argument and return types against the hook
    specifications (see :mod:`mqkit.core.plugin` for the why)::

        class Audit(mqkit.Plugin):
            plugin_info = mqkit.PluginInfo(name="audit")

            def __init__(self, broker: mqkit.Broker) -> None:
                self.broker = broker

            @mqkit.hookimpl
            def mqkit_deliver(
                self, broker: mqkit.Broker, subscription: mqkit.Subscription, message: mqkit.Message
            ) -> bool | None:
                return None

    At run time the class is empty: it declares nothing, registers nothing and does not
    change how a plugin is built. A plugin class - a subclass or not - whose constructor's
    first parameter is positional and required (or is named ``broker``) is built by the broker
    as ``cls(broker)``; any other class as ``cls()``. A misspelt hook name is not an override,
    so mypy does not see it: the broker refuses it when it registers the plugin
    (``PluginError``: unknown hook).
    """

    plugin_info: ClassVar[PluginInfo]
    """What the plugin declares about itself (optional: the name defaults to the class's)."""

    if TYPE_CHECKING:
        # The hook specifications as methods (mqkit/core/hookspecs.py, in its order).

        def mqkit_broker_start(self, broker: Broker) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_broker_start`."""

        def mqkit_broker_close(self, broker: Broker) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_broker_close`."""

        def mqkit_broker_closing(self, broker: Broker) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_broker_closing`."""

        def mqkit_authenticate(
            self,
            broker: Broker,
            protocol: str,
            client_id: str,
            username: str | None,
            password: bytes | None,
            method: str,
            data: bytes | None,
            state: dict[str, Any],
        ) -> bool | bytes | None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_authenticate`."""

        def mqkit_authorize(
            self,
            broker: Broker,
            protocol: str,
            client_id: str,
            username: str | None,
            action: str,
            topic: str,
        ) -> bool | None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_authorize`."""

        def mqkit_subscription_buffer(
            self, broker: Broker, subscription: Subscription
        ) -> Buffer | None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_subscription_buffer`."""

        def mqkit_subscription_taps(
            self, broker: Broker, subscription: Subscription
        ) -> Taps | None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_subscription_taps`."""

        def mqkit_subscribe(self, broker: Broker, subscription: Subscription) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_subscribe`."""

        def mqkit_unsubscribe(self, broker: Broker, subscription: Subscription) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_unsubscribe`."""

        def mqkit_health(self, broker: Broker) -> Sequence[str] | None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_health`."""

        def mqkit_publish(self, broker: Broker, topic: str, message: Message) -> bool | None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_publish`."""

        def mqkit_accept(self, broker: Broker, messages: Sequence[Message]) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_accept`."""

        def mqkit_refused(
            self, broker: Broker, messages: Sequence[Message], error: MQError
        ) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_refused`."""

        def mqkit_published(
            self, broker: Broker, messages: Sequence[Message], copies: Sequence[int]
        ) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_published`."""

        def mqkit_drop(
            self, broker: Broker, subscription: Subscription | None, message: Message, reason: str
        ) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_drop`."""

        def mqkit_deliver(
            self, broker: Broker, subscription: Subscription, message: Message
        ) -> bool | None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_deliver`."""

        def mqkit_delivered(
            self, broker: Broker, subscription: Subscription, message: Message
        ) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_delivered`."""

        def mqkit_ack(self, broker: Broker, subscription: Subscription, message: Message) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_ack`."""

        def mqkit_nack(
            self, broker: Broker, subscription: Subscription, message: Message, requeue: bool
        ) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_nack`."""

        def mqkit_redeliver(
            self, broker: Broker, subscription: Subscription, message: Message
        ) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_redeliver`."""

        def mqkit_expire(self, broker: Broker, topic: str, message: Message) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_expire`."""

        def mqkit_dead_letter(
            self,
            broker: Broker,
            topic: str,
            message: Message,
            reason: str,
            subscription: Subscription | None,
        ) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_dead_letter`."""

        def mqkit_error(self, broker: Broker, operation: str, topic: str, error: MQError) -> None:
            """The hook :func:`~mqkit.core.hookspecs.mqkit_error`."""
