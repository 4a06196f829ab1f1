"""Plugins that must NOT type-check: each ``# E:`` comment is the error mypy must report there.

The runner (tests/typing/test_hook_typing.py) compares mypy's errors with these comments, line
for line (several on one line, each with its own marker); notes are not compared.
"""

# fmt: off
# (the expected errors must stay on the lines mypy reports them on)

from __future__ import annotations

from collections.abc import Sequence

import mqkit


class WrongReturn(mqkit.Plugin):
    @mqkit.hookimpl
    def mqkit_deliver(  # E: Return type "int" of "mqkit_deliver" incompatible with return type "bool | None" in supertype "mqkit.core.plugin.Plugin"  [override]
        self, broker: mqkit.Broker, subscription: mqkit.Subscription, message: mqkit.Message
    ) -> int:
        return 1

    @mqkit.hookimpl
    def mqkit_publish(  # E: Return type "str" of "mqkit_publish" incompatible with return type "bool | None" in supertype "mqkit.core.plugin.Plugin"  [override]
        self, broker: mqkit.Broker, topic: str, message: mqkit.Message
    ) -> str:
        return "taken"

    @mqkit.hookimpl
    def mqkit_health(  # E: Return type "int" of "mqkit_health" incompatible with return type "Sequence[str] | None" in supertype "mqkit.core.plugin.Plugin"  [override]
        self, broker: mqkit.Broker
    ) -> int:
        return 1


class WrongParameter(mqkit.Plugin):
    @mqkit.hookimpl
    def mqkit_delivered(  # E: Argument 3 of "mqkit_delivered" is incompatible with supertype "mqkit.core.plugin.Plugin"; supertype defines the argument type as "Message"  [override]
        self, broker: mqkit.Broker, subscription: mqkit.Subscription, message: mqkit.TTLMessage
    ) -> None:
        pass

    @mqkit.hookimpl
    def mqkit_nack(  # E: Argument 4 of "mqkit_nack" is incompatible with supertype "mqkit.core.plugin.Plugin"; supertype defines the argument type as "bool"  [override]
        self,
        broker: mqkit.Broker,
        subscription: mqkit.Subscription,
        message: mqkit.Message,
        requeue: str,
    ) -> None:
        pass

    @mqkit.hookimpl
    def mqkit_drop(  # E: Argument 2 of "mqkit_drop" is incompatible with supertype "mqkit.core.plugin.Plugin"; supertype defines the argument type as "Subscription | None"  [override]
        self,
        broker: mqkit.Broker,
        subscription: mqkit.Subscription,
        message: mqkit.Message,
        reason: str,
    ) -> None:
        pass


class Subset(mqkit.Plugin):
    """A checked plugin declares the full signature (mypy refuses a narrower override)."""

    @mqkit.hookimpl
    def mqkit_ack(  # E: Signature of "mqkit_ack" incompatible with supertype "mqkit.core.plugin.Plugin"  [override]
        self, message: mqkit.Message
    ) -> None:
        pass


class AsyncHook(mqkit.Plugin):
    @mqkit.hookimpl
    async def mqkit_accept(  # E: Return type "Coroutine[Any, Any, None]" of "mqkit_accept" incompatible with return type "None" in supertype "mqkit.core.plugin.Plugin"  [override]
        self, broker: mqkit.Broker, messages: Sequence[mqkit.Message]
    ) -> None:
        pass


class BadInfo(mqkit.Plugin):
    plugin_info = "bad"  # E: Incompatible types in assignment (expression has type "str", base class "Plugin" defined the type as "PluginInfo")  [assignment]


class BadInterest(mqkit.Plugin):
    @mqkit.hookimpl
    @mqkit.for_messages(lambda cls: True)  # E: Cannot infer type of lambda  [misc] # E: Argument 1 to "for_messages" has incompatible type "Callable[[Any], bool]"; expected "Callable[[type[Message], Config], bool]"  [arg-type]
    def mqkit_publish(self, broker: mqkit.Broker, topic: str, message: mqkit.Message) -> None:
        pass
