"""Exchanges, queues, bindings and routing of the AMQP gateway (loop-thread only).

Routing follows AMQP 0-9-1 and RabbitMQ: the default exchange routes to the queue named by the
routing key; ``direct`` on equal keys; ``fanout`` to every binding; ``topic`` on ``.``-separated
words where ``*`` is one word and ``#`` zero or more; ``headers`` on ``x-match`` ``all``/``any``
(RabbitMQ's ``all-with-x``/``any-with-x`` too) over the binding's other arguments.
Exchange-to-exchange bindings are followed once per exchange (no loops).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from mqkit.core.message import Message
from mqkit.core.subscription import Subscription
from mqkit.protocols.amqp.mapping import body_size

if TYPE_CHECKING:
    from mqkit.protocols.amqp.channel import Channel
    from mqkit.protocols.amqp.connection import Connection

__all__ = [
    "BUILTIN_EXCHANGES",
    "KEY_PREFIX",
    "Binding",
    "Consumer",
    "Exchange",
    "Queue",
    "VHost",
    "topic_matcher",
]

KEY_PREFIX: Final = "amqp:"
"""Internal topics of the gateway's queues: ``amqp:<vhost>:<queue>``."""

# Reply codes (AMQP 0-9-1 constants).
REPLY_SUCCESS: Final = 200
CONTENT_TOO_LARGE: Final = 311
NO_ROUTE: Final = 312
NO_CONSUMERS: Final = 313
CONNECTION_FORCED: Final = 320
INVALID_PATH: Final = 402
ACCESS_REFUSED: Final = 403
NOT_FOUND: Final = 404
RESOURCE_LOCKED: Final = 405
PRECONDITION_FAILED: Final = 406
FRAME_ERROR: Final = 501
SYNTAX_ERROR: Final = 502
COMMAND_INVALID: Final = 503
CHANNEL_ERROR: Final = 504
UNEXPECTED_FRAME: Final = 505
RESOURCE_ERROR: Final = 506
NOT_ALLOWED: Final = 530
NOT_IMPLEMENTED: Final = 540
INTERNAL_ERROR: Final = 541

REPLY_TEXTS: Final = {
    CONNECTION_FORCED: "CONNECTION_FORCED",
    INVALID_PATH: "INVALID_PATH",
    ACCESS_REFUSED: "ACCESS_REFUSED",
    NOT_FOUND: "NOT_FOUND",
    RESOURCE_LOCKED: "RESOURCE_LOCKED",
    PRECONDITION_FAILED: "PRECONDITION_FAILED",
    FRAME_ERROR: "FRAME_ERROR",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    COMMAND_INVALID: "COMMAND_INVALID",
    CHANNEL_ERROR: "CHANNEL_ERROR",
    UNEXPECTED_FRAME: "UNEXPECTED_FRAME",
    RESOURCE_ERROR: "RESOURCE_ERROR",
    NOT_ALLOWED: "NOT_ALLOWED",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    INTERNAL_ERROR: "INTERNAL_ERROR",
}

EXCHANGE_TYPES: Final = ("direct", "fanout", "topic", "headers")
BUILTIN_EXCHANGES: Final = (
    ("", "direct"),
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)


class AMQPError(Exception):
    """A channel or connection exception to send to the client (``connection`` says which)."""

    def __init__(self, code: int, text: str, connection: bool = False) -> None:
        super().__init__(text)
        self.code = code
        self.text = f"{REPLY_TEXTS.get(code, 'ERROR')} - {text}"[:255]
        self.connection = connection


def topic_matcher(binding_key: str) -> Callable[[str], bool]:
    """A predicate on routing keys for a topic binding key (``*`` one word, ``#`` any)."""
    parts: list[str] = []
    words = binding_key.split(".")
    for i, word in enumerate(words):
        if word == "#":
            if len(words) == 1:
                parts.append(r".*")
            elif i == 0:
                parts.append(r"(?:.*\.)?")
            elif i == len(words) - 1:
                parts.append(r"(?:\..*)?")
            else:
                parts.append(r"(?:\..*)?\.")
            continue
        if i > 0 and words[i - 1] != "#":
            parts.append(r"\.")
        parts.append(r"[^.]*" if word == "*" else re.escape(word))
    pattern = re.compile("".join(parts) + r"\Z", re.DOTALL)
    return lambda key: pattern.match(key) is not None


def headers_match(arguments: Mapping[str, Any], headers: Mapping[str, Any] | None) -> bool:
    """Whether a message's ``headers`` match a headers-exchange binding's ``arguments``."""
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode()
    with_x = str(mode).endswith("-with-x")
    wanted = {k: v for k, v in arguments.items() if with_x or not k.startswith("x-")}
    wanted.pop("x-match", None)
    headers = headers or {}
    if str(mode).startswith("any"):
        return any(k in headers and (v is None or headers[k] == v) for k, v in wanted.items())
    return all(k in headers and (v is None or headers[k] == v) for k, v in wanted.items())


@attrs.define(eq=False)
class Binding:
    """A binding of an exchange to a queue or another exchange."""

    destination: str
    to_exchange: bool
    routing_key: str
    arguments: Mapping[str, Any]
    matches: Callable[[str], bool] | None = None

    def key(self) -> tuple[str, bool, str, str]:
        """What identifies the binding (arguments by their text)."""
        return (
            self.destination,
            self.to_exchange,
            self.routing_key,
            repr(sorted(self.arguments.items())),
        )


@attrs.define(eq=False)
class Exchange:
    """An exchange of one vhost."""

    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: Mapping[str, Any] = attrs.Factory(dict)
    bindings: dict[tuple[str, bool, str, str], Binding] = attrs.Factory(dict)
    bound_to: int = 0
    """How many bindings have this exchange as their destination."""

    def targets(self, routing_key: str, headers: Mapping[str, Any] | None) -> Iterator[Binding]:
        """The bindings a message with ``routing_key`` and ``headers`` goes through."""
        kind = self.type
        for binding in self.bindings.values():
            if kind == "fanout":
                yield binding
            elif kind == "direct":
                if binding.routing_key == routing_key:
                    yield binding
            elif kind == "topic":
                if binding.matches is None:
                    binding.matches = topic_matcher(binding.routing_key)
                if binding.matches(routing_key):
                    yield binding
            elif headers_match(binding.arguments, headers):
                yield binding


@attrs.define(eq=False)
class Consumer:
    """A ``basic.consume`` on a queue."""

    tag: str
    channel: Channel
    queue: Queue
    no_ack: bool
    exclusive: bool
    prefetch: int
    """The channel's per-consumer prefetch count when it consumed (0: unlimited)."""
    unacked: int = 0


@attrs.define(eq=False)
class Queue:
    """A queue: an mqkit subscription on the queue's internal topic, and its consumers."""

    vhost: str
    name: str
    topic: str
    sub: Subscription
    durable: bool
    exclusive: Connection | None
    auto_delete: bool
    arguments: Mapping[str, Any]
    max_length: int | None = None
    max_length_bytes: int | None = None
    """``x-max-length-bytes``: the most body bytes the queue's ready messages hold."""
    reject_publish: bool = False
    ttl: float | None = None
    max_priority: int | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    expires: float | None = None
    """``x-expires`` in seconds: the queue is deleted after that long unused."""
    expiry: asyncio.TimerHandle | None = None
    consumers: list[Consumer] = attrs.Factory(list)
    held: Message | None = None
    """A message the pump took while no consumer could take it: delivered first."""
    pump: asyncio.Task[None] | None = None
    wake: asyncio.Event = attrs.Factory(asyncio.Event)
    had_consumer: bool = False
    bindings: set[tuple[str, tuple[str, bool, str, str]]] = attrs.Factory(set)
    """(exchange, binding key) of every binding to this queue."""
    deleted: bool = False
    rr: int = 0

    def depth(self) -> int:
        """Messages ready (not delivered, not unacknowledged)."""
        return self.sub.queue_len + (self.held is not None)

    def ready(self) -> list[Message]:
        """The ready messages, the next to be delivered first."""
        buffered = self.sub.buffered()
        return buffered if self.held is None else [self.held, *buffered]

    def ready_bytes(self) -> int:
        """The body bytes of the ready messages (what ``x-max-length-bytes`` bounds).

        The subscription of a queue with ``x-max-length-bytes`` keeps the sum (its
        ``Taps.weigh`` is :func:`body_size`): no walk of the queue, however long.
        """
        held = 0 if self.held is None else body_size(self.held)
        return max(self.sub.weighed, 0) + held


@attrs.define(eq=False)
class VHost:
    """The exchanges and queues of one virtual host."""

    name: str
    exchanges: dict[str, Exchange] = attrs.Factory(dict)
    queues: dict[str, Queue] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        for name, kind in BUILTIN_EXCHANGES:
            self.exchanges[name] = Exchange(name, kind)

    def route(
        self, exchange: Exchange, routing_key: str, headers: Mapping[str, Any] | None
    ) -> list[Queue]:
        """The queues a message published to ``exchange`` reaches (each once).

        A message that reaches no queue goes on to the exchange's ``alternate-exchange`` (and
        that one's, without a loop), as with RabbitMQ.
        """
        tried = {exchange.name}
        found = self._route(exchange, routing_key, headers)
        while not found:
            alternate = exchange.arguments.get("alternate-exchange")
            if isinstance(alternate, bytes):
                alternate = alternate.decode()
            nxt = self.exchanges.get(alternate) if isinstance(alternate, str) else None
            if nxt is None or nxt.name in tried:
                break
            tried.add(nxt.name)
            exchange = nxt
            found = self._route(exchange, routing_key, headers)
        return found

    def _route(
        self, exchange: Exchange, routing_key: str, headers: Mapping[str, Any] | None
    ) -> list[Queue]:
        if exchange.name == "":
            found = self.queues.get(routing_key)
            return [] if found is None else [found]
        queues: dict[str, Queue] = {}
        seen = {exchange.name}
        todo = [exchange]
        while todo:
            current = todo.pop()
            for binding in current.targets(routing_key, headers):
                if binding.to_exchange:
                    nxt = self.exchanges.get(binding.destination)
                    if nxt is not None and nxt.name not in seen:
                        seen.add(nxt.name)
                        todo.append(nxt)
                else:
                    queue = self.queues.get(binding.destination)
                    if queue is not None:
                        queues[queue.name] = queue
        return list(queues.values())
