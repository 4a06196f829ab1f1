"""Hypothesis against a live gateway: whatever bytes a client sends, only its connection suffers.

test_codec.py fuzzes the codec on its own; here the bytes go over a real socket to a running
server - raw garbage, or a valid packet with some bytes changed and cut short - either as a
client's first bytes or after a good CONNECT. For each example the client then half-closes its
socket, so the server sees the end of the stream and must close the connection (the test waits
for that, never for a fixed time); what the server sent before closing must be well-framed MQTT.
Meanwhile a paho client connected before all of it must keep receiving, and new clients must
still connect.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mqkit
from mqkit.protocols.mqtt import codec

from .helpers import TIMEOUT, Paho, Raw, Srv, make_server

SAMPLES = [
    codec.Connect(client_id="again", protocol_level=5, keep_alive=30).encode(),
    codec.Connect(client_id="again4", protocol_level=4).encode(),
    codec.Publish(topic="fuzz/a", payload=b"payload", qos=1, packet_id=7).encode(),
    codec.Publish(topic="fuzz/b", payload=b"", qos=2, packet_id=8).encode(),
    codec.Subscribe(
        packet_id=3, subscriptions=(codec.SubscriptionRequest(topic_filter="fuzz/#"),)
    ).encode(),
    b"\xa2\x07\x00\x04\x00\x00\x03a/b",  # UNSUBSCRIBE (v5 body)
    b"\x40\x02\x00\x01",  # PUBACK
    b"\x62\x02\x00\x01",  # PUBREL
    b"\xc0\x00",  # PINGREQ
    b"\xe0\x00",  # DISCONNECT
    b"\xf0\x00",  # AUTH
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid packet with a few bytes replaced, cut somewhere, maybe with bytes after it."""
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=8))


garbage = st.binary(min_size=1, max_size=300) | mutated()
_ids = itertools.count()


def answer_and_close(raw: Raw) -> bytes:
    """Half-close our side, then read what the server sends until it closes the connection."""
    raw.sock.shutdown(socket.SHUT_WR)
    received = bytearray()
    while True:
        try:
            data = raw.sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
    return bytes(received)


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[Srv, Paho]]:
    """One server for every example, and a paho client connected before any of them."""
    srv = make_server()
    observer = Paho(srv, "observer", version=5)
    try:
        observer.subscribe("fuzz/observer", 1)
        yield srv, observer
    finally:
        observer.close()
        srv.broker.close()


def well_framed(data: bytes) -> None:
    """Every byte the server sent belongs to a complete MQTT packet."""
    reader = codec.PacketReader()
    reader.feed(data)
    while reader.next_frame() is not None:
        pass
    assert reader.buffered() == 0, data


@settings(max_examples=150, deadline=None)
@given(version=st.sampled_from([4, 5]), after_connect=st.booleans(), data=garbage)
def test_any_bytes_end_only_their_own_connection(
    live: tuple[Srv, Paho], version: int, after_connect: bool, data: bytes
) -> None:
    srv, observer = live
    n = next(_ids)
    with Raw(srv, version) as raw:
        raw.sock.settimeout(TIMEOUT)
        if after_connect:
            assert raw.connect(f"fuzz-{n}").reason_code == 0
        raw.send(data)
        well_framed(answer_and_close(raw))
    # The observer, connected all along, still gets what is published for it...
    payload = f"after {n}".encode()
    srv.broker.publish("fuzz/observer", mqkit.Message(f"m{n}", payload))
    while observer.get().payload != payload:  # a fuzzed publish may land here first
        pass
    assert observer.connected.is_set()
    # ...and a new client connects.
    with Raw(srv) as fresh:
        assert fresh.connect(f"fresh-{n}").reason_code == 0
