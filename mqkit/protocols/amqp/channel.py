"""One AMQP 0-9-1 channel: the methods of exchanges, queues, basic, confirm and tx.

A :class:`Channel` belongs to one :class:`~mqkit.protocols.amqp.connection.Connection`, which
cuts the frames from the byte stream and hands each channel its own; the channel checks
permissions, answers its methods (``_HANDLERS`` maps each pamqp command class to its handler)
and delivers its consumers' messages. A soft error (404, 405, 406, ...) closes only the
channel; a hard one (``AMQPError`` with ``hard``) the connection.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pamqp import body as pbody
from pamqp import commands, frame, header
from pamqp.base import Frame

from mqkit.core.message import Message
from mqkit.protocols.amqp.frames import (
    content_frames,
    deliver_frame,
    deliver_parts,
)
from mqkit.protocols.amqp.mapping import (
    message_from_publish,
    properties_of,
    publish_meta,
)
from mqkit.protocols.amqp.model import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    EXCHANGE_TYPES,
    FRAME_ERROR,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    PRECONDITION_FAILED,
    UNEXPECTED_FRAME,
    AMQPError,
    Consumer,
    Exchange,
    Queue,
    VHost,
)

if TYPE_CHECKING:
    from mqkit.protocols.amqp.connection import Connection

__all__ = ["PROPERTIES_KEPT", "REPLY_PREFIX", "REPLY_QUEUE", "Channel", "method_name"]

log = logging.getLogger("mqkit.amqp")

REPLY_QUEUE: Final = "amq.rabbitmq.reply-to"
"""The pseudo-queue of direct reply-to (RabbitMQ's RPC shortcut)."""
REPLY_PREFIX: Final = REPLY_QUEUE + "."
PROPERTIES_KEPT: Final = 256


def method_name(value: Any) -> str:
    """A frame's name for an error text (``Basic.Publish``, ``ContentHeader``)."""
    return str(getattr(value, "name", type(value).__name__))


class Channel:
    """One channel of a connection: its consumers, deliveries, confirms and transaction."""

    def __init__(self, conn: Connection, number: int) -> None:
        self.conn = conn
        self.server = conn.server
        self.number = number
        self.closing = False
        self.flow = True
        self.consumers: dict[str, Consumer] = {}
        self.unacked: dict[int, tuple[Queue, Message, Consumer | None]] = {}
        self.next_tag = 1
        self.prefetch_count = 0
        self.global_prefetch = 0
        self.confirming = False
        self.publish_seq = 0
        self._delivers: dict[tuple[str, str, str], tuple[bytes, bytes] | None] = {}
        """``deliver_parts`` by (consumer tag, exchange, routing key)."""
        self.ack_due = 0
        """The last publish sequence number whose ack is due (see ``Connection.send_confirms``)."""
        self.acks_due = 0
        """How many acks are due: they cover ``ack_due`` and the numbers just before it."""
        self.tx: list[tuple[Exchange, str, Message, bool]] | None = None
        self.tx_acks: list[Callable[[], None]] = []
        self.content: (
            tuple[commands.Basic.Publish, header.ContentHeader | None, list[bytes]] | None
        ) = None
        self.received = 0
        self.reply_tag: str | None = None
        """The consumer tag of this channel's direct reply-to consumer, if any."""
        self.reply_token = self.server.new_name("r")

    @property
    def vhost(self) -> VHost:
        """The connection's vhost."""
        assert self.conn.vhost is not None
        return self.conn.vhost

    # -- frames ------------------------------------------------------------------------------

    def handle(self, value: Any) -> None:
        """Handle a frame for this channel."""
        if self.closing:
            if isinstance(value, commands.Channel.CloseOk):
                self.conn.channels.pop(self.number, None)
            elif isinstance(value, commands.Channel.Close):
                self.conn.send(self.number, commands.Channel.CloseOk())
            return
        content = self.content
        if content is not None:
            self._content_frame(value)
            return
        if not isinstance(value, Frame):
            raise AMQPError(UNEXPECTED_FRAME, f"{method_name(value)} without a method", True)
        try:
            self._method(value)
        except AMQPError as exc:
            if exc.connection:
                raise
            self.close_with(exc.code, exc.text, value)

    def _content_frame(self, value: Any) -> None:
        assert self.content is not None
        method, head, parts = self.content
        if head is None:
            if not isinstance(value, header.ContentHeader):
                raise AMQPError(
                    UNEXPECTED_FRAME, f"expected a content header, got {method_name(value)}", True
                )
            if value.class_id != 60:
                raise AMQPError(FRAME_ERROR, "content header of another class", True)
            self.content = (method, value, parts)
            self.received = 0
            if value.body_size == 0:
                self._published()
            return
        if not isinstance(value, pbody.ContentBody):
            raise AMQPError(
                UNEXPECTED_FRAME, f"expected a content body, got {method_name(value)}", True
            )
        parts.append(value.value)
        self.received += len(value.value)
        if self.received > head.body_size:
            raise AMQPError(FRAME_ERROR, "content body larger than its header said", True)
        if self.received == head.body_size:
            self._published()

    def close_with(self, code: int, text: str, method: Any = None) -> None:
        """A channel exception: channel.close (the client answers close-ok)."""
        close = commands.Channel.Close(code, text[:255], _class_id(method), _method_id(method))
        self.conn.send(self.number, close)
        self.closing = True
        self.release()

    def release(self) -> None:
        """The channel ends: cancel its consumers, requeue its unacknowledged messages."""
        for consumer in list(self.consumers.values()):
            self.server.remove_consumer(consumer)
        self.consumers.clear()
        if self.reply_tag is not None:
            self.reply_tag = None
            self.server.reply_channels.pop(self.reply_token, None)
        unacked, self.unacked = self.unacked, {}
        self.server.requeue_all([(q, m) for _, (q, m, _c) in sorted(unacked.items())])
        self.content = None

    def wake_queues(self) -> None:
        """Credit may be back: let the queues of this channel's consumers deliver."""
        for consumer in self.consumers.values():
            consumer.queue.wake.set()

    # -- delivery ----------------------------------------------------------------------------

    def can_deliver(self, consumer: Consumer) -> bool:
        """Whether ``consumer`` may be handed one more message now."""
        if self.closing or not self.flow or not self.conn.writable:
            return False
        if consumer.no_ack:
            return True
        if consumer.prefetch and consumer.unacked >= consumer.prefetch:
            return False
        return not (self.global_prefetch and len(self.unacked) >= self.global_prefetch)

    def deliver(self, consumer: Consumer, message: Message) -> None:
        """Send ``message`` to ``consumer`` (basic.deliver)."""
        tag = self.next_tag
        self.next_tag += 1
        meta = message.meta
        props, body = self.conn.content_of(message)
        fields = (
            consumer.tag,
            tag,
            message.attempt > 1,
            meta.get("amqp.exchange", "amq.topic"),
            meta.get("amqp.routing_key", message.topic),
        )
        conn = self.conn
        key = (consumer.tag, fields[3], fields[4])
        parts = self._delivers.get(key)
        if parts is None:
            parts = deliver_parts(*key)
            if len(self._delivers) >= PROPERTIES_KEPT:
                self._delivers.clear()
            self._delivers[key] = parts
        if parts is None or tag >= 1 << 63:  # pamqp marshals (or refuses) the unusual
            head = frame.marshal(commands.Basic.Deliver(*fields), self.number)
        else:
            head = deliver_frame(self.number, parts, tag, fields[2])
        if consumer.no_ack:
            self.server.settle(consumer.queue, message)
        else:
            self.unacked[tag] = (consumer.queue, message, consumer)
            consumer.unacked += 1
        conn.write_raw(head + content_frames(self.number, props, body, conn.frame_max))

    def consumer_gone(self, consumer: Consumer, notify: bool) -> None:
        """The queue of ``consumer`` was deleted: forget it (basic.cancel if the client wants)."""
        if self.consumers.pop(consumer.tag, None) is None:
            return
        if notify and self.conn.capabilities.get("consumer_cancel_notify") and not self.closing:
            self.conn.send(self.number, commands.Basic.Cancel(consumer.tag, nowait=True))

    # -- methods -----------------------------------------------------------------------------

    def _method(self, m: Frame) -> None:
        handler = _HANDLERS.get(type(m))
        if handler is None:
            if isinstance(m, commands.Channel.Open):
                raise AMQPError(CHANNEL_ERROR, f"channel {self.number} is open already", True)
            raise AMQPError(COMMAND_INVALID, f"unexpected {m.name} on a channel", True)
        handler(self, m)

    def _may(self, kind: str, resource: str, what: str) -> None:
        """403 ACCESS_REFUSED unless the user has ``kind`` permission on ``resource``."""
        permissions = self.server.permissions
        if permissions is None:
            return
        user = self.conn.username
        if not permissions.allowed(user, self.vhost.name, kind, resource):
            raise AMQPError(
                ACCESS_REFUSED,
                f"access to {what} '{resource or 'amq.default'}' in vhost '{self.vhost.name}' "
                f"refused for user '{user}'",
            )

    def _reply(self, m: Any, value: Any) -> None:
        if not getattr(m, "nowait", False):
            self.conn.send(self.number, value)

    # channel

    def _channel_close(self, m: commands.Channel.Close) -> None:
        self.release()
        self.conn.channels.pop(self.number, None)
        self.conn.send(self.number, commands.Channel.CloseOk())

    def _channel_flow(self, m: commands.Channel.Flow) -> None:
        self.flow = bool(m.active)
        self.conn.send(self.number, commands.Channel.FlowOk(m.active))
        if m.active:
            self.wake_queues()

    def _channel_flow_ok(self, m: commands.Channel.FlowOk) -> None:
        return

    # exchange

    def _exchange_declare(self, m: commands.Exchange.Declare) -> None:
        vhost = self.vhost
        name = m.exchange
        found = vhost.exchanges.get(name)
        if name == "":
            raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        if not m.passive:
            self._may("configure", name, "exchange")
        if m.passive:
            if found is None:
                raise AMQPError(NOT_FOUND, f"no exchange '{name}' in vhost '{vhost.name}'")
            self._reply(m, commands.Exchange.DeclareOk())
            return
        if name == "" or (name.startswith("amq.") and found is None):
            raise AMQPError(
                ACCESS_REFUSED,
                f"exchange name '{name}' contains reserved prefix 'amq.*'",
            )
        if m.exchange_type not in EXCHANGE_TYPES:
            raise AMQPError(COMMAND_INVALID, f"unknown exchange type '{m.exchange_type}'", True)
        if found is not None:
            if (
                found.type != m.exchange_type
                or found.durable != m.durable
                or found.auto_delete != m.auto_delete
                or found.internal != m.internal
            ):
                raise AMQPError(
                    PRECONDITION_FAILED,
                    f"inequivalent arg 'type' for exchange '{name}' in vhost '{vhost.name}': "
                    f"received '{m.exchange_type}' but current is '{found.type}'"
                    if found.type != m.exchange_type
                    else f"inequivalent arg 'durable' for exchange '{name}' in vhost "
                    f"'{vhost.name}': received '{str(m.durable).lower()}' but current is "
                    f"'{str(found.durable).lower()}'",
                )
        else:
            exchange = Exchange(
                name,
                m.exchange_type,
                durable=m.durable,
                auto_delete=m.auto_delete,
                internal=m.internal,
                arguments=dict(m.arguments or {}),
            )
            vhost.exchanges[name] = exchange
            self.server.exchange_declared(vhost, exchange)
        self._reply(m, commands.Exchange.DeclareOk())

    def _exchange_delete(self, m: commands.Exchange.Delete) -> None:
        vhost = self.vhost
        if m.exchange == "" or m.exchange.startswith("amq."):
            raise AMQPError(ACCESS_REFUSED, f"exchange '{m.exchange}' cannot be deleted")
        self._may("configure", m.exchange, "exchange")
        found = vhost.exchanges.get(m.exchange)
        if found is None:
            self._reply(m, commands.Exchange.DeleteOk())  # RabbitMQ: idempotent
            return
        if m.if_unused and (found.bindings or found.bound_to):
            raise AMQPError(
                PRECONDITION_FAILED, f"exchange '{m.exchange}' in vhost '{vhost.name}' in use"
            )
        self.server.delete_exchange(vhost, found)
        self._reply(m, commands.Exchange.DeleteOk())

    def _e2e(self, m: Any, bind: bool) -> None:
        vhost = self.vhost
        if not bind and (m.source not in vhost.exchanges or m.destination not in vhost.exchanges):
            self._unbind_missing(m.source, m.destination, "exchange")
            self._reply(m, commands.Exchange.UnbindOk())  # idempotent, as in RabbitMQ
            return
        destination = self.server.exchange(vhost, m.destination)
        source = self.server.exchange(vhost, m.source)
        for ex in (source, destination):
            if ex.name == "":
                raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        args = dict(m.arguments or {})
        self._may("write", destination.name, "exchange")
        self._may("read", source.name, "exchange")
        if bind:
            self.server.bind(vhost, source, destination.name, True, m.routing_key, args)
            self._reply(m, commands.Exchange.BindOk())
        else:
            self.server.unbind(vhost, source, destination.name, True, m.routing_key, args)
            self._reply(m, commands.Exchange.UnbindOk())

    def _exchange_bind(self, m: commands.Exchange.Bind) -> None:
        self._e2e(m, True)

    def _exchange_unbind(self, m: commands.Exchange.Unbind) -> None:
        self._e2e(m, False)

    # queue

    def _queue_name(self, name: str) -> str:
        if name:
            return name
        raise AMQPError(NOT_FOUND, "no previously declared queue", False)

    def _queue_declare(self, m: commands.Queue.Declare) -> None:
        vhost = self.vhost
        server = self.server
        name = m.queue
        if m.passive and name == REPLY_QUEUE:
            self._reply(m, commands.Queue.DeclareOk(REPLY_QUEUE, 0, 0))
            return
        if m.passive:  # a passive declare is no use of the queue (x-expires runs on)
            queue = server.queue(vhost, self._queue_name(name), self.conn)
            self._reply(
                m, commands.Queue.DeclareOk(queue.name, queue.depth(), len(queue.consumers))
            )
            return
        if name.startswith("amq."):
            raise AMQPError(
                ACCESS_REFUSED,
                f"queue name '{name}' contains reserved prefix 'amq.*'",
            )
        if not name:
            name = server.new_name("amq.gen")
        self._may("configure", name, "queue")
        found = vhost.queues.get(name)
        if found is not None:
            # 405 for another's exclusive queue, or another exclusivity
            server.queue(vhost, name, self.conn, exclusive=m.exclusive)
            if found.durable != m.durable:
                raise AMQPError(
                    PRECONDITION_FAILED,
                    f"inequivalent arg 'durable' for queue '{name}' in vhost '{vhost.name}': "
                    f"received '{str(m.durable).lower()}' but current is "
                    f"'{str(found.durable).lower()}'",
                )
            args = dict(m.arguments or {})
            for key in set(args) | set(found.arguments):
                if key.startswith("x-") and args.get(key) != found.arguments.get(key):
                    raise AMQPError(
                        PRECONDITION_FAILED,
                        f"inequivalent arg '{key}' for queue '{name}' in vhost "
                        f"'{vhost.name}': received {args.get(key)!r} but current is "
                        f"{found.arguments.get(key)!r}",
                    )
            queue = found
            server.touch(queue)
        else:
            queue = server.declare_queue(
                vhost,
                name,
                durable=m.durable,
                exclusive=self.conn if m.exclusive else None,
                auto_delete=m.auto_delete,
                arguments=m.arguments or {},
            )
        self._reply(m, commands.Queue.DeclareOk(queue.name, queue.depth(), len(queue.consumers)))

    def _queue_bind(self, m: commands.Queue.Bind) -> None:
        vhost = self.vhost
        queue = self.server.queue(vhost, self._queue_name(m.queue), self.conn)
        exchange = self.server.exchange(vhost, m.exchange)
        if exchange.name == "":
            raise AMQPError(
                ACCESS_REFUSED,
                "operation not permitted on the default exchange",
            )
        self._may("write", queue.name, "queue")
        self._may("read", exchange.name, "exchange")
        self.server.bind(vhost, exchange, queue.name, False, m.routing_key, m.arguments or {})
        self._reply(m, commands.Queue.BindOk())

    def _unbind_missing(self, source: str, destination: str, kind: str) -> None:
        """An unbind whose source or destination is gone: RabbitMQ's checks, then nothing."""
        if "" in (source, destination):
            raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        self._may("write", destination, kind)
        self._may("read", source, "exchange")

    def _queue_unbind(self, m: commands.Queue.Unbind) -> None:
        vhost = self.vhost
        if m.queue and (m.queue not in vhost.queues or m.exchange not in vhost.exchanges):
            self._unbind_missing(m.exchange, m.queue, "queue")
            self.conn.send(self.number, commands.Queue.UnbindOk())  # idempotent, as in RabbitMQ
            return
        queue = self.server.queue(vhost, self._queue_name(m.queue), self.conn)
        exchange = self.server.exchange(vhost, m.exchange)
        if exchange.name == "":
            raise AMQPError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        self._may("write", queue.name, "queue")
        self._may("read", exchange.name, "exchange")
        self.server.unbind(vhost, exchange, queue.name, False, m.routing_key, m.arguments or {})
        self.conn.send(self.number, commands.Queue.UnbindOk())

    def _queue_purge(self, m: commands.Queue.Purge) -> None:
        queue = self.server.queue(self.vhost, self._queue_name(m.queue), self.conn)
        self._may("read", queue.name, "queue")
        self._reply(m, commands.Queue.PurgeOk(self.server.purge(queue)))

    def _queue_delete(self, m: commands.Queue.Delete) -> None:
        vhost = self.vhost
        self._may("configure", m.queue, "queue")
        found = vhost.queues.get(m.queue)
        if found is None:
            self._reply(m, commands.Queue.DeleteOk(0))
            return
        queue = self.server.queue(vhost, m.queue, self.conn)
        if m.if_unused and queue.consumers:
            raise AMQPError(
                PRECONDITION_FAILED, f"queue '{queue.name}' in vhost '{vhost.name}' in use"
            )
        if m.if_empty and queue.depth():
            raise AMQPError(
                PRECONDITION_FAILED, f"queue '{queue.name}' in vhost '{vhost.name}' is not empty"
            )
        count = self.server.delete_queue(vhost, queue)
        self._reply(m, commands.Queue.DeleteOk(count))

    # basic

    def _basic_qos(self, m: commands.Basic.Qos) -> None:
        if m.global_:
            self.global_prefetch = m.prefetch_count
        else:
            self.prefetch_count = m.prefetch_count
        self.conn.send(self.number, commands.Basic.QosOk())
        self.wake_queues()

    def _basic_consume(self, m: commands.Basic.Consume) -> None:
        tag = m.consumer_tag or self.server.new_name("amq.ctag")
        if tag in self.consumers or tag == self.reply_tag:
            raise AMQPError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", True)
        if m.queue == REPLY_QUEUE:
            self._reply_consume(m, tag)
            return
        queue = self.server.queue(self.vhost, self._queue_name(m.queue), self.conn)
        self._may("read", queue.name, "queue")
        if any(c.exclusive for c in queue.consumers) or (m.exclusive and queue.consumers):
            raise AMQPError(
                ACCESS_REFUSED,
                f"queue '{queue.name}' in vhost '{self.vhost.name}' in exclusive use",
            )
        consumer = Consumer(tag, self, queue, m.no_ack, m.exclusive, self.prefetch_count)
        self.consumers[tag] = consumer
        self._reply(m, commands.Basic.ConsumeOk(tag))
        self.server.add_consumer(consumer)

    def _reply_consume(self, m: commands.Basic.Consume, tag: str) -> None:
        """Direct reply-to: consume from the ``amq.rabbitmq.reply-to`` pseudo-queue."""
        if not m.no_ack:
            raise AMQPError(PRECONDITION_FAILED, "reply consumer cannot acknowledge")
        if self.reply_tag is not None:
            raise AMQPError(PRECONDITION_FAILED, "reply consumer already set")
        self.reply_tag = tag
        self.server.reply_channels[self.reply_token] = self
        self._reply(m, commands.Basic.ConsumeOk(tag))

    def deliver_reply(self, message: Message, routing_key: str) -> bool:
        """Deliver a reply sent to this channel's ``amq.rabbitmq.reply-to.<token>``."""
        if self.reply_tag is None or self.closing:
            return False
        tag = self.next_tag
        self.next_tag += 1
        props, body = properties_of(message, self.server.broker.clock.now())
        method = commands.Basic.Deliver(self.reply_tag, tag, False, "", routing_key)
        self.conn.send_content(self.number, method, props, body)
        return True

    def _basic_cancel(self, m: commands.Basic.Cancel) -> None:
        if self.reply_tag is not None and m.consumer_tag == self.reply_tag:
            self.reply_tag = None
            self.server.reply_channels.pop(self.reply_token, None)
            self._reply(m, commands.Basic.CancelOk(m.consumer_tag))
            return
        consumer = self.consumers.pop(m.consumer_tag or "", None)
        if consumer is not None:
            self.server.remove_consumer(consumer)
        self._reply(m, commands.Basic.CancelOk(m.consumer_tag))

    def _basic_cancel_ok(self, m: commands.Basic.CancelOk) -> None:
        return

    def _basic_get(self, m: commands.Basic.Get) -> None:
        queue = self.server.queue(self.vhost, self._queue_name(m.queue), self.conn)
        self._may("read", queue.name, "queue")
        message = self.server.take(queue)
        if message is None:
            self.conn.send(self.number, commands.Basic.GetEmpty())
            return
        tag = self.next_tag
        self.next_tag += 1
        if m.no_ack:
            self.server.settle(queue, message)
        else:
            self.unacked[tag] = (queue, message, None)
        meta = message.meta
        props, body = properties_of(message, self.server.broker.clock.now())
        method = commands.Basic.GetOk(
            tag,
            message.attempt > 1,
            meta.get("amqp.exchange", "amq.topic"),
            meta.get("amqp.routing_key", message.topic),
            queue.depth(),
        )
        self.conn.send_content(self.number, method, props, body)

    def _settle(self, tag: int, multiple: bool, what: str) -> list[tuple[Queue, Message]]:
        if multiple:
            tags = [t for t in self.unacked if t <= tag] if tag else list(self.unacked)
        else:
            if tag not in self.unacked:
                raise AMQPError(PRECONDITION_FAILED, f"unknown delivery tag {tag}")
            tags = [tag]
        settled: list[tuple[Queue, Message]] = []
        for t in sorted(tags):
            queue, message, consumer = self.unacked.pop(t)
            if consumer is not None:
                consumer.unacked -= 1
            settled.append((queue, message))
            if what == "ack":
                self.server.settle(queue, message)
        self.wake_queues()
        return settled

    def _basic_ack(self, m: commands.Basic.Ack) -> None:
        if self.tx is not None:
            self._check_tags(m.delivery_tag, m.multiple)
            self.tx_acks.append(lambda: self._apply_ack(m.delivery_tag, m.multiple))
            return
        self._settle(m.delivery_tag, m.multiple, "ack")

    def _apply_ack(self, tag: int, multiple: bool) -> None:
        with contextlib.suppress(AMQPError):  # a tag settled since: nothing left to do
            self._settle(tag, multiple, "ack")

    def _check_tags(self, tag: int, multiple: bool) -> None:
        if not multiple and tag not in self.unacked:
            raise AMQPError(PRECONDITION_FAILED, f"unknown delivery tag {tag}")

    def _reject(self, tag: int, multiple: bool, requeue: bool) -> None:
        settled = self._settle(tag, multiple, "reject")
        if requeue:
            self.server.requeue_all(settled)
        else:
            for queue, message in settled:
                self.server.settle(queue, message)
                self.server.dead_letter(queue, message, "rejected")

    def _basic_nack(self, m: commands.Basic.Nack) -> None:
        self._reject(m.delivery_tag, m.multiple, m.requeue)

    def _basic_reject(self, m: commands.Basic.Reject) -> None:
        self._reject(m.delivery_tag or 0, False, m.requeue)

    def _basic_recover(self, m: commands.Basic.Recover) -> None:
        unacked, self.unacked = self.unacked, {}
        for _, (_queue, _message, consumer) in unacked.items():
            if consumer is not None:
                consumer.unacked -= 1
        self.server.requeue_all([(q, m) for _, (q, m, _c) in sorted(unacked.items())])
        self.conn.send(self.number, commands.Basic.RecoverOk())
        self.wake_queues()

    def _basic_recover_async(self, m: commands.Basic.RecoverAsync) -> None:
        unacked, self.unacked = self.unacked, {}
        for _, (_queue, _message, consumer) in unacked.items():
            if consumer is not None:
                consumer.unacked -= 1
        self.server.requeue_all([(q, m) for _, (q, m, _c) in sorted(unacked.items())])
        self.wake_queues()

    def _basic_publish(self, m: commands.Basic.Publish) -> None:
        self.content = (m, None, [])

    def _published(self) -> None:
        assert self.content is not None
        method, head, parts = self.content
        self.content = None
        assert head is not None
        body = b"".join(parts)
        props = head.properties
        if self.confirming:
            self.publish_seq += 1
        seq = self.publish_seq
        try:
            vhost = self.vhost
            exchange = self.server.exchange(vhost, method.exchange)
            self._may("write", exchange.name, "exchange")
            if exchange.internal:
                raise AMQPError(
                    ACCESS_REFUSED,
                    f"cannot publish to internal exchange '{exchange.name}' in vhost "
                    f"'{vhost.name}'",
                )
            expiration = props.expiration
            if expiration is not None:
                try:
                    if int(expiration) < 0:
                        raise ValueError(expiration)
                except ValueError:
                    raise AMQPError(
                        PRECONDITION_FAILED, f"invalid expiration '{expiration}'"
                    ) from None
            if props.reply_to == REPLY_QUEUE:
                if self.reply_tag is None:
                    raise AMQPError(PRECONDITION_FAILED, "fast reply consumer does not exist")
                props = copy.copy(props)  # may be shared by the connection's content headers
                props.reply_to = f"{REPLY_QUEUE}.{self.reply_token}"
        except AMQPError as exc:
            self.close_with(exc.code, exc.text, method)
            return
        conn = self.conn
        last, facts = conn.facts
        if props is not last:
            facts = publish_meta(props)
            conn.facts = (props, facts)
        message = message_from_publish(method.exchange, method.routing_key, props, body, facts)
        if self.tx is not None:
            self.tx.append((exchange, method.routing_key, message, method.mandatory))
            return
        self._route(exchange, method.routing_key, message, method.mandatory, seq)

    def _route(
        self,
        exchange: Exchange,
        key: str,
        message: Message,
        mandatory: bool,
        seq: int,
        sink: list[tuple[str, Message]] | None = None,
    ) -> None:
        if exchange.name == "" and key.startswith(REPLY_PREFIX):
            target = self.server.reply_channels.get(key[len(REPLY_PREFIX) :])
            routed, refused = target is not None and target.deliver_reply(message, key), False
        else:
            routed, refused = self.server.publish(self.vhost, exchange, key, message, sink)
        if mandatory and not routed:
            props, body = properties_of(message, self.server.broker.clock.now())
            self.conn.send_content(
                self.number,
                commands.Basic.Return(NO_ROUTE, "NO_ROUTE", exchange.name, key),
                props,
                body,
            )
        if self.confirming and seq:
            if refused:
                self.conn.send(self.number, commands.Basic.Nack(seq))
            else:
                if not self.acks_due:
                    conn = self.conn
                    conn.confirms_due.append(self)
                    conn.confirm_soon()
                self.ack_due = seq
                self.acks_due += 1

    # confirms and transactions

    def _confirm_select(self, m: commands.Confirm.Select) -> None:
        if self.tx is not None:
            raise AMQPError(PRECONDITION_FAILED, "cannot switch from tx to confirm mode")
        self.confirming = True
        self._reply(m, commands.Confirm.SelectOk())

    def _tx_select(self, m: commands.Tx.Select) -> None:
        if self.confirming:
            raise AMQPError(PRECONDITION_FAILED, "cannot switch from confirm to tx mode")
        if self.tx is None:
            self.tx = []
        self.conn.send(self.number, commands.Tx.SelectOk())

    def _tx_commit(self, m: commands.Tx.Commit) -> None:
        if self.tx is None:
            raise AMQPError(PRECONDITION_FAILED, "channel is not transactional")
        pending, self.tx = self.tx, []
        acks, self.tx_acks = self.tx_acks, []
        held: list[tuple[str, Message]] = []
        for exchange, key, message, mandatory in pending:
            self._route(exchange, key, message, mandatory, 0, held)
        self.server.publish_all(held)
        for apply in acks:
            apply()
        self.conn.send(self.number, commands.Tx.CommitOk())

    def _tx_rollback(self, m: commands.Tx.Rollback) -> None:
        if self.tx is None:
            raise AMQPError(PRECONDITION_FAILED, "channel is not transactional")
        self.tx = []
        self.tx_acks = []
        self.conn.send(self.number, commands.Tx.RollbackOk())


def _class_id(method: Any) -> int:
    index = getattr(method, "index", 0)
    return int(index) >> 16 if isinstance(index, int) else 0


def _method_id(method: Any) -> int:
    index = getattr(method, "index", 0)
    return int(index) & 0xFFFF if isinstance(index, int) else 0


_HANDLERS: Final[dict[type[Any], Callable[[Channel, Any], None]]] = {
    commands.Channel.Close: Channel._channel_close,
    commands.Channel.Flow: Channel._channel_flow,
    commands.Channel.FlowOk: Channel._channel_flow_ok,
    commands.Exchange.Declare: Channel._exchange_declare,
    commands.Exchange.Delete: Channel._exchange_delete,
    commands.Exchange.Bind: Channel._exchange_bind,
    commands.Exchange.Unbind: Channel._exchange_unbind,
    commands.Queue.Declare: Channel._queue_declare,
    commands.Queue.Bind: Channel._queue_bind,
    commands.Queue.Unbind: Channel._queue_unbind,
    commands.Queue.Purge: Channel._queue_purge,
    commands.Queue.Delete: Channel._queue_delete,
    commands.Basic.Qos: Channel._basic_qos,
    commands.Basic.Consume: Channel._basic_consume,
    commands.Basic.Cancel: Channel._basic_cancel,
    commands.Basic.CancelOk: Channel._basic_cancel_ok,
    commands.Basic.Get: Channel._basic_get,
    commands.Basic.Ack: Channel._basic_ack,
    commands.Basic.Nack: Channel._basic_nack,
    commands.Basic.Reject: Channel._basic_reject,
    commands.Basic.Recover: Channel._basic_recover,
    commands.Basic.RecoverAsync: Channel._basic_recover_async,
    commands.Basic.Publish: Channel._basic_publish,
    commands.Confirm.Select: Channel._confirm_select,
    commands.Tx.Select: Channel._tx_select,
    commands.Tx.Commit: Channel._tx_commit,
    commands.Tx.Rollback: Channel._tx_rollback,
}
