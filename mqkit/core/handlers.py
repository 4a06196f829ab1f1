"""Typed handlers: call a function for each message (``@broker.subscriber``), request-reply.

Everything here goes through the broker's public API (subscribe, get/aget, ack/nack, publish,
the dead letter queue); the ``Broker`` methods ``subscriber``, ``publisher``, ``request``,
``arequest``, ``run`` and ``serve`` delegate to :class:`Handlers`, one per broker.

- Registering a handler subscribes at once (nothing published after the decorator line is
  missed); its workers start with ``run()``/``serve()``, or at once when those already run.
- A sync handler gets ``concurrency`` worker threads, an async one ``concurrency`` tasks on the
  loop ``serve()`` runs in: at most ``concurrency`` messages are in flight per handler. A worker
  takes a message only when it is free (an ack deadline never runs while a message waits).
- Return = ack (of an ack-required message), raise = nack (the ``ack`` plugin redelivers up to
  ``max_ack_retries`` times, then dead-letters); a plain message whose handler raises is
  dead-lettered at once. A payload that does not structure is dead-lettered at once with the
  validation error as its reason. With the dead letter queue off, a given-up message is dropped,
  counted (``dead_letter_stats().dropped``), reported by ``health_check()`` and logged.
- Stopping: stop taking, finish what is in flight, cancel the handlers' subscriptions (the
  ``ack`` plugin dead-letters what they still buffer unacknowledged), close the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
import typing
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import cattrs

from mqkit.core.checks import describe, finite_seconds
from mqkit.core.convert import converter, describe_structure_error
from mqkit.core.errors import (
    AckNotFoundError,
    BrokerClosedError,
    InvalidArgumentError,
    MQError,
    RequestTimeoutError,
)
from mqkit.core.message import Message, needs_ack
from mqkit.core.subscription import SubOptions, Subscription
from mqkit.core.topics import filter_is_valid, is_pattern, normalize_topic

if TYPE_CHECKING:
    from mqkit.core.broker import Broker

__all__ = ["CORRELATION_ID", "REPLY_TO", "HandlerT", "Handlers"]

log = logging.getLogger("mqkit.handlers")

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])
"""A handler function's type: the decorators return the function unchanged."""

REPLY_TO: Final = "reply_to"
"""The ``meta`` key of a request's reply topic."""
CORRELATION_ID: Final = "correlation_id"
"""The ``meta`` key of a request's correlation id (copied onto the reply)."""

_POLL: Final = 0.1
"""Seconds an idle worker thread waits for a message before it looks whether to stop."""
_WATCH: Final = 0.25
"""Seconds between ``serve()``'s looks at whether someone else closed the broker."""

_PAYLOAD, _MESSAGE = 0, 1


class _Unstructurable(Exception):
    """The message cannot be handed to the handler: ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _type_name(kind: object) -> str:
    return getattr(kind, "__qualname__", None) or str(kind)


@attrs.frozen(slots=True)
class _Signature:
    """How a handler is called: which parameters get the payload and the message."""

    order: tuple[int, ...]  # positional arguments: _PAYLOAD or _MESSAGE
    keywords: tuple[tuple[str, int], ...]  # keyword-only arguments
    payload: Any  # the payload parameter's type (None: the raw data)
    message: type[Message]  # the message parameter's type (Message: any message)

    @classmethod
    def of(cls, fn: Callable[..., Any], name: str) -> _Signature:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError.because(f"handler {name}: no signature ({exc})") from None
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            raise InvalidArgumentError.because(
                f"handler {name}: its annotations do not resolve ({exc!r})"
            ) from None
        order: list[int] = []
        keywords: list[tuple[str, int]] = []
        payload: Any = None
        message: type[Message] = Message
        taken: set[int] = set()
        for param in params:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            hint = hints.get(param.name)
            role = _MESSAGE if isinstance(hint, type) and issubclass(hint, Message) else _PAYLOAD
            if role in taken:
                if param.default is not param.empty:
                    continue  # left to its default
                what = "message" if role == _MESSAGE else "payload"
                raise InvalidArgumentError.because(
                    f"handler {name}: parameter {param.name!r} has nothing to receive (a "
                    f"handler takes one payload and one {Message.__name__} parameter; the "
                    f"{what} goes to the first)"
                )
            taken.add(role)
            if role == _MESSAGE:
                message = typing.cast(type[Message], hint)
            elif hint is not None and hint is not Any and hint is not object:
                payload = hint
                try:
                    converter.get_structure_hook(hint)
                except Exception as exc:
                    raise InvalidArgumentError.because(
                        f"handler {name}: payloads cannot be structured as "
                        f"{_type_name(hint)} ({exc})"
                    ) from None
            if param.kind == param.KEYWORD_ONLY:
                keywords.append((param.name, role))
            else:
                order.append(role)
        return cls(tuple(order), tuple(keywords), payload, message)


class _Handler:
    """One registered handler: its subscription, its workers and how it treats a message."""

    def __init__(
        self,
        app: Handlers,
        fn: Callable[..., Any],
        sub: Subscription,
        concurrency: int,
        signature: _Signature,
        name: str,
    ) -> None:
        self.app = app
        self.broker = app.broker
        self.fn = fn
        self.sub = sub
        self.concurrency = concurrency
        self.name = name
        self.is_async = inspect.iscoroutinefunction(fn)
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.waiting: set[asyncio.Task[None]] = set()
        self._sig = signature
        kind = signature.payload
        self._kind = kind
        self._structure = None if kind is None else converter.get_structure_hook(kind)
        plain = isinstance(kind, type) and not typing.is_typeddict(kind)
        self._as_is: type = kind if plain else _Never  # its instances need no structuring
        self._strict = signature.message is not Message  # the message's class is checked
        self._checks = kind is not None or self._strict
        self._single = signature.order == (_PAYLOAD,) and not signature.keywords
        self._invoke = _invoker(fn, signature)

    # -- workers ---------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the workers (async ones on ``loop``, from any thread)."""
        if not self.is_async:
            for i in range(self.concurrency):
                thread = threading.Thread(
                    target=self._thread_main, name=f"mqkit-handler-{self.name}-{i}", daemon=True
                )
                self.threads.append(thread)
                thread.start()
        elif _on_loop(loop):
            self._start_tasks()
        else:
            loop.call_soon_threadsafe(self._start_tasks)

    def _start_tasks(self) -> None:
        if self.stopping:
            return
        for _ in range(self.concurrency):
            self.tasks.append(asyncio.ensure_future(self._task_main()))

    def stop(self) -> None:
        """Stop taking messages (on the loop thread): idle tasks are cancelled, busy ones end."""
        self.stopping = True
        for task in list(self.waiting):
            task.cancel()

    def _thread_main(self) -> None:
        get = self.sub.get
        handle = self._handle
        broker = self.broker
        while not self.stopping and not broker._closed:
            try:
                message = get(_POLL)
            except TimeoutError:
                continue
            except MQError:  # closed (subscription or broker)
                return
            try:
                handle(message)
            except Exception:  # a failure of ours or a plugin's: logged, the worker goes on
                self._unsettled(message)

    async def _task_main(self) -> None:
        # The loop of _handle, inlined: one coroutine per message (the handler's), not two.
        task = asyncio.current_task()
        assert task is not None
        sub = self.sub
        take, aget = sub.get_nowait, sub.aget
        broker, waiting = self.broker, self.waiting
        fn, invoke, single = self.fn, self._invoke, self._single
        checks, as_is, strict = self._checks, self._as_is, self._strict
        done = 0
        while not self.stopping and not broker._closed:
            done += 1
            if not done & 63:  # a busy handler still lets the loop run now and then
                await asyncio.sleep(0)
                if self.stopping:
                    return
            try:
                message = take()
            except TimeoutError:  # none buffered: wait, cancellable by stop()
                waiting.add(task)
                try:
                    message = await aget()
                except MQError:  # closed (subscription or broker)
                    return
                finally:
                    waiting.discard(task)
            except MQError:
                return
            try:
                payload = message.data
                if checks and (payload.__class__ is not as_is or strict):
                    try:
                        payload = self._payload(message)
                    except _Unstructurable as exc:
                        self._reject(message, exc.reason)
                        continue
                try:
                    result = await (fn(payload) if single else invoke(payload, message))
                    if result is not None or message.meta:
                        self._outputs(message, result)
                except Exception as exc:
                    self._failed(message, exc)
                    continue
                if message.__class__ is not Message:
                    self._settle(message)
            except Exception:  # a failure of ours or a plugin's: logged, the worker goes on
                self._unsettled(message)

    def _unsettled(self, message: Message) -> None:
        log.exception(
            "handler %s: message %r from %r may be left unsettled",
            self.name,
            message.id,
            message.topic,
        )

    # -- one message -----------------------------------------------------------------------------

    def _payload(self, message: Message) -> Any:
        """The payload as the handler's type (``_Unstructurable`` when it cannot be)."""
        payload = message.data
        kind = self._kind
        if kind is not None and payload.__class__ is not self._as_is:
            try:
                payload = self._structure(payload, kind)  # type: ignore[misc]
            except Exception as exc:
                text, _ = describe_structure_error(exc)
                if not isinstance(exc, cattrs.BaseValidationError | ValueError):
                    text = f"got {describe(payload)[:200]}: {text}"
                raise _Unstructurable(
                    f"payload does not structure as {_type_name(kind)}: {text}"
                ) from None
        if not isinstance(message, self._sig.message):
            raise _Unstructurable(
                f"handler {self.name} takes {self._sig.message.__name__} messages, got "
                f"{type(message).__name__} {message.id!r}"
            )
        return payload

    def _handle(self, message: Message) -> None:
        payload = message.data
        if self._checks and (payload.__class__ is not self._as_is or self._strict):
            try:
                payload = self._payload(message)
            except _Unstructurable as exc:
                self._reject(message, exc.reason)
                return
        try:
            result = self.fn(payload) if self._single else self._invoke(payload, message)
            if result is not None or message.meta:
                self._outputs(message, result)
        except Exception as exc:
            self._failed(message, exc)
            return
        if message.__class__ is not Message:
            self._settle(message)

    def _outputs(self, message: Message, result: Any) -> None:
        """Publish the result: the reply of a request, and to each ``@publisher`` topic."""
        meta = message.meta
        if meta:
            reply_to = meta.get(REPLY_TO)
            if reply_to:
                reply = _as_message(result)
                extra = {CORRELATION_ID: meta.get(CORRELATION_ID, "")}
                self.broker.publish(reply_to, attrs.evolve(reply, meta={**reply.meta, **extra}))
        if result is not None:
            for topic in self.app.outputs.get(self.fn, ()):
                self.broker.publish(topic, _as_message(result))

    def _tracked(self, message: Message) -> str:
        """The ack id the ``ack`` plugin tracks the message by, or ""."""
        ack_id: str = getattr(message, "ack_id", "")
        if ack_id and needs_ack(message) and self.broker.has_feature("ack"):
            return ack_id
        return ""

    def _settle(self, message: Message) -> None:
        ack_id = self._tracked(message)
        if not ack_id:
            return
        try:
            self.sub.ack(ack_id)
        except AckNotFoundError:
            log.warning(
                "handler %s finished message %r after its ack deadline: it was redelivered or "
                "dead-lettered meanwhile",
                self.name,
                message.id,
            )
        except BrokerClosedError:
            log.debug("handler %s: broker closed before the ack of %r", self.name, message.id)

    def _failed(self, message: Message, exc: Exception) -> None:
        ack_id = self._tracked(message)
        if ack_id:
            retries = self.broker.config.max_ack_retries
            final = message.attempt > retries
            log.log(
                logging.ERROR if final else logging.WARNING,
                "handler %s failed on message %r from %r (attempt %d of %d): %r; %s",
                self.name,
                message.id,
                message.topic,
                message.attempt,
                retries + 1,
                exc,
                "giving it up" if final else "it will be redelivered",
                exc_info=exc,
            )
            try:
                self.sub.nack(ack_id)
            except (AckNotFoundError, BrokerClosedError) as err:
                log.debug("handler %s: nack of %r not possible: %s", self.name, message.id, err)
            return
        log.error(
            "handler %s failed on message %r from %r: %r",
            self.name,
            message.id,
            message.topic,
            exc,
            exc_info=exc,
        )
        self._dead_letter(message, f"handler {self.name} raised {exc!r}")

    def _reject(self, message: Message, reason: str) -> None:
        """Dead-letter an unusable message at once (settling its ack first: no redelivery)."""
        ack_id = self._tracked(message)
        if ack_id:
            try:
                self.sub.ack(ack_id)
            except (AckNotFoundError, BrokerClosedError):
                return  # the ack plugin took it over (deadline) or the broker closed
        log.error("handler %s cannot take message %r: %s", self.name, message.id, reason)
        self._dead_letter(message, reason)

    def _dead_letter(self, message: Message, reason: str) -> None:
        broker = self.broker
        if not broker.dead_letter(message.topic, message, reason, message.attempt, self.sub):
            log.error(
                "message %r from %r was dropped, not dead-lettered: the dead letter queue is "
                "off or refused it (enable_dead_letter_queue); see dead_letter_stats()",
                message.id,
                message.topic,
            )


class _Never:
    """No payload is of this class."""


def _invoker(fn: Callable[..., Any], sig: _Signature) -> Callable[[Any, Message], Any]:
    """``call(payload, message)``: ``fn`` called with what its parameters take."""
    order, keywords = sig.order, sig.keywords
    if not keywords:
        if order == (_PAYLOAD, _MESSAGE):
            return fn
        if order == (_MESSAGE,):
            return lambda payload, message: fn(message)
        if order == (_MESSAGE, _PAYLOAD):
            return lambda payload, message: fn(message, payload)
        if not order:
            return lambda payload, message: fn()

    def call(payload: Any, message: Message) -> Any:
        values = (payload, message)
        args = [values[role] for role in order]
        return fn(*args, **{key: values[role] for key, role in keywords})

    return call


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _as_message(value: Any) -> Message:
    """A handler's result as a message: itself if it is one, else its unstructured data."""
    if isinstance(value, Message):
        return value
    return Message(uuid.uuid4().hex, converter.unstructure(value))


class Handlers:
    """The handlers registered on one broker, and their run state (``Broker`` delegates here)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        """The broker the handlers consume from."""
        self.outputs: dict[Callable[..., Any], tuple[str, ...]] = {}
        """Function -> the topics ``@publisher`` publishes its results to."""
        self._lock = threading.Lock()
        self._handlers: list[_Handler] = []
        self._groups: dict[tuple[str, str, bool], Subscription] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._reason = ""

    # -- registration ----------------------------------------------------------------------------

    def subscriber(
        self,
        topic: str,
        *,
        concurrency: int = 1,
        group: str | None = None,
        options: SubOptions | None = None,
        cluster: bool = False,
    ) -> Callable[[HandlerT], HandlerT]:
        """See ``Broker.subscriber``."""
        key = normalize_topic(topic)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise InvalidArgumentError.because(
                f"concurrency must be an int of at least 1, not {describe(concurrency)}"
            )
        if group is not None and (not isinstance(group, str) or not group.strip()):
            raise InvalidArgumentError.because(
                f"group must be None or a non-empty str, not {describe(group)}"
            )

        def register(fn: HandlerT) -> HandlerT:
            if not callable(fn):
                raise InvalidArgumentError.because(f"a handler must be callable: {describe(fn)}")
            name = getattr(fn, "__qualname__", None) or repr(fn)
            signature = _Signature.of(fn, name)
            sub = self._subscription(key, group, options, cluster=cluster)
            handler = _Handler(self, fn, sub, concurrency, signature, name)
            with self._lock:
                self._handlers.append(handler)
                loop = self._loop
                if loop is not None:
                    handler.start(loop)
            return fn

        return register

    def _subscription(
        self, key: str, group: str | None, options: SubOptions | None, *, cluster: bool
    ) -> Subscription:
        broker = self.broker
        with self._lock:
            if group is not None:
                shared = self._groups.get((key, group, cluster))
                if shared is not None and not shared.closed:
                    if options is not None and shared.options not in (
                        options,
                        attrs.evolve(options, group=group),
                    ):
                        raise InvalidArgumentError.because(
                            f"group {group!r} of {key!r} was subscribed with other options"
                        )
                    return shared
            if cluster:  # the group's subscriptions on every node share the messages
                wanted = options if options is not None else SubOptions()
                sub = broker.subscribe_from_cluster(key, attrs.evolve(wanted, group=group))
            elif ("+" in key or "#" in key) and filter_is_valid(key) and not is_pattern(key):
                sub = broker.subscribe_filter(key, options)  # MQTT-style: sensors/+/temp
            elif is_pattern(key):
                sub = broker.subscribe_pattern(key, options)
            else:
                sub = broker.subscribe(key, options)
            if group is not None:
                self._groups[(key, group, cluster)] = sub
            return sub

    def publisher(self, topic: str) -> Callable[[HandlerT], HandlerT]:
        """See ``Broker.publisher``."""
        key = normalize_topic(topic)

        def mark(fn: HandlerT) -> HandlerT:
            with self._lock:
                self.outputs[fn] = (*self.outputs.get(fn, ()), key)
            return fn

        return mark

    def names(self) -> list[str]:
        """The registered handlers' names (qualified function names), in registration order."""
        with self._lock:
            return [handler.name for handler in self._handlers]

    # -- running ---------------------------------------------------------------------------------

    async def serve(
        self, *, close: bool = True, signals: bool = False, ready: Callable[[], None] | None = None
    ) -> str:
        """Run every handler until stopped (see ``Broker.serve``); return the stop's reason.

        ``signals`` installs SIGINT/SIGTERM handlers on the running loop that stop it cleanly;
        ``ready`` is called once the workers and the signal handlers are in place; ``close``
        closes the broker at the end.
        """
        loop = asyncio.get_running_loop()
        broker = self.broker
        with self._lock:
            if self._stop is not None:
                raise RuntimeError("the broker's handlers already run (run() or serve())")
            broker._check_open()
            stop = self._stop = asyncio.Event()
            self._reason = ""
        installed: list[signal.Signals] = []
        try:
            if signals:  # before any worker starts: a handler may well raise a signal
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self._signalled, sig)
                    installed.append(sig)
            with self._lock:
                self._loop = loop
                for handler in self._handlers:
                    handler.start(loop)
            if ready is not None:
                ready()
            while not stop.is_set() and not broker.closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_WATCH):
                        await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self._shutdown()
            if close:
                broker.close()
        return self._reason or ("broker closed" if broker.closed else "stopped")

    def run(self, *, close: bool = True, ready: Callable[[], None] | None = None) -> str:
        """Block in ``serve()`` on a new event loop (see ``Broker.run``); return the reason.

        From the main thread, SIGINT and SIGTERM stop it cleanly.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("broker.run() blocks: inside an event loop, await broker.serve()")
        main = threading.current_thread() is threading.main_thread()
        return asyncio.run(self.serve(close=close, signals=main, ready=ready))

    def _signalled(self, sig: signal.Signals) -> None:
        log.info("received %s: stopping the handlers", sig.name)
        self._reason = self._reason or sig.name
        if self._stop is not None:
            self._stop.set()

    async def _shutdown(self) -> None:
        """Stop taking, wait for what is in flight, cancel the handlers' subscriptions."""
        with self._lock:
            self._loop = self._stop = None
            handlers = list(self._handlers)
        for handler in handlers:
            handler.stop()
        log.info("stopping %d handler(s): no new message is taken", len(handlers))
        tasks = [task for handler in handlers for task in handler.tasks]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        threads = [thread for handler in handlers for thread in handler.threads]
        if threads:
            await asyncio.to_thread(_join, threads)
        for handler in handlers:
            handler.sub.cancel()

    # -- request-reply ---------------------------------------------------------------------------

    def _ask(self, topic: str, payload: object, timeout: object) -> tuple[Subscription, float]:
        seconds = finite_seconds(timeout, "timeout")
        if seconds <= 0:
            raise InvalidArgumentError.because(f"timeout must be positive, not {seconds!r}")
        correlation = uuid.uuid4().hex
        reply_to = f"mqkit.reply.{correlation}"
        sub = self.broker.subscribe(reply_to)
        try:
            meta = {REPLY_TO: reply_to, CORRELATION_ID: correlation}
            if isinstance(payload, Message):
                request = attrs.evolve(payload, meta={**payload.meta, **meta})
            else:
                request = Message(correlation, converter.unstructure(payload), meta=meta)
            self.broker.publish(topic, request)
        except BaseException:
            sub.cancel()
            raise
        return sub, seconds

    def request(self, topic: str, payload: object, timeout: float) -> Message:
        """See ``Broker.request``."""
        sub, seconds = self._ask(topic, payload, timeout)
        try:
            return sub.get(seconds)
        except TimeoutError:
            raise _timed_out(topic, seconds) from None
        finally:
            sub.cancel()

    async def arequest(self, topic: str, payload: object, timeout: float) -> Message:
        """See ``Broker.arequest``."""
        sub, seconds = self._ask(topic, payload, timeout)
        try:
            return await sub.aget(seconds)
        except TimeoutError:
            raise _timed_out(topic, seconds) from None
        finally:
            sub.cancel()


def _timed_out(topic: str, seconds: float) -> RequestTimeoutError:
    return RequestTimeoutError.because(f"no reply to a request on {topic!r} within {seconds} s")


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join()
