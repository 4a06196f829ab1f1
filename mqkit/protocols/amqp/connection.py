"""One AMQP 0-9-1 connection: frames in and out (pamqp), the handshake, channels and methods.

Frames are cut from the byte stream by their header (type, channel, size) and frame-end octet,
and unmarshalled and marshalled by pamqp. A frame that pamqp cannot read, a frame larger than
the negotiated frame-max, or a frame the state does not allow closes the connection with the
reply code of the specification (501 FRAME_ERROR, 502 SYNTAX_ERROR, 503 COMMAND_INVALID,
504 CHANNEL_ERROR, 505 UNEXPECTED_FRAME); a soft error (404, 405, 406, ...) closes only that
channel. The server goes on serving every other client.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING, Any, Final

from pamqp import body as pbody
from pamqp import commands, decode, exceptions, frame, header, heartbeat
from pamqp import header as pheader
from pamqp.base import Frame

from mqkit.core.message import Message
from mqkit.protocols.amqp.channel import PROPERTIES_KEPT, Channel, method_name
from mqkit.protocols.amqp.frames import (
    content_frames,
    read_ack,
    read_header,
    read_publish,
)
from mqkit.protocols.amqp.mapping import (
    K_EXCHANGE,
    K_IN_PROCESS,
    properties_of,
)
from mqkit.protocols.amqp.model import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    FRAME_ERROR,
    NOT_ALLOWED,
    SYNTAX_ERROR,
    UNEXPECTED_FRAME,
    AMQPError,
    VHost,
)

if TYPE_CHECKING:
    from mqkit.protocols.amqp.server import Server

__all__ = ["Connection"]

log = logging.getLogger("mqkit.amqp")

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"
FRAME_END: Final = 0xCE
_HEADER = struct.Struct(">BHI")
_HEADER_START = struct.Struct(">HHQ")
_CLOSE_OK_WAIT: Final = 2.0

_START, _START_OK, _TUNE_OK, _OPEN, _OPEN_DONE, _CLOSING, _CLOSED = range(7)

SERVER_PROPERTIES: Final[dict[str, Any]] = {
    "product": "mqkit",
    "platform": "Python",
    "information": "mqkit AMQP 0-9-1 gateway",
    "capabilities": {
        "publisher_confirms": True,
        "exchange_exchange_bindings": True,
        "basic.nack": True,
        "consumer_cancel_notify": True,
        "connection.blocked": True,
        "authentication_failure_close": True,
        "per_consumer_qos": True,
        "direct_reply_to": True,
    },
}


class Connection(asyncio.Protocol):
    """One client connection (loop thread)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.state = _START
        self.channels: dict[int, Channel] = {}
        self.frame_max = server.settings.frame_max
        self.channel_max = server.settings.channel_max
        self.heartbeat = 0
        self.vhost: VHost | None = None
        self.username = ""
        self.capabilities: dict[str, Any] = {}
        self.peer = ""
        self.last_read = time.monotonic()
        self.last_write = time.monotonic()
        self.paused = False
        self.busy = False
        self.closed: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._out: list[bytes] = []
        """Frames written in this loop iteration, sent together by :meth:`flush`."""
        self._flush_due = False
        self._header: tuple[bytes, commands.Basic.Properties] | None = None
        """The property bytes of the last content header pamqp read, and what it read."""
        self.facts: tuple[commands.Basic.Properties | None, dict[str, str]] = (None, {})
        """The last properties object published and its ``publish_meta``."""
        self._properties: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
        """Marshalled properties of AMQP-published messages, by their type and meta."""
        self.confirms_due: list[Channel] = []
        """Channels with publisher acks due (sent before the next frame, ``multiple`` folded)."""

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept (or refuse, past ``max_connections``) a new client."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.closed = asyncio.get_running_loop().create_future()
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        server = self.server
        limit = server.settings.max_connections
        if server.closing or (limit and len(server.connections) >= limit):
            transport.close()
            return
        server.connections.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(server.settings.connect_timeout, self._handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket closed: requeue what was in flight, drop exclusive queues."""
        self.state = _CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for channel in list(self.channels.values()):
            channel.release()
        self.channels.clear()
        self.server.connection_gone(self)
        self._writable.set()
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        """The socket's send buffer is full: deliveries wait."""
        self._writable.clear()

    def resume_writing(self) -> None:
        """The send buffer drained."""
        self._writable.set()
        for channel in self.channels.values():
            channel.wake_queues()

    @property
    def writable(self) -> bool:
        """Whether deliveries may be written now."""
        return self._writable.is_set()

    def data_received(self, data: bytes) -> None:
        """Cut frames out of the stream and handle each."""
        if self.state == _CLOSED:
            return
        self.last_read = time.monotonic()
        self.buffer += data
        self._process()
        if self._flush_due:  # what this read's frames answered goes out now, in one write
            self.write_out()

    def _process(self) -> None:
        buf = self.buffer
        pos = 0
        view = memoryview(buf)
        try:
            while not self.busy and self.state != _CLOSED:
                if self.state == _START:
                    if len(buf) < 8:
                        if buf and not PROTOCOL_HEADER.startswith(bytes(buf[: len(buf)])):
                            self._bad_header()
                        return
                    if bytes(buf[:8]) != PROTOCOL_HEADER:
                        self._bad_header()
                        return
                    pos = 8
                    self._start()
                    continue
                if len(buf) - pos < 7:
                    return
                kind, channel, size = _HEADER.unpack_from(buf, pos)
                if size > self.frame_max - 8 and self.state >= _OPEN:
                    raise AMQPError(FRAME_ERROR, f"frame of {size} bytes exceeds frame-max", True)
                end = pos + size + 7
                if len(buf) <= end:
                    return
                if buf[end] != FRAME_END:
                    raise AMQPError(FRAME_ERROR, "frame does not end with 0xCE", True)
                payload = view[pos + 7 : end].tobytes()
                start, pos = pos, end + 1
                value: Any = None
                try:
                    if self.state == _OPEN_DONE:  # the hot frames, without pamqp's dispatch
                        if kind == 3:
                            value = pbody.ContentBody(payload)
                        elif kind == 1:
                            value = read_publish(payload) or read_ack(payload)
                        elif kind == 2:
                            value = read_header(payload) or self._same_header(payload)
                    if value is None:
                        _, _, value = frame.unmarshal(view[start:pos].tobytes())
                        if kind == 2:
                            self._header = (payload[12:], value.properties)
                except (
                    exceptions.UnmarshalingException,
                    ValueError,
                    struct.error,
                    KeyError,
                    UnicodeDecodeError,
                    TypeError,
                    IndexError,
                    OverflowError,
                ) as exc:
                    code = FRAME_ERROR if kind not in (1, 2, 3, 8) else SYNTAX_ERROR
                    raise AMQPError(code, f"malformed frame: {exc}", True) from None
                self._frame(channel, value)
        except AMQPError as exc:
            self.close_with(exc.code, exc.text)
        except Exception as exc:  # a defect: close this connection, keep the server up
            log.exception("amqp: connection %s failed", self.peer)
            self.close_with(541, f"INTERNAL_ERROR - {type(exc).__name__}")
        finally:
            view.release()
            if pos:
                del buf[:pos]

    def _same_header(self, payload: bytes) -> pheader.ContentHeader | None:
        """A content header with the last one's properties (one shared, read-only object).

        None when the properties differ: pamqp reads them.
        """
        last = self._header
        if last is None or len(payload) < 14 or payload[12:] != last[0]:
            return None
        head = pheader.ContentHeader.__new__(pheader.ContentHeader)
        head.class_id, head.weight, head.body_size = _HEADER_START.unpack_from(payload)
        head.properties = last[1]
        return head

    def _bad_header(self) -> None:
        self.write_raw(PROTOCOL_HEADER)
        self.state = _CLOSED
        if self.transport is not None:
            self.flush()
            self.transport.close()

    # -- writing -----------------------------------------------------------------------------

    def write_raw(self, data: bytes) -> None:
        """Queue bytes to write; what one loop iteration wrote goes out in one ``write``."""
        self._out.append(data)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.write_out)

    def confirm_soon(self) -> None:
        """Have the publisher acks due written once the callbacks already scheduled ran.

        Those include the delivery tasks of the queues the acknowledged publishes woke: as
        from RabbitMQ, a consumer on this connection gets a message before its publisher's
        ack (so a client that awaits the ack, then the delivery, never sees only the ack).
        """
        asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the confirms due and the queued frames (nothing once the transport closes)."""
        if self.confirms_due:
            self.send_confirms()
        self.write_out()

    def write_out(self) -> None:
        """Write the queued frames (the confirms due stay due)."""
        self._flush_due = False
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self.last_write = time.monotonic()

    def send(self, channel: int, value: Any) -> None:
        """Marshal and write one frame (after the publisher acks that are due)."""
        if self.confirms_due:
            self.send_confirms()
        self.write_raw(frame.marshal(value, channel))

    def content_of(self, message: Message) -> tuple[bytes, bytes]:
        """The marshalled properties and the body AMQP consumers receive ``message`` with.

        The properties of a plain message published over AMQP depend on its type and meta
        alone: those are marshalled once per connection (a few hundred kept).
        """
        meta = message.meta
        if (
            message.__class__ is Message
            and message.data.__class__ is bytes
            and K_EXCHANGE in meta
            and K_IN_PROCESS not in meta
        ):
            key = (message.type, tuple(meta.items()))
            cache = self._properties
            raw = cache.get(key)
            if raw is None:
                raw = properties_of(message, self.server.broker.clock.now())[0].marshal()
                if len(cache) >= PROPERTIES_KEPT:
                    cache.clear()
                cache[key] = raw
            return raw, message.data
        props, body = properties_of(message, self.server.broker.clock.now())
        return props.marshal(), body

    def send_confirms(self) -> None:
        """Write the publisher acks due: a ``basic.ack`` per channel, ``multiple`` for several."""
        due, self.confirms_due = self.confirms_due, []
        for channel in due:
            last, count = channel.ack_due, channel.acks_due
            channel.ack_due = channel.acks_due = 0
            if count:
                self.write_raw(frame.marshal(commands.Basic.Ack(last, count > 1), channel.number))

    def send_content(
        self, channel: int, method: Frame, props: commands.Basic.Properties, body: bytes
    ) -> None:
        """Write a method with content (header and body frames, split at frame-max)."""
        self.write_raw(
            frame.marshal(method, channel)
            + content_frames(channel, props.marshal(), body, self.frame_max)
        )

    # -- closing -----------------------------------------------------------------------------

    def close_with(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Start a server-side connection close (connection.close; close-ok ends it)."""
        if self.state in (_CLOSING, _CLOSED):
            return
        if self.state == _START:
            self._bad_header()
            return
        self.send(0, commands.Connection.Close(code, text[:255], class_id, method_id))
        self.state = _CLOSING
        for channel in list(self.channels.values()):
            channel.release()
        self.channels.clear()
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(_CLOSE_OK_WAIT, self.abort)

    def _abort(self) -> None:
        """Close the socket once what was written is sent."""
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        """Close the socket now, dropping what is not sent (a client that does not read)."""
        self.state = _CLOSED
        self._out.clear()
        if self.transport is not None:
            self.transport.abort()

    def shut_down(self) -> asyncio.Future[None] | None:
        """The broker is closing: connection.close 320 CONNECTION_FORCED."""
        if self.state == _CLOSED:
            return None
        if self.state < _OPEN_DONE:
            self._abort()
        else:
            self.close_with(CONNECTION_FORCED, "CONNECTION_FORCED - broker shutdown")
        return self.closed

    def set_blocked(self, blocked: bool) -> None:
        """connection.blocked/unblocked, to a client that announced the capability."""
        if self.state != _OPEN_DONE or not self.capabilities.get("connection.blocked"):
            return
        if blocked:
            self.send(0, commands.Connection.Blocked("low on memory"))
        else:
            self.send(0, commands.Connection.Unblocked())

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.state < _OPEN_DONE:
            self._abort()

    # -- heartbeats --------------------------------------------------------------------------

    def _beat(self) -> None:
        self._timer = None
        if self.state not in (_OPEN_DONE,) or self.heartbeat <= 0:
            return
        now = time.monotonic()
        if now - self.last_read > 2 * self.heartbeat:
            log.info("amqp: %s missed two heartbeats: closed", self.peer)
            self.abort()
            return
        if now - self.last_write >= self.heartbeat / 2:
            self.send(0, heartbeat.Heartbeat())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.heartbeat / 2, self._beat)

    # -- frames ------------------------------------------------------------------------------

    def _start(self) -> None:
        self.state = _START_OK
        self.send(
            0,
            commands.Connection.Start(
                server_properties=SERVER_PROPERTIES, mechanisms="PLAIN AMQPLAIN", locales="en_US"
            ),
        )

    def _frame(self, channel_id: int, value: Any) -> None:
        if isinstance(value, heartbeat.Heartbeat):
            if channel_id != 0:
                raise AMQPError(FRAME_ERROR, "heartbeat on a channel other than 0", True)
            return
        state = self.state
        if state == _CLOSING:
            if isinstance(value, commands.Connection.CloseOk):
                self.state = _CLOSED
                self._abort()
            elif isinstance(value, commands.Connection.Close):
                self.send(0, commands.Connection.CloseOk())
                self.state = _CLOSED
                self._abort()
            return
        if isinstance(value, header.ProtocolHeader):
            raise AMQPError(UNEXPECTED_FRAME, "protocol header after the handshake", True)
        if channel_id == 0:
            if not isinstance(value, Frame) or not value.name.startswith("Connection."):
                raise AMQPError(
                    COMMAND_INVALID if isinstance(value, Frame) else UNEXPECTED_FRAME,
                    f"{method_name(value)} on channel 0",
                    True,
                )
            self._connection_method(value)
            return
        if state != _OPEN_DONE:
            raise AMQPError(UNEXPECTED_FRAME, f"{method_name(value)} before connection.open", True)
        channel = self.channels.get(channel_id)
        if channel is None:
            if isinstance(value, commands.Channel.Open):
                if len(self.channels) >= self.channel_max:  # RabbitMQ counts, not numbers
                    raise AMQPError(
                        NOT_ALLOWED,
                        f"number of channels opened ({len(self.channels)}) has reached the "
                        f"negotiated channel_max ({self.channel_max})",
                        True,
                    )
                self.channels[channel_id] = Channel(self, channel_id)
                self.send(channel_id, commands.Channel.OpenOk())
                return
            if isinstance(value, commands.Channel.CloseOk):
                return
            raise AMQPError(
                CHANNEL_ERROR, f"{method_name(value)} on unopened channel {channel_id}", True
            )
        channel.handle(value)

    def _connection_method(self, method: Frame) -> None:
        state = self.state
        if isinstance(method, commands.Connection.StartOk) and state == _START_OK:
            self._start_ok(method)
        elif isinstance(method, commands.Connection.TuneOk) and state == _TUNE_OK:
            self._tune_ok(method)
        elif isinstance(method, commands.Connection.Open) and state == _OPEN:
            self._open(method)
        elif isinstance(method, commands.Connection.Close):
            self.send(0, commands.Connection.CloseOk())
            for channel in list(self.channels.values()):
                channel.release()
            self.channels.clear()
            self.state = _CLOSED
            self._abort()
        elif isinstance(method, commands.Connection.CloseOk):
            self._abort()
        elif isinstance(method, commands.Connection.Blocked | commands.Connection.Unblocked):
            return
        elif isinstance(method, commands.Connection.UpdateSecret) and state == _OPEN_DONE:
            secret = method.new_secret
            raw = secret.encode("latin-1") if isinstance(secret, str) else bytes(secret or b"")
            self.busy = True
            self.server.spawn(self._update_secret(raw))
        else:
            raise AMQPError(COMMAND_INVALID, f"unexpected {method.name}", True)

    def _start_ok(self, method: commands.Connection.StartOk) -> None:
        props = method.client_properties or {}
        caps = props.get("capabilities")
        self.capabilities = dict(caps) if isinstance(caps, dict) else {}
        mechanism = method.mechanism
        response = method.response or ""
        raw = response.encode("latin-1") if isinstance(response, str) else bytes(response)
        username: str | None = None
        password: bytes | None = None
        if mechanism == "PLAIN":
            parts = raw.split(b"\x00")
            if len(parts) == 3:
                username, password = parts[1].decode("utf-8", "replace"), parts[2]
        elif mechanism == "AMQPLAIN":
            try:
                _, table = decode.field_table(struct.pack(">I", len(raw)) + raw)
                login, secret = table.get("LOGIN"), table.get("PASSWORD")
                username = login.decode() if isinstance(login, bytes) else str(login)
                password = secret if isinstance(secret, bytes) else str(secret).encode()
            except Exception:
                username = None
        else:
            self.close_with(
                ACCESS_REFUSED,
                f"ACCESS_REFUSED - unsupported mechanism {mechanism!r}",
            )
            return
        if username is None:
            self.close_with(ACCESS_REFUSED, "ACCESS_REFUSED - malformed login response")
            return
        self.busy = True
        self.username = username
        self.server.spawn(self._authenticate(username, password or b"", mechanism))

    async def _authenticate(self, username: str, password: bytes, mechanism: str) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            server.executor,
            server.hooks.authenticate,
            server.broker,
            "amqp",
            self.peer,
            username,
            password,
            "",
            None,
            {},
        )
        self.busy = False
        if self.state == _CLOSED:
            return
        if result is False or result is None:
            self.close_with(
                ACCESS_REFUSED,
                f"ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}."
                " For details see the broker logfile.",
            )
            return
        self.state = _TUNE_OK
        cfg = server.settings
        self.send(
            0,
            commands.Connection.Tune(
                channel_max=cfg.channel_max, frame_max=cfg.frame_max, heartbeat=cfg.heartbeat
            ),
        )
        self._process()

    async def _update_secret(self, secret: bytes) -> None:
        """connection.update-secret: the user's new password (token) is checked as a login."""
        server = self.server
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            server.executor,
            server.hooks.authenticate,
            server.broker,
            "amqp",
            self.peer,
            self.username,
            secret,
            "",
            None,
            {},
        )
        self.busy = False
        if self.state != _OPEN_DONE:
            return
        if result is False or result is None:
            self.close_with(ACCESS_REFUSED, "ACCESS_REFUSED - new secret was refused")
            return
        self.send(0, commands.Connection.UpdateSecretOk())
        self._process()

    def _tune_ok(self, method: commands.Connection.TuneOk) -> None:
        cfg = self.server.settings
        if method.frame_max and not 4096 <= method.frame_max <= cfg.frame_max:
            raise AMQPError(
                NOT_ALLOWED if method.frame_max > cfg.frame_max else SYNTAX_ERROR,
                f"frame-max {method.frame_max} is outside 4096..{cfg.frame_max}",
                True,
            )
        if method.channel_max > cfg.channel_max:
            raise AMQPError(
                NOT_ALLOWED, f"channel-max {method.channel_max} exceeds {cfg.channel_max}", True
            )
        self.frame_max = method.frame_max or cfg.frame_max
        self.channel_max = method.channel_max or cfg.channel_max
        self.heartbeat = method.heartbeat
        self.state = _OPEN

    def _open(self, method: commands.Connection.Open) -> None:
        vhost = self.server.vhosts.get(method.virtual_host)
        if vhost is None:
            self.close_with(NOT_ALLOWED, f"NOT_ALLOWED - vhost {method.virtual_host} not found")
            return
        permissions = self.server.permissions
        if permissions is not None and not permissions.may_open(self.username, vhost.name):
            self.close_with(
                NOT_ALLOWED,
                f"NOT_ALLOWED - access to vhost '{vhost.name}' refused for user '{self.username}'",
            )
            return
        self.vhost = vhost
        self.state = _OPEN_DONE
        self.send(0, commands.Connection.OpenOk())
        if self.server.blocked:
            self.set_blocked(True)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.heartbeat > 0:
            self.last_read = time.monotonic()
            self._timer = asyncio.get_running_loop().call_later(self.heartbeat / 2, self._beat)
