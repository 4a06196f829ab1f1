"""Close politely (issue 13, point 6).

When the server ends a connection (a DISCONNECT with a reason code, a CONNACK that refuses, or
MQTT 3.1.1's plain close), the client may have sent more than the server read. Closing a socket
with unread input makes the kernel send a TCP reset, and the client may never see why it was
disconnected. The server shuts its write side, reads and discards the input for a bounded time,
then closes: the client reads every packet, then a clean end of stream.

Each case pipelines the offending packet and more input than one read takes (asyncio reads at
most 256 KiB at a time), so the server decides to close while input is still unread.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable

import pytest

import mqkit
from mqkit.protocols.mqtt import codec
from mqkit.protocols.mqtt.codec import Reason

from .helpers import TIMEOUT, Raw, Srv

PADDING = b"\xc0\x00" * (160 * 1024)  # 320 KiB of PINGREQs, more than one read
CONNECT_V5 = codec.Connect(client_id="pc", protocol_level=5).encode()


def qos2(pid: int, version: int = 5) -> bytes:
    return codec.Publish(topic="t", payload=b"x", qos=2, packet_id=pid).encode(version)


def pipeline(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send ``data`` from a thread (the server stops reading part way)."""

    def send() -> None:
        # The server may close meanwhile: the reader says whether it did so politely.
        with contextlib.suppress(OSError):
            sock.sendall(data)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def read_to_end(c: Raw) -> list[codec.Packet]:
    """Every packet until the server's end of stream; a reset fails the test."""
    packets: list[codec.Packet] = []
    while True:
        frame = c.reader.next_frame()
        if frame is not None:
            packets.append(codec.decode(*frame, c.version))
            continue
        try:
            data = c.sock.recv(65536)
        except ConnectionResetError:
            pytest.fail(f"connection reset after {packets!r}: the server closed impolitely")
        if not data:
            return packets
        c.reader.feed(data)


# (name, config, bytes sent after a successful CONNECT, the packets expected back)
AFTER_CONNECT: list[tuple[str, dict[str, object], int, bytes, list[codec.Packet]]] = [
    (
        "receive-maximum-0x93",
        {"max_inflight": 2},
        5,
        qos2(1) + qos2(2) + qos2(3),
        [
            codec.PubRec(packet_id=1),
            codec.PubRec(packet_id=2),
            codec.Disconnect(reason_code=Reason.RECEIVE_MAXIMUM_EXCEEDED),
        ],
    ),
    (
        "malformed-0x81",
        {},
        5,
        b"\xc0\x01\x00",
        [codec.Disconnect(reason_code=Reason.MALFORMED_PACKET)],
    ),
    (
        "second-connect-0x82",
        {},
        5,
        CONNECT_V5,
        [codec.Disconnect(reason_code=Reason.PROTOCOL_ERROR)],
    ),
    (
        "topic-alias-0x94",
        {},
        5,
        codec.Publish(topic="t", payload=b"x", properties=codec.Properties(topic_alias=0)).encode(),
        [codec.Disconnect(reason_code=Reason.TOPIC_ALIAS_INVALID)],
    ),
    (
        "packet-too-large-0x95",
        {"max_packet_size": 1024},
        5,
        codec.Publish(topic="t", payload=b"x" * 4096).encode(),
        [codec.Disconnect(reason_code=Reason.PACKET_TOO_LARGE)],
    ),
    ("v311-malformed", {}, 4, b"\xc0\x01\x00", []),
    (
        "v311-qos2-flood",
        {"max_inflight": 1},
        4,
        qos2(1, 4) + qos2(2, 4),
        [codec.PubRec(packet_id=1)],
    ),
]


@pytest.mark.parametrize(
    ("config", "version", "offence", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in AFTER_CONNECT],
)
def test_client_reads_the_disconnect_then_a_clean_end(
    server_factory: Callable[..., Srv],
    config: dict[str, object],
    version: int,
    offence: bytes,
    expected: list[codec.Packet],
) -> None:
    srv = server_factory(**config)
    with Raw(srv, version) as c:
        assert c.connect("pc").reason_code == 0
        sender = pipeline(c.sock, offence + PADDING)
        got = read_to_end(c)
        sender.join(TIMEOUT)
        assert got == expected  # MQTT 3.1.1 has no DISCONNECT: just the end of the stream


@pytest.mark.parametrize(
    ("version", "connect", "answer"),
    [
        pytest.param(
            5,
            codec.Connect(client_id="x", protocol_level=6).encode(),
            b"\x20\x03\x00\x84\x00",
            id="unsupported-level-v5",
        ),
        pytest.param(
            4,
            codec.Connect(client_id="x", protocol_level=3).encode(),
            b"\x20\x02\x00\x01",
            id="unsupported-level-v3",
        ),
        pytest.param(
            4,
            codec.Connect(client_id="", protocol_level=4, clean_start=False).encode(),
            b"\x20\x02\x00\x02",
            id="empty-id-v311",
        ),
        pytest.param(
            5,
            codec.Connect(client_id="x" * 2048, protocol_level=5).encode(),
            b"\x20\x03\x00\x95\x00",
            id="connect-too-large",
        ),
    ],
)
def test_refused_connect_reads_the_connack_then_a_clean_end(
    server_factory: Callable[..., Srv], version: int, connect: bytes, answer: bytes
) -> None:
    srv = server_factory(max_packet_size=1024)
    with Raw(srv, version) as c:
        sender = pipeline(c.sock, connect + PADDING)
        got = read_to_end(c)
        sender.join(TIMEOUT)
    assert len(got) == 1
    assert isinstance(got[0], codec.ConnAck)
    assert codec.ConnAck.encode(got[0], version) == answer


def blocked_connection(
    srv: Srv, client_id: str, version: int = 5
) -> tuple[Raw, mqkit.Subscription, threading.Thread]:
    """A client whose QoS 1 publish waits for an in-process ``BLOCK_WITH_TIMEOUT`` subscriber,
    with more than the server buffers (1 MiB) pipelined behind it: the server stops reading,
    and input stays unread in the socket."""
    opts = mqkit.SubOptions(
        buffer_size=1, policy=mqkit.Backpressure.BLOCK_WITH_TIMEOUT, block_timeout=TIMEOUT
    )
    full = srv.broker.subscribe("blk", opts)
    srv.broker.publish("blk", mqkit.Message("filler"))
    c = Raw(srv, version)
    assert c.connect(client_id).reason_code == 0
    blocked = codec.Publish(topic="blk", payload=b"x", qos=1, packet_id=1).encode(version)
    sender = pipeline(c.sock, blocked + PADDING * 4)  # 1.25 MiB
    return c, full, sender


def test_server_shutdown_0x8b_with_unread_input(server_factory: Callable[..., Srv]) -> None:
    srv = server_factory()
    c, full, sender = blocked_connection(srv, "busy")
    with c:
        closer = threading.Thread(target=srv.broker.close)
        closer.start()
        assert c.packet() == codec.Disconnect(reason_code=Reason.SERVER_SHUTTING_DOWN)
        with contextlib.suppress(mqkit.MQError, TimeoutError):
            full.get(timeout=TIMEOUT)  # let the blocked publish end
        assert read_to_end(c) == []
        sender.join(TIMEOUT)
        closer.join(TIMEOUT)
        assert not closer.is_alive()


def test_session_taken_over_0x8e_with_unread_input(srv: Srv) -> None:
    old, full, sender = blocked_connection(srv, "same")
    with old, Raw(srv) as new:
        assert new.connect("same").reason_code == 0
        assert old.packet() == codec.Disconnect(reason_code=Reason.SESSION_TAKEN_OVER)
        assert read_to_end(old) == []
        sender.join(TIMEOUT)
        assert full.get(timeout=TIMEOUT).id == "filler"


def test_drain_is_bounded_for_a_client_that_never_stops(
    server_factory: Callable[..., Srv],
) -> None:
    """A client that keeps sending after the DISCONNECT is cut off (a reset is then fair)."""
    srv = server_factory(max_inflight=1)
    with Raw(srv) as c:
        assert c.connect("endless").reason_code == 0
        stop = threading.Event()

        def stream() -> None:
            try:
                c.sock.sendall(qos2(1) + qos2(2))
                while not stop.is_set():
                    c.sock.sendall(PADDING)
            except OSError:
                pass

        sender = threading.Thread(target=stream, daemon=True)
        sender.start()
        got: list[codec.Packet] = []
        try:
            while True:
                got.append(c.packet())
        except ConnectionError:
            pass  # the server ended it: by EOF or by a reset once the drain's bound ran out
        finally:
            stop.set()
        sender.join(TIMEOUT)
        assert got[-1] == codec.Disconnect(reason_code=Reason.RECEIVE_MAXIMUM_EXCEEDED)


def test_shutdown_after_the_client_reset_its_connection(
    server_factory: Callable[..., Srv], caplog: pytest.LogCaptureFixture
) -> None:
    """Shutting the write side of a socket the client has reset fails (ENOTCONN): the server
    then just closes it, and the rest of its shutdown still happens (sessions ended)."""
    caplog.set_level(logging.ERROR, logger="mqkit.mqtt")
    srv = server_factory()
    # MQTT 3.1.1 (no DISCONNECT is written first), and the server is not reading: it cannot
    # have noticed the reset when it shuts down.
    c, full, sender = blocked_connection(srv, "reset", version=4)
    sender.join(TIMEOUT)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    server = srv.plugin.server
    closer = threading.Thread(target=srv.broker.close)
    closer.start()
    with contextlib.suppress(mqkit.MQError, TimeoutError):
        full.get(timeout=TIMEOUT)  # let the blocked publish end
    closer.join(TIMEOUT)
    assert not closer.is_alive()
    assert not [r.getMessage() for r in caplog.records if r.name == "mqkit.mqtt"]
    assert not server.sessions and not server.connections and not server.draining
