"""The hook specifications: every extension point of the broker, in the order a message meets them.

A plugin is any object (usually a class instance, one per broker) with methods marked
``@mqkit.hookimpl`` whose names are hooks below. An implementation may declare any subset of a
hook's arguments (pluggy's rule); a plugin class that subclasses :class:`mqkit.Plugin` declares
them all, as below, and mypy checks its implementations' argument and return types. The broker
calls hooks only through its typed facade (:mod:`mqkit.core.hooks`), which costs a flag test,
not a call, when no plugin implements a hook.

**Call types.** *firstresult* hooks stop at the first implementation that returns something
other than ``None``; *collecting* hooks call every implementation; *notifications* call every
implementation and ignore results.

**Errors.** Decision hooks (``mqkit_publish``, ``mqkit_accept``, ``mqkit_subscription_buffer``)
may raise an :class:`~mqkit.MQError` to refuse; the broker passes it to the caller. Any other
exception from them fails that one operation with :class:`~mqkit.PluginError` (the original
chained) and leaves the broker usable. An exception in a notification hook (and in
``mqkit_deliver``, ``mqkit_health``) never breaks delivery or the other plugins: it is counted
against the plugin, logged with its name and reported by ``health_check()``.

**Threads.** Hooks run in the thread of the operation that fires them: publishers, consumers,
or the broker's timer thread. They must not block; they may call back into the broker.

**Order.** Implementations run in pluggy's order: ``tryfirst`` ones first, ``trylast`` ones
last, otherwise the most recently registered first. Built-in plugins register before
third-party ones, so third-party implementations run before built-in ones of the same bucket.

**Narrowing.** An implementation of ``mqkit_publish``, ``mqkit_deliver`` or
``mqkit_delivered`` that concerns some message classes only (those with ``expires_at``, say)
may say so with :func:`for_messages`: the facade then skips it for the other classes, without
a call (the answer is cached per class until the configuration or the plugin set changes).
``mqkit_accept`` and ``mqkit_published`` are narrowed the same way when a call carries one
message (``publish``); a call with several (a batch, a commit) reaches every implementation.
``mqkit_drop`` is narrowed for drops from a subscription's buffer; a drop without a
subscription (a lost dead letter, a message a gateway cannot send) reaches every
implementation.

A message's path: ``publish`` → :func:`mqkit_publish` (check, or take over) →
:func:`mqkit_accept` (store) → buffered in each matching subscription (or :func:`mqkit_drop`) →
:func:`mqkit_published` → a consumer's ``get`` → :func:`mqkit_deliver` (hand out or withhold) →
:func:`mqkit_delivered` → :func:`mqkit_ack` / :func:`mqkit_nack` → :func:`mqkit_expire` /
:func:`mqkit_dead_letter` when it is given up.

**Plugins configure, the hot path runs.** Hooks are for what a plugin must see per message
(storing, acknowledging, auditing). What can be chosen once is chosen once: a subscription's
buffer (:func:`mqkit_subscription_buffer`, lazily for the classes a plugin names), its
per-message *taps* (:func:`mqkit_subscription_taps`: an age limit with its withhold check, a
latency sampler, byte metering), and the broker's admission check (``Broker.add_admission``).
Counts the core keeps anyway are read, not reported: a subscription's ``received``,
``dropped``, ``delivered`` and metered bytes, and the per-topic publish count
(``Broker.count_published``). A message class that no ``mqkit_publish``/``mqkit_accept``/
``mqkit_published`` implementation, lazy buffer or admission concerns is learnt once, and its
publishes only route and count. What the built-in plugins cost each message:

| plugin | per publish | per hand-out |
|---|---|---|
| metrics | a C-level count per topic | a sample, 1 in 64 (``Taps.sample``) |
| memory | one admission call; metered copy | metered (the pop takes the lock) |
| priority | nothing until a prioritised message | the ordered buffer's pop |
| ttl | ``mqkit_publish`` (own ``expires_at``) | age test (``Taps.max_age``) |
| ack | ``mqkit_accept``, ``mqkit_published`` | ``mqkit_delivered`` |
| persistence | ``mqkit_accept``, ``mqkit_published`` | nothing (``mqkit_ack`` deletes) |
| deadletter, transactions | nothing | nothing |

(``ttl`` also checks a message with its own ``expires_at`` in ``mqkit_deliver``; ``ack``'s
hooks concern the ack message classes only; ``metrics`` samples each subscription's first 64
hand-outs all.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from mqkit.core.errors import MQError
from mqkit.core.message import Message

if TYPE_CHECKING:
    from mqkit.core.broker import Broker
    from mqkit.core.config import Config
    from mqkit.core.subscription import Buffer, Subscription, Taps

__all__ = ["HOOK_NAMES", "MESSAGE_INTEREST", "Interest", "for_messages", "hookimpl", "hookspec"]

PROJECT = "mqkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a plugin method as a hook implementation: ``@mqkit.hookimpl``."""

Interest = Callable[[type[Message], "Config"], bool]
"""``interest(message_class, config) -> bool``: does an implementation concern that class?"""
MESSAGE_INTEREST = "mqkit_message_interest"
"""The attribute :func:`for_messages` sets on an implementation."""
_F = TypeVar("_F", bound=Callable[..., Any])


def for_messages(interest: Interest) -> Callable[[_F], _F]:
    """Narrow an implementation of a per-message hook to the message classes it concerns.

    For ``mqkit_publish``, ``mqkit_deliver`` and ``mqkit_delivered``, and for the one-message
    calls of ``mqkit_accept`` and ``mqkit_published`` (elsewhere it has no effect). The facade
    asks ``interest(type(message), broker.config)`` once per message class
    and caches the answer until the configuration or the plugin set changes; for a class it
    declines, the implementation is not called at all. Use it for an implementation that would
    return at once for other classes::

        @mqkit.hookimpl
        @mqkit.for_messages(lambda cls, config: hasattr(cls, "expires_at"))
        def mqkit_publish(self, broker, topic, message): ...

    The answer must depend on the class and the configuration only. An ``interest`` that
    raises counts as interested (and is reported against the plugin).
    """

    def mark(fn: _F) -> _F:
        setattr(fn, MESSAGE_INTEREST, interest)
        return fn

    return mark


# --- lifecycle ----------------------------------------------------------------------------------


@hookspec
def mqkit_broker_start(broker: Broker) -> None:
    """The broker is built and every plugin registered; start background work here.

    Fires once per plugin: at ``Broker(...)`` for the plugins it loads, and in
    ``update_config`` for a plugin that the new config switches on. Notification.
    An exception here fails ``Broker(...)`` (or ``update_config``): an ``MQError`` as it is,
    anything else as ``PluginError``.
    """


@hookspec
def mqkit_broker_close(broker: Broker) -> None:
    """The broker is closing (or ``update_config`` switched the plugin off); stop work here.

    Fires before subscriptions end and before the timer service stops, so a plugin may still
    dead-letter or persist what it holds. Notification: exceptions are counted and logged.
    """


@hookspec
def mqkit_broker_closing(broker: Broker) -> None:
    """``close()`` has begun and the broker still accepts publishes: finish conversations here.

    Fires once, at the start of ``close()``, before the broker is marked closed and before
    :func:`mqkit_broker_close`. Protocol gateways disconnect their clients here and publish
    what a disconnection implies (MQTT wills). Notification: exceptions are counted and logged.
    """


@hookspec(firstresult=True)
def mqkit_authenticate(
    broker: Broker,
    protocol: str,
    client_id: str,
    username: str | None,
    password: bytes | None,
    method: str,
    data: bytes | None,
    state: dict[str, Any],
) -> bool | bytes | None:
    """A client of a protocol gateway (``protocol``: ``"mqtt"``, ...) asks to connect.

    Fires once per connection attempt, and once per step of a challenge-response
    (``method`` names it: MQTT 5 enhanced authentication; ``""`` for a plain user name and
    password), in a worker thread of the gateway: it may block briefly (key derivation), never
    for long. ``state`` is a per-connection dict an implementation may keep data in between
    the steps. firstresult: return ``True`` to let the client in, ``False`` to refuse it,
    ``bytes`` to send a challenge and continue (its answer comes in the next call's ``data``),
    ``None`` for no opinion. With no opinion at all, a plain login is refused and an unknown
    ``method`` is answered "bad authentication method". An exception refuses the client and
    is counted against the plugin.
    """


@hookspec(firstresult=True)
def mqkit_authorize(
    broker: Broker, protocol: str, client_id: str, username: str | None, action: str, topic: str
) -> bool | None:
    """Decide whether a gateway client may ``publish`` to a topic or ``subscribe`` to a filter.

    ``action`` is ``"publish"`` (``topic`` is a topic name) or ``"subscribe"`` (``topic`` is
    a topic filter, e.g. MQTT ``sensors/+/temp``). The MQTT gateway also asks ``"subscribe"``
    with the topic name of every message before it sends it to the client (may it receive
    it?). Fires in the gateway's event loop: must not block; gateways cache the answer per
    connection and topic until the ACL is reloaded (``MQTTPlugin.reload_acl()``, which a
    plugin whose answers changed may call too). firstresult: return ``True`` to allow,
    ``False`` to deny, ``None`` for no opinion (allowed). An exception denies the action and
    is counted against the plugin.
    """


@hookspec(firstresult=True)
def mqkit_subscription_buffer(broker: Broker, subscription: Subscription) -> Buffer | None:
    """Supply the buffer for a subscription (the ``priority`` plugin's ordered buffer).

    firstresult: the first non-``None`` buffer is used; ``None`` from everybody gives a FIFO.
    Fires when a subscription is made - or, for an implementation marked with
    :func:`for_messages`, only once a message of a class it is interested in is first routed
    to the subscription: until then the subscription keeps a FIFO (a plain message costs no
    ordered buffer), and its buffered messages move to the new buffer in order. May raise
    ``MQError`` to refuse the subscription (at subscribe time only).
    """


@hookspec
def mqkit_subscription_taps(broker: Broker, subscription: Subscription) -> Taps | None:
    """Choose the per-message work a plugin needs on a subscription, once (:class:`Taps`).

    Fires when a subscription is made, and for every live subscription when the plugin set
    changes; the subscription then calls the taps directly, with no hook dispatch per message
    (a latency sampler, an expiry check, byte metering). Collecting: every implementation is
    asked; return ``None`` for nothing. An exception is counted against the plugin and its taps
    are left out.
    """


@hookspec
def mqkit_subscribe(broker: Broker, subscription: Subscription) -> None:
    """A subscription was created and is routed to. Notification."""


@hookspec
def mqkit_unsubscribe(broker: Broker, subscription: Subscription) -> None:
    """A subscription was cancelled, or its broker is closing. Notification.

    Its buffer may still hold messages that its consumer will drain.
    """


@hookspec
def mqkit_health(broker: Broker) -> Sequence[str] | None:
    """Report problems for ``health_check()``: each string makes the broker ``degraded``.

    Collecting: every implementation is asked; return ``None`` or an empty sequence when all is
    well. Exceptions are counted against the plugin (which is itself a problem).
    """


# --- the message path ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def mqkit_publish(broker: Broker, topic: str, message: Message) -> bool | None:
    """Check a message before it is routed, or take it over. Once per message, hot path.

    ``message`` is the broker's stamped copy (``topic``, ``time`` and ack id filled in).
    Raise an ``MQError`` to reject the message: nothing is delivered or stored, and the
    publisher gets the error (``publish_batch``: nothing of the batch is). firstresult: return
    ``True`` to take the message over (the broker then neither stores nor routes it);
    return ``None`` to let it go on.
    """


@hookspec
def mqkit_accept(broker: Broker, messages: Sequence[Message]) -> None:
    """The messages of one publish call passed every check; they are about to be delivered.

    Fires once per ``publish`` (one message), ``publish_batch`` (the whole batch) and
    transaction commit (every message, each with its own ``topic``), before any of them is
    buffered, and after the broker's admission checks (the ``memory`` plugin's limit: see
    ``Broker.add_admission``). The ``persistence`` plugin stores them here, in one store
    transaction. May raise an ``MQError`` (``PersistenceError``) to fail the whole call:
    nothing is delivered.
    """


@hookspec
def mqkit_refused(broker: Broker, messages: Sequence[Message], error: MQError) -> None:
    """An ``mqkit_accept`` implementation refused the messages of a publish call with ``error``.

    None of ``messages`` is delivered, and none is stored by an implementation that raised
    or had not run yet. Fires for every implementation, before the error reaches the caller:
    undo here what your ``mqkit_accept`` set aside for these very messages (it may not have
    run at all). Notification.
    """


@hookspec
def mqkit_published(broker: Broker, messages: Sequence[Message], copies: Sequence[int]) -> None:
    """The messages were routed to every matching subscription. Notification, hot path.

    ``copies[i]`` is how many subscription buffers ``messages[i]`` entered (filters, closed
    subscriptions and policy drops of the new message excluded).
    """


@hookspec
def mqkit_drop(
    broker: Broker, subscription: Subscription | None, message: Message, reason: str
) -> None:
    """A message was dropped: ``subscription`` will never hand it out. Notification.

    ``reason`` is the backpressure policy that dropped it, or why else:

    - ``drop_oldest``: the dropped message was buffered and was evicted to make room;
    - ``drop_newest``, ``block_with_timeout``, ``close_subscriber``: the *new* message never
      entered the buffer (``drop_newest`` also under ``DROP_OLDEST`` when the buffer chose to
      drop the new message: a priority buffer whose new message ranks lowest);
    - ``withheld``: it left the buffer but was not handed out (``mqkit_deliver`` withheld it,
      or the ``ttl`` sweep removed it: expired);
    - ``unsubscribed``: removed from a cancelled subscription's buffer (an ack-required
      message that could no longer be acknowledged);
    - ``dead letter queue off``: a dead letter with nowhere to go (``subscription`` is
      ``None``);
    - ``dead letter refused``: a dead letter the queue could not take (the memory limit;
      ``subscription`` is ``None``);
    - ``unsendable``: a protocol gateway took it from its subscription but cannot send it to
      one client (MQTT: a string the protocol forbids, or more than the client's Maximum
      Packet Size); ``subscription`` is ``None``, once per client that loses it.
    """


@hookspec(firstresult=True)
def mqkit_deliver(broker: Broker, subscription: Subscription, message: Message) -> bool | None:
    """A consumer is about to be handed ``message``; return ``False`` to withhold it.

    Fires in the consumer's thread inside ``get``/``aget``, hot path. firstresult: the first
    ``False`` withholds the message (the ``ttl`` plugin does so for expired messages, and reports
    them through :func:`mqkit_expire` itself); return ``None`` otherwise, never ``True``.
    Exceptions are counted and the message is handed out.
    """


@hookspec
def mqkit_delivered(broker: Broker, subscription: Subscription, message: Message) -> None:
    """``message`` was handed to the consumer of ``subscription``. Notification, hot path.

    The ``ack`` plugin starts an ack-required message's deadline here; ``metrics`` counts the
    delivery and its publish-to-delivery latency.
    """


@hookspec
def mqkit_ack(broker: Broker, subscription: Subscription, message: Message) -> None:
    """A consumer acknowledged ``message`` on ``subscription``. Notification."""


@hookspec
def mqkit_nack(broker: Broker, subscription: Subscription, message: Message, requeue: bool) -> None:
    """A consumer rejected ``message``; ``requeue`` says whether it will be redelivered.

    Notification.
    """


@hookspec
def mqkit_redeliver(broker: Broker, subscription: Subscription, message: Message) -> None:
    """``message`` (with ``attempt`` raised) was put back in ``subscription``. Notification."""


@hookspec
def mqkit_expire(broker: Broker, topic: str, message: Message) -> None:
    """``message``'s TTL ran out before it was delivered. Notification."""


@hookspec
def mqkit_dead_letter(
    broker: Broker,
    topic: str,
    message: Message,
    reason: str,
    subscription: Subscription | None,
) -> None:
    """``message``, first published to ``topic``, was given up and dead-lettered.

    Fires after the dead letter queue took it (``message`` is the original message;
    ``reason`` says why: ``expired``, ``nacked after N attempts``, ...). Notification.

    ``subscription`` is the subscription whose *delivered* copy ends here (the ``ack`` plugin's:
    nacked without requeue, out of retries, or held unacknowledged when the subscription was
    cancelled). It is ``None`` when no delivered copy ends with this call: a buffered copy
    (expired, or removed from a cancelled subscription), whose end :func:`mqkit_drop` reports,
    or a message put into the queue by ``publish_to_dead_letter``.
    """


@hookspec
def mqkit_error(broker: Broker, operation: str, topic: str, error: MQError) -> None:
    """A broker operation failed with ``error`` (a rejected publish, say). Notification.

    ``operation`` is the broker method's name (``publish``, ``subscribe``, ...); ``topic`` is
    the topic it was given, or ``""``.
    """


HOOK_NAMES: tuple[str, ...] = tuple(name for name in sorted(globals()) if name.startswith("mqkit_"))
"""Every hook name, sorted."""
