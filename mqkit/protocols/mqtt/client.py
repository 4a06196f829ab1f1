"""A small asyncio MQTT client on mqkit's codec (for load tests, benchmarks and tools).

It speaks 3.1.1 and 5.0, QoS 0/1/2 in both directions, and keeps at most ``max_inflight``
of its own QoS 1/2 publishes unacknowledged. It does not reconnect. Real applications should
prefer a full client (paho-mqtt, aiomqtt); this one exists so that load tests and benchmarks
run the same lean client against mqkit and against other brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

from mqkit.protocols.mqtt import codec
from mqkit.protocols.mqtt.codec import (
    NO_PROPERTIES,
    Connect,
    PacketReader,
    Properties,
    Publish,
    Subscribe,
    SubscriptionRequest,
    Unsubscribe,
    Will,
)

__all__ = ["AsyncClient", "ConnectionRefused"]


class ConnectionRefused(Exception):
    """The server answered CONNECT with a failure; ``reason_code`` says which."""

    def __init__(self, reason_code: int) -> None:
        super().__init__(f"connection refused: reason code 0x{reason_code:02x}")
        self.reason_code = reason_code
        """The CONNACK's return or reason code."""


class AsyncClient:
    """An MQTT client: ``await AsyncClient.connect(host, port, client_id)``."""

    def __init__(self, version: int = 5, max_inflight: int = 64) -> None:
        self.version = version
        """Protocol level: 4 (3.1.1) or 5."""
        self.messages: asyncio.Queue[Publish] = asyncio.Queue()
        """Received application messages."""
        self.connack: codec.ConnAck | None = None
        """The server's CONNACK."""
        self.disconnect_packet: codec.Disconnect | None = None
        """A DISCONNECT the server sent, if any."""
        self.closed = asyncio.Event()
        """Set when the connection is gone."""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[codec.Packet]] = {}
        self._slots = asyncio.Semaphore(max_inflight)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        client_id: str = "",
        *,
        version: int = 5,
        clean_start: bool = True,
        keep_alive: int = 60,
        username: str | None = None,
        password: bytes | None = None,
        will: Will | None = None,
        properties: Properties = NO_PROPERTIES,
        tls: ssl.SSLContext | None = None,
        max_inflight: int = 64,
    ) -> AsyncClient:
        """Open a connection and complete the CONNECT handshake."""
        self = cls(version, max_inflight)
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        self._reader, self._writer = reader, writer
        packet = Connect(
            client_id=client_id,
            protocol_level=version,
            clean_start=clean_start,
            keep_alive=keep_alive,
            username=username,
            password=password,
            will=will,
            properties=properties if version >= 5 else NO_PROPERTIES,
        )
        writer.write(packet.encode())
        framer = PacketReader()
        first, body = await self._read_frame(framer)
        ack = codec.decode(first, body, version)
        if not isinstance(ack, codec.ConnAck):
            writer.close()
            raise ConnectionRefused(0x82)
        self.connack = ack
        if ack.reason_code:
            writer.close()
            await writer.wait_closed()
            raise ConnectionRefused(ack.reason_code)
        self._task = asyncio.get_running_loop().create_task(self._read_loop(framer))
        return self

    async def _read_frame(self, framer: PacketReader) -> tuple[int, bytes]:
        assert self._reader is not None
        while True:
            frame = framer.next_frame()
            if frame is not None:
                return frame
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("connection closed")
            framer.feed(data)

    async def _read_loop(self, framer: PacketReader) -> None:
        try:
            while True:
                first, body = await self._read_frame(framer)
                self._handle(codec.decode(first, body, self.version))
        except (ConnectionError, OSError, codec.MalformedPacket):
            pass
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))
            self._waiting.clear()

    def _handle(self, packet: codec.Packet) -> None:
        if isinstance(packet, Publish):
            if packet.qos == 1:
                self._write(codec.PubAck(packet_id=packet.packet_id).encode(self.version))
            elif packet.qos == 2:
                self._write(codec.PubRec(packet_id=packet.packet_id).encode(self.version))
            self.messages.put_nowait(packet)
        elif isinstance(packet, codec.PubRel):
            self._write(codec.PubComp(packet_id=packet.packet_id).encode(self.version))
        elif isinstance(packet, codec.PubRec):
            self._write(codec.PubRel(packet_id=packet.packet_id).encode(self.version))
        elif isinstance(packet, codec.Disconnect):
            self.disconnect_packet = packet
        elif isinstance(packet, codec.PubAck | codec.PubComp | codec.SubAck | codec.UnsubAck):
            fut = self._waiting.pop(packet.packet_id, None)
            if fut is not None and not fut.done():
                fut.set_result(packet)

    def _write(self, data: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._waiting:
                return self._next_id

    async def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties = NO_PROPERTIES,
        wait: bool = True,
    ) -> codec.Packet | None:
        """Publish; for QoS 1/2 wait for PUBACK/PUBCOMP unless ``wait`` is False."""
        if qos == 0:
            self._write(Publish(topic=topic, payload=payload, retain=retain).encode(self.version))
            if self._writer is not None:
                await self._writer.drain()
            return None
        await self._slots.acquire()
        pid = self._packet_id()
        fut: asyncio.Future[codec.Packet] = asyncio.get_running_loop().create_future()
        self._waiting[pid] = fut
        fut.add_done_callback(self._settled)
        self._write(
            Publish(
                topic=topic,
                payload=payload,
                qos=qos,
                retain=retain,
                packet_id=pid,
                properties=properties,
            ).encode(self.version)
        )
        if self._writer is not None:
            await self._writer.drain()
        if not wait:
            return None
        return await fut

    def _settled(self, fut: asyncio.Future[codec.Packet]) -> None:
        """A QoS 1/2 publish is settled: free its slot.

        A lost connection is not reported as an error nobody saw: ``publish(wait=False)``
        leaves nobody awaiting the future.
        """
        self._slots.release()
        if not fut.cancelled():
            fut.exception()  # marks it retrieved; whoever awaits it still gets it

    async def subscribe(
        self, *filters: str | SubscriptionRequest, properties: Properties = NO_PROPERTIES
    ) -> tuple[int, ...]:
        """Subscribe (a plain string is QoS 0... give a ``SubscriptionRequest`` for more)."""
        requests = tuple(
            f if isinstance(f, SubscriptionRequest) else SubscriptionRequest(topic_filter=f)
            for f in filters
        )
        pid = self._packet_id()
        fut: asyncio.Future[codec.Packet] = asyncio.get_running_loop().create_future()
        self._waiting[pid] = fut
        self._write(
            Subscribe(packet_id=pid, subscriptions=requests, properties=properties).encode(
                self.version
            )
        )
        ack = await fut
        assert isinstance(ack, codec.SubAck)
        return ack.reason_codes

    async def unsubscribe(self, *filters: str) -> Sequence[int]:
        """Unsubscribe; return the UNSUBACK's reason codes (empty in 3.1.1)."""
        pid = self._packet_id()
        fut: asyncio.Future[codec.Packet] = asyncio.get_running_loop().create_future()
        self._waiting[pid] = fut
        self._write(Unsubscribe(packet_id=pid, topic_filters=tuple(filters)).encode(self.version))
        ack = await fut
        assert isinstance(ack, codec.UnsubAck)
        return ack.reason_codes

    async def disconnect(self, reason_code: int = 0) -> None:
        """Send DISCONNECT and close."""
        self._write(codec.Disconnect(reason_code=reason_code).encode(self.version))
        await self.close()

    async def close(self) -> None:
        """Close the connection without DISCONNECT (the server publishes the will)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        if self._task is not None:
            await self._task
