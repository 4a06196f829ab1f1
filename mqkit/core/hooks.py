"""The typed facade over the hook relay: the only code that calls plugin hook implementations.

Every hook gets a typed method here, so a misspelt hook is a mypy error, and a ``*_on`` flag, so
the hot path pays a flag test (~10 ns), not a pluggy call (~1 us), when no plugin implements it.

Dispatch is compiled: when the plugin set changes, the plugin host builds a new :class:`Hooks`
from pluggy's ordered implementation lists (``HookCaller.get_hookimpls()``, called in reverse, as
pluggy itself does), each implementation adapted once to the hook's full positional signature.
A call is then a plain loop over functions: pluggy's order, pluggy's firstresult rule, and
per-implementation error isolation that pluggy cannot give (a failing observer must not stop the
others). Hook wrappers are refused at registration, so nothing is bypassed. The per-message
hooks ``mqkit_publish``, ``mqkit_deliver`` and ``mqkit_delivered`` (and the one-message calls of
``mqkit_accept`` and ``mqkit_published``) skip implementations that declined the message's
class (:func:`mqkit.core.hookspecs.for_messages`), from a per-class cache; a class for which
none is left goes into the hook's ``*_idle`` set, which the hot path tests instead of calling
the facade.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import pluggy

from mqkit.core.codegen import generate
from mqkit.core.errors import MQError, PluginError
from mqkit.core.hookspecs import HOOK_NAMES, MESSAGE_INTEREST, Interest
from mqkit.core.message import Message

if TYPE_CHECKING:
    from mqkit.core.broker import Broker
    from mqkit.core.config import Config
    from mqkit.core.subscription import Buffer, Subscription, Taps

__all__ = ["Hooks"]

log = logging.getLogger("mqkit.plugins")

Impl = tuple[str, Callable[..., Any]]
"""(plugin name, implementation taking the hook's full positional arguments)."""
Report = Callable[[str, str, BaseException], None]
"""``report(plugin_name, hook_name, exception)`` counts and logs a failed notification."""


def _adapt(impl: pluggy.HookImpl, spec_args: Sequence[str]) -> Callable[..., Any]:
    """Return ``impl.function`` adapted to take the spec's arguments positionally."""
    fn = impl.function
    wanted = tuple(impl.argnames)
    if wanted == tuple(spec_args):
        return fn
    # A generated adapter (``def adapted(broker, topic, message): return fn(message)``) costs
    # one extra call; a generic ``*args`` shuffle would cost ~10x more on the hot path.
    params = ", ".join(f"a{i}" for i in range(len(spec_args)))
    call = ", ".join(f"a{spec_args.index(name)}" for name in wanted)
    source = f"def adapted({params}):\n    return fn({call})\n"
    return generate("adapted", source, {"fn": fn}, f"adapter of {impl.plugin_name}.{fn.__name__}")


def compile_hook(pm: pluggy.PluginManager, name: str) -> list[Impl]:
    """Compile one hook to its implementations in call order (pluggy's: reversed list)."""
    caller = getattr(pm.hook, name)
    spec = caller.spec
    assert spec is not None, name
    return [
        (impl.plugin_name, _adapt(impl, spec.argnames)) for impl in reversed(caller.get_hookimpls())
    ]


def _interests(pm: pluggy.PluginManager, name: str) -> list[Interest | None]:
    """The ``for_messages`` interest of each implementation, in ``compile_hook``'s order."""
    caller = getattr(pm.hook, name)
    return [getattr(i.function, MESSAGE_INTEREST, None) for i in reversed(caller.get_hookimpls())]


class _ByClass(dict[type, list[Impl]]):
    """A per-message hook's implementations narrowed to each message class (``for_messages``).

    A dict from message class to the implementations to call: the hot path is one C-level
    lookup, and a class seen for the first time is computed by ``__missing__``.
    """

    __slots__ = ("_config", "_hook", "_idle", "_impls", "_report")

    def __init__(
        self,
        hook: str,
        impls: list[Impl],
        interests: list[Interest | None],
        config: Config | None,
        report: Report,
        idle: set[type],
    ) -> None:
        super().__init__()
        self._hook = hook
        self._impls = list(zip(impls, interests, strict=True))
        self._config = config
        self._report = report
        self._idle = idle

    def __missing__(self, cls: type) -> list[Impl]:
        """The implementations to call for messages of ``cls`` (computed once per class)."""
        found: list[Impl] = []
        for impl, interest in self._impls:
            if interest is not None and self._config is not None:
                try:
                    if not interest(cls, self._config):
                        continue
                except Exception as exc:  # counts as interested; the plugin is reported
                    self._report(impl[0], self._hook, exc)
            found.append(impl)
        self[cls] = found  # a race computes the same list twice: harmless
        if not found:
            self._idle.add(cls)
        return found


class Hooks:
    """Typed, compiled dispatch of every hook (see the module docstring).

    Built by the plugin host; immutable afterwards (a plugin change builds a new one).
    """

    def __init__(
        self, pm: pluggy.PluginManager | None, report: Report, config: Config | None = None
    ) -> None:
        self._report = report
        table: dict[str, list[Impl]] = {
            name: (compile_hook(pm, name) if pm is not None else []) for name in HOOK_NAMES
        }
        # The per-message hooks whose implementations may be narrowed by message class. The
        # classes for which none is left are collected in the ``*_idle`` sets: the hot path
        # tests membership (~40 ns) instead of calling the facade for nothing.
        self.publish_idle: set[type] = set()
        """Message classes for which no ``mqkit_publish`` implementation is called."""
        self.deliver_idle: set[type] = set()
        """Message classes for which no ``mqkit_deliver`` implementation is called."""
        self.delivered_idle: set[type] = set()
        """Message classes for which no ``mqkit_delivered`` implementation is called."""
        self.accept_idle: set[type] = set()
        """Message classes for which a one-message ``mqkit_accept`` calls no implementation."""
        self.quiet: set[type] = set()
        """Message classes whose publish concerns nothing but routing (``Broker`` learns them:
        no publish/accept/published hook, lazy buffer or admission for the class)."""
        self.loud: set[type] = set()
        """Message classes found not quiet (so that the broker asks once)."""
        self.drop_idle: set[type] = set()
        """Message classes whose drops from a subscription's buffer call no ``mqkit_drop``
        implementation (drops without a subscription reach every one)."""
        self.take_idle: set[type] = set()
        """Message classes for which neither ``mqkit_deliver`` nor ``mqkit_delivered`` calls an
        implementation (filled in by subscriptions as they find out)."""
        self.buffer_idle: set[type] = set()
        """Message classes for which no ``mqkit_subscription_buffer`` implementation is
        interested: routing them leaves a subscription's FIFO in place."""
        idle = {
            "mqkit_subscription_buffer": self.buffer_idle,
            "mqkit_publish": self.publish_idle,
            "mqkit_deliver": self.deliver_idle,
            "mqkit_delivered": self.delivered_idle,
            "mqkit_accept": self.accept_idle,
            "mqkit_published": set(),  # not tested by the broker: the facade narrows it
            "mqkit_drop": self.drop_idle,
        }
        narrowed: dict[str, _ByClass | None] = {}
        for name, idle_classes in idle.items():
            interests = _interests(pm, name) if pm is not None else []
            narrowed[name] = (
                _ByClass(name, table[name], interests, config, report, idle_classes)
                if any(i is not None for i in interests)
                else None
            )
        buffer_by_class = narrowed["mqkit_subscription_buffer"]
        self._buffer_by_class = buffer_by_class
        buffer_interests = _interests(pm, "mqkit_subscription_buffer") if pm is not None else []
        self.buffer_lazy = bool(buffer_interests) and all(i is not None for i in buffer_interests)
        """Whether every ``mqkit_subscription_buffer`` implementation declared its message
        classes: subscriptions then start with a FIFO and move to the plugin's buffer on the
        first message of such a class (``Broker`` tests ``buffer_idle`` per publish)."""
        self._publish_by_class = narrowed["mqkit_publish"]
        self._deliver_by_class = narrowed["mqkit_deliver"]
        self._delivered_by_class = narrowed["mqkit_delivered"]
        self._accept_by_class = narrowed["mqkit_accept"]
        self._published_by_class = narrowed["mqkit_published"]
        self._drop_by_class = narrowed["mqkit_drop"]
        self.impls = table
        """Compiled implementations per hook name (read-only; for tests and tooling)."""
        self._broker_start = table["mqkit_broker_start"]
        self._broker_close = table["mqkit_broker_close"]
        self._broker_closing = table["mqkit_broker_closing"]
        self._authenticate = table["mqkit_authenticate"]
        self._authorize = table["mqkit_authorize"]
        self._subscription_buffer = table["mqkit_subscription_buffer"]
        self._subscribe = table["mqkit_subscribe"]
        self._subscription_taps = table["mqkit_subscription_taps"]
        self._unsubscribe = table["mqkit_unsubscribe"]
        self._health = table["mqkit_health"]
        self._publish = table["mqkit_publish"]
        self._accept = table["mqkit_accept"]
        self._published = table["mqkit_published"]
        self._refused = table["mqkit_refused"]
        self._drop = table["mqkit_drop"]
        self._deliver = table["mqkit_deliver"]
        self._delivered = table["mqkit_delivered"]
        self._ack = table["mqkit_ack"]
        self._nack = table["mqkit_nack"]
        self._redeliver = table["mqkit_redeliver"]
        self._expire = table["mqkit_expire"]
        self._dead_letter = table["mqkit_dead_letter"]
        self._error = table["mqkit_error"]
        # Guards for the per-message hooks: a flag test instead of a call.
        self.publish_on = bool(self._publish)
        self.accept_on = bool(self._accept)
        self.published_on = bool(self._published)
        self.drop_on = bool(self._drop)
        self.deliver_on = bool(self._deliver)
        self.delivered_on = bool(self._delivered)
        self.on_take = self.deliver_on or self.delivered_on
        """Whether a consumer taking a message fires any hook (``deliver`` or ``delivered``)."""
        self.error_on = bool(self._error)

    def calls_any(self) -> bool:
        """Whether any hook has an implementation."""
        return any(self.impls.values())

    # -- shared call shapes --------------------------------------------------------------------

    def _notify(self, hook: str, impls: list[Impl], *args: Any) -> None:
        for plugin, fn in impls:
            try:
                fn(*args)
            except Exception as exc:
                self._report(plugin, hook, exc)

    @staticmethod
    def _decide(hook: str, impls: list[Impl], *args: Any) -> Any:
        """Call until the first non-None result; MQError passes, anything else -> PluginError."""
        for plugin, fn in impls:
            try:
                result = fn(*args)
            except MQError:
                raise
            except Exception as exc:
                raise PluginError.because(f"plugin {plugin!r} failed in {hook}: {exc!r}") from exc
            if result is not None:
                return result
        return None

    # -- lifecycle -----------------------------------------------------------------------------

    def broker_start(self, broker: Broker, plugins: frozenset[str] | None = None) -> None:
        """Fire ``mqkit_broker_start`` (for ``plugins`` only, when given).

        An ``MQError`` (a locked persistence directory, say) passes unchanged; anything else
        becomes a ``PluginError`` naming the plugin.
        """
        for plugin, fn in self._broker_start:
            if plugins is None or plugin in plugins:
                try:
                    fn(broker)
                except MQError:
                    raise
                except Exception as exc:
                    raise PluginError.because(
                        f"plugin {plugin!r} failed to start: {exc!r}"
                    ) from exc

    def broker_close(self, broker: Broker, plugins: frozenset[str] | None = None) -> None:
        """Fire ``mqkit_broker_close`` (for ``plugins`` only, when given)."""
        impls = [i for i in self._broker_close if plugins is None or i[0] in plugins]
        self._notify("mqkit_broker_close", impls, broker)

    def broker_closing(self, broker: Broker) -> None:
        """Fire ``mqkit_broker_closing``."""
        self._notify("mqkit_broker_closing", self._broker_closing, broker)

    def authenticate(
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
        """Ask ``mqkit_authenticate`` (firstresult); a failing plugin refuses (``False``)."""
        for plugin, fn in self._authenticate:
            try:
                result = fn(broker, protocol, client_id, username, password, method, data, state)
            except Exception as exc:
                self._report(plugin, "mqkit_authenticate", exc)
                return False
            if result is not None:
                return result if isinstance(result, bytes) else bool(result)
        return None

    def authorize(
        self,
        broker: Broker,
        protocol: str,
        client_id: str,
        username: str | None,
        action: str,
        topic: str,
    ) -> bool:
        """Ask ``mqkit_authorize`` (firstresult); no opinion allows, a failing plugin denies."""
        for plugin, fn in self._authorize:
            try:
                result = fn(broker, protocol, client_id, username, action, topic)
            except Exception as exc:
                self._report(plugin, "mqkit_authorize", exc)
                return False
            if result is not None:
                return bool(result)
        return True

    def subscription_buffer(self, broker: Broker, subscription: Subscription) -> Buffer | None:
        """Ask ``mqkit_subscription_buffer`` for a buffer (firstresult)."""
        return cast(
            "Buffer | None",
            self._decide(
                "mqkit_subscription_buffer", self._subscription_buffer, broker, subscription
            ),
        )

    def publish_wanted(self, cls: type) -> bool:
        """Whether an ``mqkit_publish`` implementation concerns messages of ``cls``."""
        by_class = self._publish_by_class
        return bool(self._publish if by_class is None else by_class[cls])

    def accept_wanted(self, cls: type) -> bool:
        """Whether an ``mqkit_accept`` implementation concerns messages of ``cls``."""
        by_class = self._accept_by_class
        return bool(self._accept if by_class is None else by_class[cls])

    def buffer_wanted(self, cls: type) -> bool:
        """Whether a ``mqkit_subscription_buffer`` implementation wants messages of ``cls``.

        For ``buffer_lazy``; a class for which none does goes into ``buffer_idle``.
        """
        by_class = self._buffer_by_class
        return by_class is None or bool(by_class[cls])

    def subscription_taps(self, broker: Broker, subscription: Subscription) -> list[Taps]:
        """Collect ``mqkit_subscription_taps`` (a failing plugin's taps are left out)."""
        found: list[Taps] = []
        for plugin, fn in self._subscription_taps:
            try:
                taps = fn(broker, subscription)
            except Exception as exc:
                self._report(plugin, "mqkit_subscription_taps", exc)
                continue
            if taps is not None:
                found.append(taps)
        return found

    def subscribe(self, broker: Broker, subscription: Subscription) -> None:
        """Fire ``mqkit_subscribe``."""
        self._notify("mqkit_subscribe", self._subscribe, broker, subscription)

    def unsubscribe(self, broker: Broker, subscription: Subscription) -> None:
        """Fire ``mqkit_unsubscribe``."""
        self._notify("mqkit_unsubscribe", self._unsubscribe, broker, subscription)

    def health(self, broker: Broker) -> list[str]:
        """Collect ``mqkit_health`` problems from every plugin."""
        problems: list[str] = []
        for plugin, fn in self._health:
            try:
                found = fn(broker)
            except Exception as exc:
                self._report(plugin, "mqkit_health", exc)
                continue
            if found:
                problems.extend(str(p) for p in found)
        return problems

    # -- the message path ------------------------------------------------------------------------

    def publish(self, broker: Broker, topic: str, message: Message) -> bool:
        """Fire ``mqkit_publish``; True when a plugin took the message over."""
        by_class = self._publish_by_class
        impls = self._publish if by_class is None else by_class[message.__class__]
        for plugin, fn in impls:  # _decide, inlined: this is the hottest hook
            try:
                result = fn(broker, topic, message)
            except MQError:
                raise
            except Exception as exc:
                raise PluginError.because(
                    f"plugin {plugin!r} failed in mqkit_publish: {exc!r}"
                ) from exc
            if result is not None:
                return bool(result)
        return False

    def accept(self, broker: Broker, messages: Sequence[Message]) -> None:
        """Fire ``mqkit_accept``; an MQError (or PluginError) fails the publish.

        A refusal fires ``mqkit_refused`` (every implementation) before it propagates.
        """
        by_class = self._accept_by_class
        impls = (
            self._accept
            if by_class is None or len(messages) != 1
            else by_class[messages[0].__class__]
        )
        for plugin, fn in impls:  # _decide, inlined (every result is ignored)
            try:
                fn(broker, messages)
            except MQError as exc:
                self.refused(broker, messages, exc)
                raise
            except Exception as exc:
                error = PluginError.because(f"plugin {plugin!r} failed in mqkit_accept: {exc!r}")
                self.refused(broker, messages, error)
                raise error from exc

    def refused(self, broker: Broker, messages: Sequence[Message], error: MQError) -> None:
        """Fire ``mqkit_refused`` (``accept`` does, when an implementation refuses)."""
        self._notify("mqkit_refused", self._refused, broker, messages, error)

    def published(self, broker: Broker, messages: Sequence[Message], copies: Sequence[int]) -> None:
        """Fire ``mqkit_published``."""
        by_class = self._published_by_class
        impls = (
            self._published
            if by_class is None or len(messages) != 1
            else by_class[messages[0].__class__]
        )
        for plugin, fn in impls:
            try:
                fn(broker, messages, copies)
            except Exception as exc:
                self._report(plugin, "mqkit_published", exc)

    def drop(
        self, broker: Broker, subscription: Subscription | None, message: Message, reason: str
    ) -> None:
        """Fire ``mqkit_drop`` (and the subscription's ``Taps.dropped``).

        A drop from a subscription's buffer skips the implementations narrowed away from the
        message's class (:func:`~mqkit.core.hookspecs.for_messages`); a drop without a
        subscription (a lost dead letter, a message a gateway cannot send) reaches every one.
        """
        impls = self._drop
        if subscription is not None:
            for dropped in subscription._drop_taps:
                try:
                    dropped(subscription, message, reason)
                except Exception as exc:
                    self._report("taps of subscription", "mqkit_drop", exc)
            by_class = self._drop_by_class
            if by_class is not None:
                impls = by_class[message.__class__]
        self._notify("mqkit_drop", impls, broker, subscription, message, reason)

    def deliver(self, broker: Broker, subscription: Subscription, message: Message) -> bool:
        """Fire ``mqkit_deliver``; False when a plugin withholds the message."""
        by_class = self._deliver_by_class
        impls = self._deliver if by_class is None else by_class[message.__class__]
        for plugin, fn in impls:
            try:
                result = fn(broker, subscription, message)
            except Exception as exc:
                self._report(plugin, "mqkit_deliver", exc)
                continue
            if result is not None:
                return bool(result)
        return True

    def delivered(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """Fire ``mqkit_delivered``."""
        by_class = self._delivered_by_class
        impls = self._delivered if by_class is None else by_class[message.__class__]
        for plugin, fn in impls:
            try:
                fn(broker, subscription, message)
            except Exception as exc:
                self._report(plugin, "mqkit_delivered", exc)

    def ack(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """Fire ``mqkit_ack``."""
        for plugin, fn in self._ack:
            try:
                fn(broker, subscription, message)
            except Exception as exc:
                self._report(plugin, "mqkit_ack", exc)

    def nack(
        self, broker: Broker, subscription: Subscription, message: Message, requeue: bool
    ) -> None:
        """Fire ``mqkit_nack``."""
        self._notify("mqkit_nack", self._nack, broker, subscription, message, requeue)

    def redeliver(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """Fire ``mqkit_redeliver``."""
        self._notify("mqkit_redeliver", self._redeliver, broker, subscription, message)

    def expire(self, broker: Broker, topic: str, message: Message) -> None:
        """Fire ``mqkit_expire``."""
        self._notify("mqkit_expire", self._expire, broker, topic, message)

    def dead_letter(
        self,
        broker: Broker,
        topic: str,
        message: Message,
        reason: str,
        subscription: Subscription | None = None,
    ) -> None:
        """Fire ``mqkit_dead_letter`` (``subscription``: whose delivered copy ends, if any)."""
        self._notify(
            "mqkit_dead_letter", self._dead_letter, broker, topic, message, reason, subscription
        )

    def error(self, broker: Broker, operation: str, topic: str, error: MQError) -> None:
        """Fire ``mqkit_error``."""
        self._notify("mqkit_error", self._error, broker, operation, topic, error)
