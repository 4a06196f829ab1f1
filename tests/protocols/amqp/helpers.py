"""Helpers of the AMQP gateway tests: pika connections and a raw pamqp client."""

from __future__ import annotations

import socket
import struct
from typing import Any, ClassVar

import pika
from pamqp import commands, frame
from pika.adapters.blocking_connection import BlockingChannel

from .conftest import AMQPServer

TIMEOUT = 10.0
HEADER = b"AMQP\x00\x00\x09\x01"


def connect(
    server: AMQPServer, user: str = "guest", password: str = "guest", **params: Any
) -> pika.BlockingConnection:
    """A pika blocking connection to ``server`` (timeouts on everything)."""
    parameters = pika.ConnectionParameters(
        host=server.host,
        port=server.port,
        credentials=pika.PlainCredentials(user, password),
        socket_timeout=TIMEOUT,
        blocked_connection_timeout=TIMEOUT,
        stack_timeout=TIMEOUT,
        connection_attempts=1,
        **params,
    )
    return pika.BlockingConnection(parameters)


class Raw:
    """A raw AMQP client on a socket: frames written and read with pamqp.

    Every one made during a test is closed after it (the ``_close_raw_clients`` fixture).
    """

    opened: ClassVar[list[Raw]] = []

    def __init__(self, server: AMQPServer) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
        self.buffer = b""
        Raw.opened.append(self)

    def send(self, data: bytes) -> None:
        """Write bytes."""
        self.sock.sendall(data)

    def send_frame(self, value: Any, channel: int = 0) -> None:
        """Write one frame."""
        self.sock.sendall(frame.marshal(value, channel))

    def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read_frame(self) -> tuple[int, Any] | None:
        """The next frame (channel, value), or None at the end of the stream."""
        if not self._fill(7):
            return None
        if self.buffer.startswith(b"AMQP"):
            if not self._fill(8):
                return None
            value, self.buffer = self.buffer[:8], self.buffer[8:]
            return 0, value
        size = struct.unpack(">I", self.buffer[3:7])[0]
        if not self._fill(size + 8):
            return None
        used, channel, value = frame.unmarshal(self.buffer[: size + 8])
        self.buffer = self.buffer[used:]
        return channel, value

    def expect(self, kind: type[Any]) -> Any:
        """Read frames until one of ``kind`` (heartbeats skipped); fail on another method."""
        while True:
            got = self.read_frame()
            assert got is not None, f"connection closed while waiting for {kind.__name__}"
            value = got[1]
            if isinstance(value, kind):
                return value
            if value.__class__.__name__ == "Heartbeat":
                continue
            raise AssertionError(f"expected {kind.__name__}, got {value!r}")

    def read_all(self) -> list[Any]:
        """Every frame until the server closes the socket."""
        values: list[Any] = []
        while True:
            got = self.read_frame()
            if got is None:
                return values
            values.append(got[1])

    def handshake(self, heartbeat: int = 0, channel: bool = True) -> None:
        """Header, start-ok (PLAIN guest), tune-ok, open; then channel 1 open."""
        self.send(HEADER)
        self.expect(commands.Connection.Start)
        self.send_frame(commands.Connection.StartOk(response="\0guest\0guest"))
        tune = self.expect(commands.Connection.Tune)
        self.send_frame(commands.Connection.TuneOk(tune.channel_max, tune.frame_max, heartbeat))
        self.send_frame(commands.Connection.Open("/"))
        self.expect(commands.Connection.OpenOk)
        if channel:
            self.send_frame(commands.Channel.Open(), 1)
            self.expect(commands.Channel.OpenOk)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def bodies(ch: BlockingChannel, queue: str) -> list[bytes]:
    """Every ready message of ``queue`` (basic.get until get-empty)."""
    out: list[bytes] = []
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)
