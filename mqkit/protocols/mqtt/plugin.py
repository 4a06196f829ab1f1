"""The ``mqtt`` plugin: an MQTT 3.1.1/5.0 gateway to the broker (``enable_mqtt``).

The server runs on its own asyncio event loop in a background thread owned by the plugin.
``broker.start_mqtt_server()`` starts it (idempotent) and returns the bound ``(host, port)``
of the plain listener (``[mqtt] host`` and the seed's ``mqtt_port``; port 0 picks a free one);
when ``[mqtt] tls_cert`` and ``tls_key`` are set, a TLS listener also binds ``tls_port``
(:attr:`MQTTPlugin.tls_address`). Its settings are the ``[mqtt]`` section,
:class:`~mqkit.protocols.mqtt.settings.MQTTSettings`. A port in use is a
:class:`~mqkit.ProtocolError` (an ``OSError``) saying so.

``broker.close()`` disconnects every client - MQTT 5 clients get DISCONNECT 0x8B "server
shutting down" - and publishes their wills while the broker still accepts publishes (the
``mqkit_broker_closing`` hook), then stops the loop and joins the thread.

With ``enable_persistence``, persistent sessions (their subscriptions, expiry, every QoS 1/2
message queued or in flight for them) and retained messages are kept in
``<persistence_path>/mqtt``, written as they change (a queued message before its publisher's
PUBACK/PUBREC; see :mod:`.store`), and restored by the next broker on that directory, after a
clean close or a crash alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
import threading
from pathlib import Path
from typing import Any

from mqkit.core.broker import Broker
from mqkit.core.errors import InvalidConfigError, PersistenceError, ProtocolError
from mqkit.core.features import ProtocolFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import Message
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import Subscription, Taps
from mqkit.plugins.persistence.format import MQTT_DIR
from mqkit.protocols.mqtt.auth import Authenticator
from mqkit.protocols.mqtt.server import KEY_PREFIX, Server
from mqkit.protocols.mqtt.settings import MQTTSettings
from mqkit.protocols.mqtt.store import FeedJournals, Journal, SessionStore

__all__ = ["MQTTPlugin"]

log = logging.getLogger("mqkit.mqtt")

_START_TIMEOUT = 30.0


def _cannot_listen(host: str, port: int, exc: OSError) -> ProtocolError:
    """The error of a listener that cannot bind: "in use" when that is why."""
    if exc.errno == errno.EADDRINUSE:
        why = "the port is already in use"
    else:
        why = exc.strerror or str(exc)
    error = ProtocolError.because(f"MQTT cannot listen on {host}:{port}: {why}")
    error.errno = exc.errno
    return error


class MQTTPlugin(ProtocolFeature, Plugin):
    """The MQTT gateway plugin (see the module docstring)."""

    feature = "mqtt"
    plugin_info = PluginInfo(
        name="mqtt",
        description="MQTT 3.1.1 and 5.0 gateway (mqkit/protocols/mqtt)",
        flag="enable_mqtt",
        runtime_toggle=False,
        settings=MQTTSettings,
        section="mqtt",
        extra="mqtt",
    )

    def __init__(self, broker: Broker) -> None:
        self._lock = threading.Lock()
        self._broker = broker
        self._auth: Authenticator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._store: SessionStore | None = None
        self.address: tuple[str, int] | None = None
        """The plain listener's bound address, once started."""
        self.tls_address: tuple[str, int] | None = None
        """The TLS listener's bound address, once started (None without a certificate)."""

    # -- lifecycle -------------------------------------------------------------------------------

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Check the security files now: a bad one fails ``Broker(...)``."""
        cfg = broker.settings(MQTTSettings)
        self._auth = Authenticator(cfg.password_file, cfg.acl_file, cfg.allow_anonymous)
        if cfg.tls_cert:
            self._tls_context()  # raises InvalidConfigError for unreadable files

    def _tls_context(self) -> ssl.SSLContext:
        cfg = self._broker.settings(MQTTSettings)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            if cfg.tls_ca:
                context.load_verify_locations(cfg.tls_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: mqtt.tls_cert/mqtt.tls_key cannot be loaded: {exc}",
                field="mqtt.tls_cert",
            ) from None
        return context

    def start(self) -> tuple[str, int]:
        """Start serving (idempotent); return the plain listener's bound address."""
        with self._lock:
            if self.address is not None:
                return self.address
            broker = self._broker
            cfg = broker.settings(MQTTSettings)
            tls = self._tls_context() if cfg.tls_cert else None
            store = self._open_store(broker)
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(
                target=self._run_loop, args=(loop, ready), name="mqkit-mqtt", daemon=True
            )
            thread.start()
            ready.wait()
            server = Server(broker, store)
            try:
                fut = asyncio.run_coroutine_threadsafe(
                    self._listen(server, cfg.host, broker.config.mqtt_port, tls, cfg.tls_port),
                    loop,
                )
                self.address, self.tls_address = fut.result(_START_TIMEOUT)
            except BaseException:
                self._stop_loop(loop, thread, server, publish_wills=False)
                if store is not None:
                    store.close()
                raise
            self._loop, self._thread, self._server, self._store = loop, thread, server, store
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
            await server.shutdown(publish_wills=False)
            raise _cannot_listen(host, port, exc) from exc
        try:
            secure = await server.listen(host, tls_port, tls) if tls is not None else None
        except OSError as exc:
            await server.shutdown(publish_wills=False)
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

    def _open_store(self, broker: Broker) -> SessionStore | None:
        cfg = broker.config
        if not cfg.enable_persistence:
            return None
        directory = Path(cfg.persistence_path).expanduser() / MQTT_DIR
        try:
            return SessionStore.open(directory)
        except PersistenceError:
            raise
        except Exception as exc:
            raise PersistenceError.because(
                f"cannot open the MQTT store in {str(directory)!r}: {exc}"
            ) from exc

    @hookimpl
    def mqkit_broker_closing(self, broker: Broker) -> None:
        """Disconnect the clients and publish their wills while the broker still publishes."""
        self.stop(publish_wills=True)

    @hookimpl
    def mqkit_broker_close(self, broker: Broker) -> None:
        """Make sure the server is stopped and the thread joined."""
        self.stop(publish_wills=False)

    def stop(self, publish_wills: bool = True) -> None:
        """Stop the server (idempotent): disconnect clients, save sessions, join the thread."""
        with self._lock:
            loop, thread, server, store = self._loop, self._thread, self._server, self._store
            self._loop = self._thread = self._server = self._store = None
            self.address = self.tls_address = None
        if loop is not None and thread is not None and server is not None:
            self._stop_loop(loop, thread, server, publish_wills)
        if store is not None:
            store.close()

    @staticmethod
    def _stop_loop(
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        server: Server,
        publish_wills: bool,
    ) -> None:
        async def finish() -> None:
            await server.shutdown(publish_wills)
            # Let closing transports run their connection_lost callbacks.
            for _ in range(3):
                await asyncio.sleep(0)

        try:
            asyncio.run_coroutine_threadsafe(finish(), loop).result(_START_TIMEOUT)
        except Exception as exc:
            log.error("mqtt: shutdown failed: %r", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_START_TIMEOUT)

    @hookimpl
    def mqkit_unsubscribe(self, broker: Broker, subscription: Subscription) -> None:
        """A gateway subscription closed by the broker (``CLOSE_SUBSCRIBER``): tell the server."""
        if not subscription.topic.startswith(KEY_PREFIX):
            return
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not server.closing:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(server.broker_closed_sub, subscription.id)

    def reload_acl(self) -> None:
        """Re-read ``[mqtt] acl_file`` and forget every cached authorization decision.

        Takes effect for connected clients too: what a new rule no longer allows is refused
        at the next SUBSCRIBE or PUBLISH, and is no longer delivered through subscriptions
        made before. A bad file raises ``InvalidConfigError`` and the rules in force stay.
        Without an ACL file (a plugin's ``mqkit_authorize`` decides), it only forgets the
        cached answers. ``python -m mqkit.protocols.mqtt.serve`` calls it on SIGHUP.
        """
        if self._auth is not None:
            self._auth.reload_acl()
        loop, server, thread = self._loop, self._server, self._thread
        if loop is None or server is None:
            return
        if threading.current_thread() is thread:
            server.acl_changed()
            return

        async def forget() -> None:
            server.acl_changed()

        with contextlib.suppress(RuntimeError):  # the loop is closing
            asyncio.run_coroutine_threadsafe(forget(), loop).result(_START_TIMEOUT)

    @hookimpl
    def mqkit_subscription_taps(self, broker: Broker, subscription: Subscription) -> Taps | None:
        """A feed's (or group's) journalled subscription: what its buffer drops leaves the queues.

        A tap on that subscription only: no ``mqkit_drop`` call for everybody's drops.
        """
        journal = subscription.options.filter
        if not isinstance(journal, Journal | FeedJournals):
            return None

        def dropped(subscription: Subscription, message: Message, reason: str) -> None:
            journal.forget(message)

        return Taps(dropped=dropped)

    @hookimpl
    def mqkit_health(self, broker: Broker) -> list[str]:
        """Report failed writes of the session store."""
        server = self._server
        store = server.session_store if server is not None else None
        if store is None or not store.failures:
            return []
        return [f"mqtt session store failed {store.failures} write(s); last: {store.last_failure}"]

    @property
    def server(self) -> Server | None:
        """The running server (for tools and tests), or None."""
        return self._server

    # -- the built-in security ---------------------------------------------------------------

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
        """The password file (and ``[mqtt] allow_anonymous``) for plain MQTT logins."""
        if protocol != "mqtt" or method or self._auth is None:
            return None
        return self._auth.authenticate(username, password)

    @hookimpl(trylast=True)
    def mqkit_authorize(
        self,
        broker: Broker,
        protocol: str,
        client_id: str,
        username: str | None,
        action: str,
        topic: str,
    ) -> bool | None:
        """The ACL file for MQTT clients."""
        if protocol != "mqtt" or self._auth is None:
            return None
        return self._auth.authorize(username, client_id, action, topic)
