"""The ``amqp`` plugin: an AMQP 0-9-1 gateway to the broker (``enable_amqp``).

The server runs on its own asyncio event loop in a background thread owned by the plugin.
``broker.start_amqp_server()`` starts it (idempotent) and returns the bound ``(host, port)``
(the seed's ``amqp_host`` and ``amqp_port``; port 0 picks a free one); when ``[amqp] tls_cert``
and ``tls_key`` are set, a TLS listener also binds ``tls_port`` (:attr:`AMQPPlugin.tls_address`).
Its settings are the
``[amqp]`` section, :class:`~mqkit.protocols.amqp.settings.AMQPSettings`. A port in use is a
:class:`~mqkit.ProtocolError` (an ``OSError``) saying so.

``broker.close()`` sends every client connection.close 320 CONNECTION_FORCED while the broker
still runs, then stops the loop and joins the thread. Clients log in with PLAIN or AMQPLAIN,
checked against ``[amqp] password_file`` (the MQTT gateway's format); without one only
``guest``/``guest`` is accepted, as by a fresh RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
import threading
from typing import TYPE_CHECKING, Any

from mqkit.core.broker import Broker
from mqkit.core.errors import InvalidConfigError, ProtocolError
from mqkit.core.features import ProtocolFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import Message
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import Subscription, Taps
from mqkit.protocols.amqp.auth import PasswordFile, Permissions
from mqkit.protocols.amqp.model import KEY_PREFIX
from mqkit.protocols.amqp.settings import AMQPSettings

if TYPE_CHECKING:
    from mqkit.protocols.amqp.server import Server

__all__ = ["AMQPPlugin"]

log = logging.getLogger("mqkit.amqp")

_START_TIMEOUT = 30.0


def _cannot_listen(host: str, port: int, exc: OSError) -> ProtocolError:
    """The error of a listener that cannot bind: "in use" when that is why."""
    why = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
    error = ProtocolError.because(f"AMQP cannot listen on {host}:{port}: {why or exc}")
    error.errno = exc.errno
    return error


class AMQPPlugin(ProtocolFeature, Plugin):
    """The AMQP 0-9-1 gateway plugin (see the module docstring)."""

    feature = "amqp"
    plugin_info = PluginInfo(
        name="amqp",
        description="AMQP 0-9-1 gateway on pamqp (mqkit/protocols/amqp)",
        flag="enable_amqp",
        runtime_toggle=False,
        settings=AMQPSettings,
        section="amqp",
        extra="amqp",
    )

    def __init__(self, broker: Broker) -> None:
        import pamqp  # the `amqp` extra: without it the broker names it (PluginError)

        del pamqp
        self._lock = threading.Lock()
        self._broker = broker
        self._passwords: PasswordFile | None = None
        self.permissions: Permissions | None = None
        """``[amqp] permissions_file``, read when the broker starts (None without one)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._weighed: set[str] = set()  # Server.weighed: the topics of bounded-bytes queues
        self.address: tuple[str, int] | None = None
        """The plain listener's bound address, once started."""
        self.tls_address: tuple[str, int] | None = None
        """The TLS listener's bound address, once started (None without a certificate)."""

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Check the password file now: an unreadable one fails ``Broker(...)``."""
        cfg = broker.settings(AMQPSettings)
        self._passwords = (
            PasswordFile(cfg.password_file, "amqp.password_file") if cfg.password_file else None
        )
        self.permissions = Permissions(cfg.permissions_file) if cfg.permissions_file else None
        if cfg.tls_cert:
            self._tls_context()  # raises InvalidConfigError for unreadable files

    def _tls_context(self) -> ssl.SSLContext:
        cfg = self._broker.settings(AMQPSettings)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            if cfg.tls_ca:
                context.load_verify_locations(cfg.tls_ca)
                context.verify_mode = (
                    ssl.CERT_REQUIRED if cfg.tls_fail_if_no_peer_cert else ssl.CERT_OPTIONAL
                )
        except (OSError, ssl.SSLError) as exc:
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: amqp.tls_cert/amqp.tls_key cannot be loaded: {exc}",
                field="amqp.tls_cert",
            ) from None
        return context

    def start(self) -> tuple[str, int]:
        """Start serving (idempotent); return the listener's bound address."""
        with self._lock:
            if self.address is not None:
                return self.address
            broker = self._broker
            cfg = broker.settings(AMQPSettings)
            tls = self._tls_context() if cfg.tls_cert else None
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(
                target=self._run_loop, args=(loop, ready), name="mqkit-amqp", daemon=True
            )
            thread.start()
            ready.wait()
            from mqkit.protocols.amqp.server import Server
            from mqkit.protocols.amqp.store import AMQPStore

            store = (
                AMQPStore.open(broker.config.persistence_path)
                if broker.config.enable_persistence
                else None
            )
            server = Server(broker, store, self.permissions)
            # Its bounded queues' topics, read by the taps: shared before it loads (and
            # declares the durable queues), a new set for each server.
            self._weighed = server.weighed
            host, port = broker.config.amqp_host, broker.config.amqp_port
            try:
                fut = asyncio.run_coroutine_threadsafe(
                    self._listen(server, host, port, tls, cfg.tls_port), loop
                )
                self.address, self.tls_address = fut.result(_START_TIMEOUT)
            except BaseException:
                self._stop_loop(loop, thread, server)
                if store is not None:
                    store.close()
                raise
            self._loop, self._thread, self._server = loop, thread, server
            return self.address

    @staticmethod
    async def _listen(
        server: Server, host: str, port: int, tls: ssl.SSLContext | None, tls_port: int
    ) -> tuple[tuple[str, int], tuple[str, int] | None]:
        if server.store is not None:
            server.load()
        try:
            plain = await server.listen(host, port)
        except OSError as exc:
            await server.shutdown()
            raise _cannot_listen(host, port, exc) from exc
        try:
            secure = await server.listen(host, tls_port, tls) if tls is not None else None
        except OSError as exc:
            await server.shutdown()
            raise _cannot_listen(host, tls_port, exc) from exc
        return plain, secure

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @hookimpl
    def mqkit_broker_closing(self, broker: Broker) -> None:
        """Close every client connection (320) while the broker still runs."""
        self.stop()

    @hookimpl
    def mqkit_broker_close(self, broker: Broker) -> None:
        """Make sure the server is stopped and the thread joined."""
        self.stop()

    def stop(self) -> None:
        """Stop the server (idempotent): close the connections, join the thread."""
        with self._lock:
            loop, thread, server = self._loop, self._thread, self._server
            self._loop = self._thread = self._server = None
            self.address = self.tls_address = None
        if loop is not None and thread is not None and server is not None:
            self._stop_loop(loop, thread, server)
            if server.store is not None:
                server.store.close()

    @staticmethod
    def _stop_loop(
        loop: asyncio.AbstractEventLoop, thread: threading.Thread, server: Server
    ) -> None:
        async def finish() -> None:
            await server.shutdown()
            for _ in range(3):
                await asyncio.sleep(0)

        try:
            asyncio.run_coroutine_threadsafe(finish(), loop).result(_START_TIMEOUT)
        except Exception as exc:
            log.error("amqp: shutdown failed: %r", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_START_TIMEOUT)

    @property
    def server(self) -> Server | None:
        """The running server (for tools and tests), or None."""
        return self._server

    @hookimpl
    def mqkit_subscription_taps(self, broker: Broker, subscription: Subscription) -> Taps | None:
        """A queue's subscription: what its buffer drops or expires is dead-lettered."""
        topic = subscription.topic
        if not topic.startswith(KEY_PREFIX):
            return None

        def dropped(subscription: Subscription, message: Message, reason: str) -> None:
            loop, server = self._loop, self._server
            if loop is None or server is None or server.closing:
                return
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(server.queue_dropped, topic, message, reason)

        if topic not in self._weighed:
            return Taps(dropped=dropped)
        from mqkit.protocols.amqp.mapping import body_size  # the `amqp` extra's pamqp

        return Taps(dropped=dropped, weigh=body_size)

    @hookimpl(trylast=True)
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
    ) -> bool | None:
        """``[amqp] password_file`` for AMQP logins (``guest``/``guest`` without one)."""
        if protocol != "amqp":
            return None
        if self._passwords is None:
            return username == "guest" and password == b"guest"
        return self._passwords.check(username or "", password or b"")
