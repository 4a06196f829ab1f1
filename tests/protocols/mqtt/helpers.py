"""Helpers for the MQTT gateway tests: a server factory, a raw socket client, a paho wrapper."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from typing import Any

import attrs
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties as PahoProperties

import mqkit
from mqkit.protocols.mqtt import MQTTSettings, codec

TIMEOUT = 10.0
"""Seconds any single wait in these tests may take before it fails."""


@attrs.define
class Srv:
    """A running broker with its MQTT gateway."""

    broker: mqkit.Broker
    host: str
    port: int

    @property
    def plugin(self) -> Any:
        return self.broker.get_plugin("mqtt")


MQTT_FIELDS = frozenset(f.name for f in attrs.fields(MQTTSettings))


def make_server(*, clock: mqkit.Clock | None = None, **config: Any) -> Srv:
    """A broker with its gateway started on free ports; ``config`` keys naming an ``[mqtt]``
    field (``max_inflight=2``) go to that section, the others to ``Config``."""
    mqtt = {"tls_port": 0, **{k: v for k, v in config.items() if k in MQTT_FIELDS}}
    rest = {k: v for k, v in config.items() if k not in MQTT_FIELDS}
    cfg = mqkit.Config(enable_mqtt=True, mqtt_port=0, settings={"mqtt": mqtt}, **rest)
    broker = mqkit.Broker(cfg, clock=clock)
    try:
        host, port = broker.start_mqtt_server()
    except BaseException:
        broker.close()
        raise
    return Srv(broker, host, port)


class Raw:
    """A blocking socket client that sends bytes and reads packets (for protocol tests)."""

    def __init__(self, srv: Srv | tuple[str, int], version: int = 5) -> None:
        host, port = (srv.host, srv.port) if isinstance(srv, Srv) else srv
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.version = version
        self.reader = codec.PacketReader()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self) -> tuple[int, bytes]:
        while True:
            frame = self.reader.next_frame()
            if frame is not None:
                return frame
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.reader.feed(data)

    def packet(self) -> codec.Packet:
        first, body = self.frame()
        return codec.decode(first, body, self.version)

    def raw_packet(self) -> bytes:
        """The next packet's exact bytes (fixed header included)."""
        first, body = self.frame()
        return bytes((first,)) + codec.encode_varint(len(body)) + body

    def closed(self) -> bool:
        """Wait for the server to close the connection; True if it did with nothing more sent."""
        if self.reader.buffered():
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        return data == b""

    def connect(self, client_id: str = "raw", **kw: Any) -> codec.ConnAck:
        self.send(codec.Connect(client_id=client_id, protocol_level=self.version, **kw).encode())
        ack = self.packet()
        assert isinstance(ack, codec.ConnAck), ack
        return ack

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Paho:
    """A paho-mqtt 2.x client on its own network thread, with received messages in a queue.

    ``srv`` is a server of :func:`make_server` (or anything with ``host`` and ``port``) or the
    ``(host, port)`` of a broker process.
    """

    def __init__(
        self,
        srv: Srv | tuple[str, int],
        client_id: str = "",
        *,
        version: int = 5,
        clean: bool = True,
        connect: bool = True,
        manual_ack: bool = False,
        reconnect: bool = True,
        **connect_kw: Any,
    ) -> None:
        protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
        kwargs: dict[str, Any] = {
            "client_id": client_id,
            "protocol": protocol,
            "manual_ack": manual_ack,
            "reconnect_on_failure": reconnect,
        }
        if version != 5:
            kwargs["clean_session"] = clean
        self.client = paho.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.srv = srv
        self.version = version
        self.clean = clean
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        """Set while connected (a CONNACK with success, no disconnect since)."""
        self.acked = threading.Event()
        """Set by the last CONNACK, whatever its reason code."""
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.connack: tuple[Any, Any, Any] | None = None
        self.disconnect_reason: Any = None
        self.disconnect_from_server = False
        self.granted: list[Any] = []
        self.unsubscribed = threading.Event()
        self.unsub_reasons: list[Any] = []
        self.pub_reasons: dict[int, Any] = {}
        """PUBACK/PUBCOMP reason codes (paho's on_publish), by message id."""
        c = self.client
        c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_publish = self._on_publish
        self._started = False
        if connect:
            self.connect(**connect_kw)

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = (flags, reason, props)
        if not reason.is_failure:
            self.disconnected.clear()
            self.connected.set()
        self.acked.set()

    def _on_disconnect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        self.disconnect_reason = reason
        self.disconnect_from_server = flags.is_disconnect_packet_from_server
        self.connected.clear()
        self.disconnected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, granted: Any, _p: Any) -> None:
        self.granted = list(granted)
        self.subscribed.set()

    def _on_unsubscribe(self, _c: Any, _u: Any, _mid: Any, reasons: Any, _p: Any) -> None:
        self.unsub_reasons = list(reasons)
        self.unsubscribed.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self.pub_reasons[mid] = reason

    def connect(
        self, keepalive: int = 60, properties: PahoProperties | None = None, **kw: Any
    ) -> Any:
        args: dict[str, Any] = {"keepalive": keepalive}
        if self.version == 5:
            args["clean_start"] = self.clean
            if properties is not None:
                args["properties"] = properties
        self.connected.clear()
        self.acked.clear()
        host, port = self.srv if isinstance(self.srv, tuple) else (self.srv.host, self.srv.port)
        self.client.connect(host, port, **args, **kw)
        if not self._started:
            self.client.loop_start()
            self._started = True
        assert self.acked.wait(TIMEOUT), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def subscribe(self, topic: str, qos: int = 0, **kw: Any) -> list[Any]:
        self.subscribed.clear()
        if "options" in kw:
            self.client.subscribe(topic, **kw)
        else:
            self.client.subscribe(topic, qos, **kw)
        assert self.subscribed.wait(TIMEOUT), "no SUBACK"
        return self.granted

    def unsubscribe(self, topic: str) -> list[Any]:
        self.unsubscribed.clear()
        self.client.unsubscribe(topic)
        assert self.unsubscribed.wait(TIMEOUT), "no UNSUBACK"
        return self.unsub_reasons

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, **kw: Any) -> Any:
        """Publish; at QoS 1/2 wait for the flow to end and return its reason code."""
        info = self.client.publish(topic, payload, qos, **kw)
        if not qos:
            return None
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()
        return self.pub_reasons.pop(info.mid, None)

    def get(self, timeout: float = TIMEOUT) -> paho.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def drain(self) -> Iterator[paho.MQTTMessage]:
        while True:
            try:
                yield self.messages.get_nowait()
            except queue.Empty:
                return

    def disconnect(self, **kw: Any) -> None:
        if self.connected.is_set():
            self.client.disconnect(**kw)
            self.disconnected.wait(TIMEOUT)
        if self._started:
            self.client.loop_stop()
            self._started = False

    def close(self) -> None:
        self.disconnect()
        # paho closes the socket pair that wakes its loop only in Client.__del__; collected in a
        # cycle with this wrapper, the sockets may be finalised first (a ResourceWarning).
        # reinitialise() is paho's public way to close every socket it holds.
        self.client.reinitialise()
