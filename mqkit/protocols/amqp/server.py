"""The AMQP server: listeners, vhosts (exchanges, queues, bindings), routing and delivery.

Everything here runs on the gateway's own event loop (see :mod:`.plugin`); one protocol object
per connection (:class:`~.connection.Connection`) handles that client's frames.

**Queues are mqkit subscriptions.** Each queue is a subscription on the internal topic
``amqp:<vhost>:<queue>``; routing a message to a queue publishes it in-process to that topic,
so the broker's own features run: its buffer is the queue (``x-max-length`` is the buffer size,
``drop-head`` the ``DROP_OLDEST`` policy), ``x-max-priority`` makes messages
``PriorityMessage`` objects for mqkit's priority buffer, ``x-message-ttl``/``expiration`` make
them ``TTLMessage`` objects that mqkit's TTL plugin expires, and what the buffer drops or
expires is dead-lettered to ``x-dead-letter-exchange`` (a subscription tap, see
:mod:`.plugin`). A per-queue task takes messages from the subscription while a consumer has
prefetch credit and hands each to the next consumer (round robin).

**amq.topic is the broker's topic space** (vhost ``/``). A publish to ``amq.topic`` is an
in-process ``broker.publish(routing_key, message)``; the queues bound to ``amq.topic`` are fed
by one pattern subscription of the gateway (``*``, filtered by the bindings' keys), so that
in-process publishers, MQTT clients and AMQP publishers all reach them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import ssl
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs

from mqkit.core.errors import MQError, SubscriptionClosedError
from mqkit.core.message import Message, posix_time, redelivery
from mqkit.core.subscription import Backpressure, SubOptions, Subscription
from mqkit.core.topics import normalize_topic
from mqkit.protocols.amqp.auth import Permissions
from mqkit.protocols.amqp.channel import Channel
from mqkit.protocols.amqp.connection import Connection
from mqkit.protocols.amqp.mapping import (
    K_EXCHANGE,
    K_EXPIRATION,
    K_HEADERS,
    K_IN_PROCESS,
    K_ROUTING_KEY,
    body_size,
    message_from_publish,
    with_queue_rules,
)
from mqkit.protocols.amqp.model import (
    KEY_PREFIX,
    NOT_FOUND,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
    AMQPError,
    Binding,
    Consumer,
    Exchange,
    Queue,
    VHost,
    topic_matcher,
)
from mqkit.protocols.amqp.settings import AMQPSettings
from mqkit.protocols.amqp.store import K_SEQ, AMQPStore

if TYPE_CHECKING:
    from mqkit.core.broker import Broker

__all__ = ["KEY_PREFIX", "TOPIC_VHOST", "Server"]

log = logging.getLogger("mqkit.amqp")

TOPIC_VHOST: Final = "/"
"""The vhost whose ``amq.topic`` is the broker's topic space."""
_OTHER_GATEWAYS: Final = ("amqp:", "mqtt:")
_UNSUPPORTED_ARGS: Final = ("x-single-active-consumer",)
"""Queue arguments refused (406) rather than silently ignored."""
DELIVERY_BATCH: Final = 256
"""Most messages a queue hands to its consumers before the loop writes them out."""
MEMORY_CHECK_SECONDS: Final = 0.25
"""How often the memory watermarks are checked (with ``max_memory_usage`` set)."""


class Server:
    """The AMQP server of one broker (loop-thread only, except where noted)."""

    def __init__(
        self,
        broker: Broker,
        store: AMQPStore | None = None,
        permissions: Permissions | None = None,
    ) -> None:
        cfg = broker.settings(AMQPSettings)
        self.broker = broker
        self.store = store
        """Durable topology and persistent messages (``enable_persistence``), or None."""
        self.permissions = permissions
        """Per-vhost permissions (``[amqp] permissions_file``), or None: all allowed."""
        self.hooks = broker.hooks
        self.settings = cfg
        self.vhosts: dict[str, VHost] = {name: VHost(name) for name in cfg.vhosts}
        self.connections: set[Connection] = set()
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mqkit-amqp")
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._names = itertools.count(1)
        self._salt = os.urandom(4).hex()
        self.reply_channels: dict[str, Channel] = {}
        """Channels consuming from ``amq.rabbitmq.reply-to``, by their reply token."""
        self.blocked = False
        """Whether the broker's memory is past ``memory_high_watermark`` (connection.blocked)."""
        self._memory_timer: asyncio.TimerHandle | None = None
        self._bridge: Subscription | None = None
        self._bridge_task: asyncio.Task[None] | None = None
        self.weighed: set[str] = set()
        """Topics of the queues with ``x-max-length-bytes``: their subscriptions keep the sum
        of their bodies' lengths (``Taps.weigh``), so the bound costs no walk of the queue."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def listen(
        self, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        """Start a listener; return its bound address."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        server = await loop.create_server(
            lambda: Connection(self), host, port, ssl=tls, reuse_address=True, backlog=1024
        )
        self._servers.append(server)
        if self.broker.config.max_memory_usage > 0 and self._memory_timer is None:
            self._memory_timer = loop.call_later(MEMORY_CHECK_SECONDS, self._check_memory)
        sockname = server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    def load(self) -> None:
        """Declare what a previous run stored, then put each queue's messages back in order."""
        assert self.store is not None
        found = self.store.load()
        for vhost_name, record in found.exchanges:
            vhost = self.vhosts.get(vhost_name)
            if vhost is None or record["name"] in vhost.exchanges:
                continue
            vhost.exchanges[record["name"]] = Exchange(
                record["name"],
                record["type"],
                durable=True,
                auto_delete=bool(record.get("auto_delete")),
                internal=bool(record.get("internal")),
                arguments=dict(record.get("arguments") or {}),
            )
        for vhost_name, record in found.queues:
            vhost = self.vhosts.get(vhost_name)
            if vhost is None or record["name"] in vhost.queues:
                continue
            try:
                self.declare_queue(
                    vhost,
                    record["name"],
                    durable=True,
                    exclusive=None,
                    auto_delete=bool(record.get("auto_delete")),
                    arguments=dict(record.get("arguments") or {}),
                )
            except AMQPError as exc:
                log.error("amqp: stored queue %r not restored: %s", record["name"], exc)
        for vhost_name, source, to_exchange, destination, key, args in found.bindings:
            vhost = self.vhosts.get(vhost_name)
            if vhost is None or source not in vhost.exchanges:
                continue
            ends = vhost.exchanges if to_exchange else vhost.queues
            if destination in ends:
                self.bind(vhost, vhost.exchanges[source], destination, to_exchange, key, args)
        for (vhost_name, queue_name), messages in found.messages.items():
            vhost = self.vhosts.get(vhost_name)
            queue = None if vhost is None else vhost.queues.get(queue_name)
            if queue is None:
                self.store.settle_all(vhost_name, queue_name, [m for _, m in messages])
                continue
            for _, message in messages:
                try:
                    self.broker.publish(queue.topic, message)
                except MQError as exc:
                    log.error("amqp: stored message of %r not restored: %s", queue_name, exc)

    async def shutdown(self) -> None:
        """Stop listening, close every connection (320 CONNECTION_FORCED), drop the queues."""
        self.closing = True
        if self._memory_timer is not None:
            self._memory_timer.cancel()
            self._memory_timer = None
        for server in self._servers:
            server.close()
        closed = [conn.shut_down() for conn in list(self.connections)]
        for server in self._servers:
            await server.wait_closed()
        waits = [c for c in closed if c is not None]
        if waits:
            await asyncio.wait(waits, timeout=2.0)
        for conn in list(self.connections):  # no close-ok, or a send buffer it never reads
            conn.abort()
        for _ in range(3):  # let the aborted transports run connection_lost
            await asyncio.sleep(0)
        for vhost in self.vhosts.values():
            for queue in list(vhost.queues.values()):
                self._stop_queue(queue)
        if self._bridge_task is not None:
            self._bridge_task.cancel()
        if self._bridge is not None:
            self._bridge.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _check_memory(self) -> None:
        """Block or unblock publishers on the broker's memory use (every few tenths of a second)."""
        self._memory_timer = None
        if self.closing:
            return
        limit = self.broker.config.max_memory_usage
        try:
            used = self.broker.memory_usage() / limit
        except MQError:  # closed
            return
        cfg = self.settings
        if not self.blocked and used >= cfg.memory_high_watermark:
            self.blocked = True
            for conn in list(self.connections):
                conn.set_blocked(True)
        elif self.blocked and used < cfg.memory_low_watermark:
            self.blocked = False
            for conn in list(self.connections):
                conn.set_blocked(False)
        loop = asyncio.get_running_loop()
        self._memory_timer = loop.call_later(MEMORY_CHECK_SECONDS, self._check_memory)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the server waits for at shutdown."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def new_name(self, prefix: str) -> str:
        """A server-generated name (``amq.gen-...``, ``amq.ctag-...``)."""
        return f"{prefix}-{self._salt}{next(self._names):08x}"

    # -- exchanges -------------------------------------------------------------------------------

    def exchange(self, vhost: VHost, name: str, *, for_publish: bool = False) -> Exchange:
        """The exchange ``name`` (404 NOT_FOUND when there is none)."""
        found = vhost.exchanges.get(name)
        if found is None:
            raise AMQPError(NOT_FOUND, f"no exchange '{name}' in vhost '{vhost.name}'")
        return found

    def bind(
        self,
        vhost: VHost,
        source: Exchange,
        destination: str,
        to_exchange: bool,
        routing_key: str,
        arguments: Mapping[str, Any],
    ) -> None:
        """Add a binding (idempotent)."""
        binding = Binding(destination, to_exchange, routing_key, dict(arguments))
        key = binding.key()
        if key in source.bindings:
            return
        if source.type == "topic":
            binding.matches = topic_matcher(routing_key)
        source.bindings[key] = binding
        if to_exchange:
            target = vhost.exchanges[destination]
            target.bound_to += 1
            durable = target.durable
        else:
            queue = vhost.queues[destination]
            queue.bindings.add((source.name, key))
            durable = self._stored(queue)
        if self.store is not None and durable and source.durable and source.name:
            self.store.binding(
                vhost.name, source.name, to_exchange, destination, routing_key, arguments, True
            )
        if source.name == "amq.topic" and vhost.name == TOPIC_VHOST:
            self._ensure_bridge()

    def unbind(
        self,
        vhost: VHost,
        source: Exchange,
        destination: str,
        to_exchange: bool,
        routing_key: str,
        arguments: Mapping[str, Any],
    ) -> None:
        """Remove a binding (no error when absent); auto-delete what it empties."""
        key = Binding(destination, to_exchange, routing_key, dict(arguments)).key()
        binding = source.bindings.pop(key, None)
        if binding is None:
            return
        self._forget_binding(vhost, source, binding)
        if to_exchange:
            target = vhost.exchanges.get(destination)
            if target is not None:
                target.bound_to -= 1
        else:
            queue = vhost.queues.get(destination)
            if queue is not None:
                queue.bindings.discard((source.name, key))
        self._exchange_unbound(vhost, source)

    def _forget_binding(self, vhost: VHost, source: Exchange, binding: Binding) -> None:
        if self.store is not None and source.durable and source.name:
            self.store.binding(
                vhost.name,
                source.name,
                binding.to_exchange,
                binding.destination,
                binding.routing_key,
                binding.arguments,
                False,
            )

    @staticmethod
    def _stored(queue: Queue) -> bool:
        """Whether ``queue`` is kept across a restart: durable and not exclusive."""
        return queue.durable and queue.exclusive is None

    def exchange_declared(self, vhost: VHost, exchange: Exchange) -> None:
        """A new exchange: store it when durable."""
        if self.store is not None and exchange.durable:
            self.store.exchange(vhost.name, exchange.name, _exchange_record(exchange))

    def _exchange_unbound(self, vhost: VHost, exchange: Exchange) -> None:
        if exchange.auto_delete and not exchange.bindings and exchange.name in vhost.exchanges:
            self.delete_exchange(vhost, exchange)

    def delete_exchange(self, vhost: VHost, exchange: Exchange) -> None:
        """Delete an exchange and every binding from or to it."""
        vhost.exchanges.pop(exchange.name, None)
        if self.store is not None and exchange.durable:
            self.store.exchange(vhost.name, exchange.name, None)
        for key, binding in list(exchange.bindings.items()):
            self.unbind(
                vhost,
                exchange,
                binding.destination,
                binding.to_exchange,
                binding.routing_key,
                binding.arguments,
            )
            exchange.bindings.pop(key, None)
        for other in list(vhost.exchanges.values()):
            for key, binding in list(other.bindings.items()):
                if binding.to_exchange and binding.destination == exchange.name:
                    del other.bindings[key]
                    self._forget_binding(vhost, other, binding)
                    self._exchange_unbound(vhost, other)

    # -- queues ----------------------------------------------------------------------------------

    def declare_queue(
        self,
        vhost: VHost,
        name: str,
        *,
        durable: bool,
        exclusive: Connection | None,
        auto_delete: bool,
        arguments: Mapping[str, Any],
    ) -> Queue:
        """Create a queue (its arguments checked: 406 PRECONDITION_FAILED when bad)."""
        args = dict(arguments)
        for unsupported in _UNSUPPORTED_ARGS:
            if unsupported in args:
                raise AMQPError(
                    PRECONDITION_FAILED,
                    f"queue argument '{unsupported}' of queue '{name}' is not supported by mqkit",
                )
        kind = _text(args.get("x-queue-type", "classic"))
        if kind != "classic":
            raise AMQPError(
                PRECONDITION_FAILED,
                f"queue '{name}': only classic queues are supported, not x-queue-type '{kind}'",
            )
        max_length = _int_arg(args, "x-max-length", 0, None)
        max_length_bytes = _int_arg(args, "x-max-length-bytes", 0, None)
        overflow = args.get("x-overflow", "drop-head")
        if isinstance(overflow, bytes):
            overflow = overflow.decode()
        if overflow not in ("drop-head", "reject-publish", "reject-publish-dlx"):
            raise AMQPError(
                PRECONDITION_FAILED,
                f"invalid arg 'x-overflow' for queue '{name}' in vhost '{vhost.name}': "
                f"'{overflow}' is not drop-head, reject-publish or reject-publish-dlx",
            )
        ttl_ms = _int_arg(args, "x-message-ttl", 0, None)
        max_priority = _int_arg(args, "x-max-priority", 0, 255)
        expires_ms = _int_arg(args, "x-expires", 1, None)
        dlx = args.get("x-dead-letter-exchange")
        dlrk = args.get("x-dead-letter-routing-key")
        if dlrk is not None and dlx is None:
            raise AMQPError(
                PRECONDITION_FAILED,
                f"invalid arg 'x-dead-letter-routing-key' for queue '{name}' in vhost "
                f"'{vhost.name}': it needs x-dead-letter-exchange",
            )
        size = self.settings.queue_max_length if max_length is None else max(max_length, 0)
        topic = f"{KEY_PREFIX}{vhost.name}:{name}"
        policy = Backpressure.DROP_OLDEST
        if overflow != "drop-head":
            policy = Backpressure.DROP_NEWEST
        # x-max-length 0: a queue that keeps nothing ready; a buffer of one, emptied below.
        options = SubOptions(buffer_size=max(size, 1), policy=policy)
        if max_length_bytes is not None:
            self.weighed.add(topic)  # before the subscription asks for its taps
        try:
            sub = self.broker.subscribe(topic, options)
        except MQError as exc:
            self.weighed.discard(topic)
            raise AMQPError(PRECONDITION_FAILED, f"queue '{name}' cannot be made: {exc}") from None
        queue = Queue(
            vhost.name,
            name,
            topic,
            sub,
            durable,
            exclusive,
            auto_delete,
            args,
            max_length=max_length,
            max_length_bytes=max_length_bytes,
            reject_publish=overflow != "drop-head",
            ttl=None if ttl_ms is None else ttl_ms / 1000.0,
            max_priority=max_priority,
            dead_letter_exchange=None if dlx is None else _text(dlx),
            dead_letter_routing_key=None if dlrk is None else _text(dlrk),
            expires=None if expires_ms is None else expires_ms / 1000.0,
        )
        vhost.queues[name] = queue
        self.touch(queue)
        if self.store is not None and self._stored(queue):
            self.store.queue(vhost.name, name, _queue_record(queue))
        self.bind(vhost, vhost.exchanges[""], name, False, name, {})
        return queue

    def queue(
        self, vhost: VHost, name: str, conn: Connection | None, *, exclusive: bool | None = None
    ) -> Queue:
        """The queue ``name`` (404 when none; 405 when another connection's exclusive one).

        With ``exclusive`` (a redeclaration), RabbitMQ's strict check: 405 also when the
        queue's exclusivity is not that (the owner redeclaring it non-exclusive, say).
        """
        found = vhost.queues.get(name)
        if found is None:
            raise AMQPError(NOT_FOUND, f"no queue '{name}' in vhost '{vhost.name}'")
        if (found.exclusive is not None and found.exclusive is not conn) or (
            exclusive is not None and exclusive != (found.exclusive is not None)
        ):
            raise AMQPError(
                RESOURCE_LOCKED,
                f"cannot obtain exclusive access to locked queue '{name}' in vhost "
                f"'{vhost.name}'. It could be originally declared on another connection or "
                "the exclusive property value does not match that of the original declaration.",
            )
        return found

    def delete_queue(self, vhost: VHost, queue: Queue) -> int:
        """Delete a queue: its consumers are cancelled, its messages dropped; return how many."""
        if queue.deleted:
            return 0
        count = queue.depth()
        queue.deleted = True
        vhost.queues.pop(queue.name, None)
        for source, key in list(queue.bindings):
            exchange = vhost.exchanges.get(source)
            if exchange is not None:
                binding = exchange.bindings.pop(key, None)
                if binding is not None:
                    self._forget_binding(vhost, exchange, binding)
                if source:
                    self._exchange_unbound(vhost, exchange)
        for consumer in list(queue.consumers):
            consumer.channel.consumer_gone(consumer, notify=True)
        queue.consumers.clear()
        self._stop_queue(queue)
        if self.store is not None and self._stored(queue):
            self.store.queue(vhost.name, queue.name, None)  # its messages too
        return count

    def touch(self, queue: Queue) -> None:
        """``queue`` was used: its ``x-expires`` countdown starts again (while unconsumed)."""
        if queue.expires is None:
            return
        if queue.expiry is not None:
            queue.expiry.cancel()
            queue.expiry = None
        if not queue.consumers and not queue.deleted:
            loop = asyncio.get_running_loop()
            queue.expiry = loop.call_later(queue.expires, self._expire, queue)

    def _expire(self, queue: Queue) -> None:
        queue.expiry = None
        vhost = self.vhosts.get(queue.vhost)
        if vhost is not None and not queue.consumers and not queue.deleted:
            self.delete_queue(vhost, queue)

    def _stop_queue(self, queue: Queue) -> None:
        if queue.expiry is not None:
            queue.expiry.cancel()
            queue.expiry = None
        if queue.pump is not None:
            queue.pump.cancel()
            queue.pump = None
        queue.held = None
        queue.sub.cancel()
        self.weighed.discard(queue.topic)

    def purge(self, queue: Queue) -> int:
        """Drop the ready messages of ``queue``; return how many."""
        removed = queue.sub.remove(lambda m: True)
        if queue.held is not None:
            removed.append(queue.held)
        queue.held = None
        self.settle_all(queue, removed)
        return len(removed)

    def settle(self, queue: Queue, message: Message) -> None:
        """``message`` left ``queue`` for good (acked, delivered without ack, dropped)."""
        if self.store is not None and K_SEQ in message.meta:
            self.store.settle(queue.vhost, queue.name, message)

    def settle_all(self, queue: Queue, messages: list[Message]) -> None:
        """Several messages left ``queue`` for good."""
        if self.store is not None:
            self.store.settle_all(queue.vhost, queue.name, messages)

    # -- publishing ------------------------------------------------------------------------------

    def publish(
        self,
        vhost: VHost,
        exchange: Exchange,
        routing_key: str,
        message: Message,
        sink: list[tuple[str, Message]] | None = None,
    ) -> tuple[bool, bool]:
        """Route ``message``; return (routed to some queue, refused by a full queue).

        With a ``sink`` (a transaction's commit), the in-process publishes are appended to it
        as ``(topic, message)`` instead of made: :meth:`publish_all` makes them together.
        """
        # Only a headers exchange reads the headers: none is reached from the default one.
        plain = exchange.name == "" and not exchange.arguments
        headers = None if plain else _headers(message)
        queues = vhost.route(exchange, routing_key, headers)
        if exchange.name == "amq.topic" and vhost.name == TOPIC_VHOST and routing_key:
            # The broker's topic space: in-process subscribers, MQTT clients and the queues
            # bound to amq.topic (through the bridge) all get it from this one publish.
            try:
                if sink is None:
                    self.broker.publish(routing_key, message)
                else:
                    sink.append((normalize_topic(routing_key), message))
                return bool(queues), False
            except MQError as exc:
                log.debug(
                    "amqp: %r is no broker topic (%s): routed to the queues only", routing_key, exc
                )
        refused = False
        for queue in queues:
            refused |= not self.enqueue(queue, message, sink)
        return bool(queues), refused

    def publish_all(self, held: list[tuple[str, Message]]) -> None:
        """Publish what a transaction held: in one mqkit transaction when that plugin is on."""
        broker = self.broker
        if not held:
            return
        try:
            if broker.has_feature("transactions"):
                tx_id = self.new_name("amqp.tx")
                for topic, message in held:
                    broker.publish_with_transaction(topic, message, tx_id)
                broker.commit_transaction(tx_id)
                return
            for topic, message in held:
                broker.publish(topic, message)
        except MQError as exc:
            log.warning("amqp: a transaction's messages were refused: %s", exc)
        finally:
            for topic in {topic for topic, _ in held}:
                queue = self._queue_of(topic)
                if queue is not None:
                    self.trim_bytes(queue)

    def enqueue(
        self, queue: Queue, message: Message, sink: list[tuple[str, Message]] | None = None
    ) -> bool:
        """Put ``message`` in ``queue``; False when its overflow policy refused it."""
        if queue.deleted:
            return True
        limit, max_bytes = queue.max_length, queue.max_length_bytes
        if queue.reject_publish and (
            (limit is not None and queue.depth() >= limit)
            or (max_bytes is not None and queue.ready_bytes() + body_size(message) > max_bytes)
        ):
            if _text(queue.arguments.get("x-overflow", "")) == "reject-publish-dlx":
                self.dead_letter(queue, message, "maxlen")
            return False
        stored = with_queue_rules(message, self.broker.clock.now(), queue.ttl, queue.max_priority)
        if (
            self.store is not None
            and message.meta.get("amqp.delivery_mode") == "2"
            and self._stored(queue)
        ):
            stored = self.store.keep(queue.vhost, queue.name, stored)
        if sink is not None:
            sink.append((queue.topic, stored))
            return True
        try:
            self.broker.publish(queue.topic, stored)
        except MQError as exc:
            log.warning("amqp: queue %r refused a message: %s", queue.name, exc)
            self.settle(queue, stored)
            return False
        if queue.max_length == 0:
            self._drop_all(queue)
        else:
            self.trim_bytes(queue)
        return True

    def trim_bytes(self, queue: Queue) -> None:
        """Drop ``queue``'s oldest ready messages until their bodies fit ``x-max-length-bytes``.

        RabbitMQ's ``drop-head``: the dropped messages are dead-lettered (reason ``maxlen``).
        While a consumer can take messages, they are its, not dropped (RabbitMQ hands a message
        to a waiting consumer without queueing it).
        """
        limit = queue.max_length_bytes
        if limit is None or queue.reject_publish or queue.deleted:
            return
        if any(c.channel.can_deliver(c) for c in queue.consumers):
            return
        excess = queue.ready_bytes() - limit
        if excess <= 0:
            return
        dropped: list[Message] = []
        if queue.held is not None:
            dropped.append(queue.held)
            excess -= body_size(queue.held)
            queue.held = None

        def over(message: Message) -> bool:
            nonlocal excess
            if excess <= 0:
                return False
            excess -= body_size(message)
            return True

        if excess > 0:
            dropped += queue.sub.remove_front(over)
        self.settle_all(queue, dropped)
        for message in dropped:
            self.dead_letter(queue, message, "maxlen")

    def _drop_all(self, queue: Queue) -> None:
        if queue.consumers:
            return
        for message in queue.sub.remove(lambda m: True):
            self.settle(queue, message)
            self.dead_letter(queue, message, "maxlen")

    def dead_letter(self, queue: Queue, message: Message, reason: str) -> None:
        """Send ``message`` on to the queue's dead letter exchange, if it has one.

        As RabbitMQ does: the dead letter is published through the dead letter exchange (the
        consumer sees that exchange) with ``x-dead-letter-routing-key`` or else its own routing
        key; its ``x-death`` header (a list of tables, the latest death first: ``count``,
        ``reason``, ``queue``, ``time``, ``exchange``, ``routing-keys`` and, for a message
        with an ``expiration``, ``original-expiration``, which it then loses) counts each
        (queue, reason) once, and ``x-first-death-reason/queue/exchange`` name its first.
        """
        if queue.dead_letter_exchange is None or self.closing:
            return
        vhost = self.vhosts.get(queue.vhost)
        if vhost is None:
            return
        exchange = vhost.exchanges.get(queue.dead_letter_exchange)
        if exchange is None:
            return
        old = message.meta
        key = old.get(K_ROUTING_KEY, message.topic)
        if queue.dead_letter_routing_key is not None:
            key = queue.dead_letter_routing_key
        headers = _headers(message) or {}
        meta = {
            k: v
            for k, v in old.items()
            if k.startswith("amqp.") and k not in (K_HEADERS, K_EXPIRATION, K_SEQ)
        }
        meta[K_EXCHANGE], meta[K_ROUTING_KEY] = exchange.name, key
        meta[K_HEADERS] = json.dumps(
            _with_death(headers, queue.name, reason, old, self.broker.clock.now()),
            separators=(",", ":"),
        )
        dead = Message(message.id, message.data, type=message.type, meta=meta)
        self.publish(vhost, exchange, key, dead)

    def queue_dropped(self, topic: str, message: Message, reason: str) -> None:
        """A queue's buffer dropped or expired ``message`` (loop thread): dead-letter it."""
        queue = self._queue_of(topic)
        if queue is None:
            return
        why = "expired" if reason in ("withheld", "expired") else "maxlen"
        self.settle(queue, message)
        self.dead_letter(queue, message, why)

    def _queue_of(self, topic: str) -> Queue | None:
        """The queue whose internal topic is ``topic``, if any."""
        if not topic.startswith(KEY_PREFIX):
            return None
        vhost_name, _, name = topic[len(KEY_PREFIX) :].rpartition(":")
        vhost = self.vhosts.get(vhost_name)
        queue = None if vhost is None else vhost.queues.get(name)
        return queue if queue is not None and queue.topic == topic else None

    # -- the amq.topic bridge --------------------------------------------------------------------

    def _ensure_bridge(self) -> None:
        if self._bridge is not None:
            return
        vhost = self.vhosts.get(TOPIC_VHOST)
        if vhost is None:
            return
        exchange = vhost.exchanges["amq.topic"]

        def wanted(message: Message) -> bool:  # publisher's thread: reads a dict only
            topic = message.topic
            if topic.startswith(_OTHER_GATEWAYS):
                return False
            return any(True for _ in _targets(exchange, topic))

        options = SubOptions(
            buffer_size=self.settings.queue_max_length,
            policy=Backpressure.DROP_OLDEST,
            filter=wanted,
        )
        self._bridge = self.broker.subscribe_pattern("*", options)
        self._bridge_task = self.spawn(self._run_bridge(self._bridge, vhost))

    async def _run_bridge(self, sub: Subscription, vhost: VHost) -> None:
        exchange = vhost.exchanges["amq.topic"]
        with contextlib.suppress(SubscriptionClosedError):
            async for message in sub:
                topic = message.topic
                if K_EXCHANGE not in message.meta:  # published in-process (or by MQTT)
                    meta = {**message.meta, K_EXCHANGE: "amq.topic", K_ROUTING_KEY: topic}
                    meta[K_IN_PROCESS] = "1"
                    message = attrs.evolve(message, meta=meta)
                for queue in vhost.route(exchange, topic, None):
                    self.enqueue(queue, message)

    # -- delivery --------------------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        """Start delivering ``queue``'s messages to ``consumer`` too."""
        queue = consumer.queue
        queue.consumers.append(consumer)
        queue.had_consumer = True
        self.touch(queue)
        if queue.pump is None:
            queue.pump = self.spawn(self._pump(queue))
        queue.wake.set()

    def remove_consumer(self, consumer: Consumer) -> None:
        """Stop delivering to ``consumer`` (auto-delete queues go with their last consumer)."""
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
            self.touch(queue)
        if not queue.consumers and queue.auto_delete and queue.had_consumer and not queue.deleted:
            vhost = self.vhosts.get(queue.vhost)
            if vhost is not None:
                self.delete_queue(vhost, queue)

    def requeue(self, queue: Queue, message: Message) -> None:
        """Put an unacknowledged message back where it was in ``queue``, marked redelivered."""
        self.requeue_all([(queue, message)])

    def requeue_all(self, settled: list[tuple[Queue, Message]]) -> None:
        """Put unacknowledged messages back in their queues, each where it was, as RabbitMQ does.

        A queue keeps publication order through requeues: a requeued message goes back ahead of
        the messages published after it, behind the ones (requeued earlier) published before
        it, whatever order the client rejects or a channel's close returns them in. The order
        is the messages' publication time (``posix_time``); ``settled`` is in delivery-tag
        order, which breaks ties.
        """
        per_queue: dict[int, tuple[Queue, list[Message]]] = {}
        for queue, message in settled:
            per_queue.setdefault(id(queue), (queue, []))[1].append(message)
        for queue, messages in per_queue.values():
            if queue.deleted:
                continue
            back = [redelivery(m) if m.attempt < 2 else m for m in messages]
            last = max(_position(m) for m in back)
            # requeued earlier, published before the last of these, still at the front
            ahead = queue.sub.remove_front(functools.partial(_before, last))
            if queue.held is not None:  # the pump took it from the front: it is first
                ahead.insert(0, queue.held)
                queue.held = None
            for message in sorted(ahead + back, key=_position, reverse=True):
                queue.sub.redeliver(message)
            queue.wake.set()

    def _ready(self, queue: Queue) -> Consumer | None:
        consumers = queue.consumers
        n = len(consumers)
        for i in range(n):
            consumer = consumers[(queue.rr + i) % n]
            if consumer.channel.can_deliver(consumer):
                queue.rr = (queue.rr + i + 1) % n
                return consumer
        return None

    async def _pump(self, queue: Queue) -> None:
        """Hand the queue's messages to consumers with credit, round robin, until deleted."""
        sub = queue.sub
        try:
            while not queue.deleted:
                if not any(c.channel.can_deliver(c) for c in queue.consumers):
                    queue.wake.clear()
                    await queue.wake.wait()
                    continue
                message = queue.held
                queue.held = None
                if message is None:
                    message = await sub.aget()
                # What is buffered goes out without an await per message, up to a batch:
                # the connections then write it (one write each) before the next batch.
                written: set[Connection] = set()
                for _ in range(DELIVERY_BATCH):
                    consumer = self._ready(queue)
                    if consumer is None:
                        queue.held = message
                        break
                    channel = consumer.channel
                    written.add(channel.conn)
                    channel.deliver(consumer, message)
                    if queue.deleted:
                        break
                    try:
                        message = sub.get_nowait()
                    except TimeoutError:
                        break
                else:
                    queue.held = message
                for conn in written:  # the batch goes out now, not one loop iteration later
                    conn.flush()
                if queue.held is not None:
                    await asyncio.sleep(0)
        except SubscriptionClosedError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("amqp: the delivery task of queue %r failed", queue.name)

    def take(self, queue: Queue) -> Message | None:
        """One ready message of ``queue`` for ``basic.get``, or None."""
        self.touch(queue)
        if queue.held is not None:
            message, queue.held = queue.held, None
            return message
        try:
            return queue.sub.get_nowait()
        except (MQError, TimeoutError):
            return None

    # -- connections -----------------------------------------------------------------------------

    def connection_gone(self, conn: Connection) -> None:
        """A connection ended: its exclusive queues go."""
        self.connections.discard(conn)
        for vhost in self.vhosts.values():
            for queue in list(vhost.queues.values()):
                if queue.exclusive is conn:
                    self.delete_queue(vhost, queue)


def _with_death(
    headers: dict[str, Any], queue: str, reason: str, meta: Mapping[str, str], now: datetime
) -> dict[str, Any]:
    """``headers`` with one more death in ``x-death`` (see :meth:`Server.dead_letter`)."""
    exchange = meta.get(K_EXCHANGE, "")
    routing_key = meta.get(K_ROUTING_KEY, "")
    deaths = headers.get("x-death")
    deaths = [d for d in deaths if isinstance(d, dict)] if isinstance(deaths, list) else []
    entry: dict[str, Any] | None = None
    for death in deaths:
        if death.get("queue") == queue and death.get("reason") == reason:
            entry = death
            deaths.remove(death)
            break
    if entry is None:
        entry = {
            "count": 0,
            "reason": reason,
            "queue": queue,
            "exchange": exchange,
            "routing-keys": [routing_key],
        }
        if K_EXPIRATION in meta:
            entry["original-expiration"] = meta[K_EXPIRATION]
    count = entry.get("count")
    entry["count"] = (count if isinstance(count, int) else 0) + 1
    entry["time"] = int(now.timestamp())
    out = {**headers, "x-death": [entry, *deaths]}
    out.setdefault("x-first-death-reason", reason)
    out.setdefault("x-first-death-queue", queue)
    out.setdefault("x-first-death-exchange", exchange)
    return out


def _before(position: float, message: Message) -> bool:
    return _position(message) < position


def _position(message: Message) -> float:
    """Where ``message`` stands in its queue: its publication time (POSIX seconds)."""
    return posix_time(message) or 0.0


def _targets(exchange: Exchange, topic: str) -> Any:
    """The bindings of amq.topic ``topic`` matches (any thread: iterates a snapshot)."""
    for binding in tuple(exchange.bindings.values()):
        matches = binding.matches
        if matches is None:
            continue
        if matches(topic):
            yield binding


def _exchange_record(exchange: Exchange) -> dict[str, Any]:
    return {
        "type": exchange.type,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": dict(exchange.arguments),
    }


def _queue_record(queue: Queue) -> dict[str, Any]:
    return {"auto_delete": queue.auto_delete, "arguments": dict(queue.arguments)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _headers(message: Message) -> dict[str, Any] | None:
    meta = message.meta
    if not meta:
        return None
    headers: dict[str, Any] = {k: v for k, v in meta.items() if not k.startswith("amqp.")}
    raw = meta.get(K_HEADERS)
    if raw is not None:
        with contextlib.suppress(ValueError):
            table = json.loads(raw)
            if isinstance(table, dict):
                headers.update(table)
    return headers


def _int_arg(args: Mapping[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        raise AMQPError(
            PRECONDITION_FAILED, f"invalid arg '{name}' for queue: {value!r} is out of range"
        )
    return int(value)


__all__ += ["message_from_publish"]
