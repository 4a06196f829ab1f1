"""Hypothesis against a live gateway: whatever bytes a client sends, only its connection suffers.

The bytes go over a real socket to a running server - raw garbage, or valid frames with some
bytes changed and cut short - either as a client's first bytes or after a good handshake (and
channel.open). The client then half-closes its socket, so the server sees the end of the
stream and must close the connection (the test waits for that, never for a fixed time); what
the server sent before closing must be well-framed AMQP (pamqp reads all of it). Meanwhile a
consumer connected before all of it keeps receiving, and new clients still connect.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body, commands, frame, header, heartbeat

import mqkit

from .conftest import AMQPServer, start_amqp
from .helpers import HEADER, TIMEOUT, Raw

SAMPLES = [
    frame.marshal(commands.Queue.Declare(queue="fuzz", arguments={"x-max-length": 3}), 1),
    frame.marshal(commands.Exchange.Declare(exchange="fx", exchange_type="topic"), 1),
    frame.marshal(commands.Queue.Bind(queue="fuzz", exchange="fx", routing_key="a.*"), 1),
    frame.marshal(commands.Basic.Publish(exchange="", routing_key="fuzz", mandatory=True), 1)
    + frame.marshal(header.ContentHeader(0, 3, commands.Basic.Properties(priority=1)), 1)
    + frame.marshal(body.ContentBody(b"abc"), 1),
    frame.marshal(commands.Basic.Consume(queue="fuzz"), 1),
    frame.marshal(commands.Basic.Ack(delivery_tag=1, multiple=True), 1),
    frame.marshal(commands.Basic.Qos(prefetch_count=2), 1),
    frame.marshal(commands.Channel.Open(), 2),
    frame.marshal(commands.Channel.Close(200, "bye", 0, 0), 1),
    frame.marshal(commands.Confirm.Select(), 1),
    frame.marshal(commands.Tx.Select(), 1),
    frame.marshal(heartbeat.Heartbeat(), 0),
    frame.marshal(commands.Connection.Close(200, "bye", 0, 0), 0),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Valid frames with a few bytes replaced, cut somewhere, maybe with bytes after them."""
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=3))))
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


def well_framed(data: bytes) -> None:
    """Every byte the server sent belongs to a complete frame (or is the protocol header)."""
    if data.startswith(HEADER):
        data = data[len(HEADER) :]
    while data:
        used, _, _ = frame.unmarshal(data)
        assert used > 0, data
        data = data[used:]


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[AMQPServer, Raw]]:
    """One server for every example, and a consumer connected before any of them."""
    server = start_amqp()
    observer = Raw(server)
    try:
        observer.handshake()
        observer.send_frame(commands.Queue.Declare(queue="observer"), 1)
        observer.expect(commands.Queue.DeclareOk)
        observer.send_frame(
            commands.Queue.Bind(queue="observer", exchange="amq.topic", routing_key="fuzz.#"), 1
        )
        observer.expect(commands.Queue.BindOk)
        observer.send_frame(commands.Basic.Consume(queue="observer", no_ack=True), 1)
        observer.expect(commands.Basic.ConsumeOk)
        yield server, observer
    finally:
        observer.close()
        server.broker.close()


@settings(max_examples=150, deadline=None)
@given(after_handshake=st.booleans(), data=garbage)
def test_any_bytes_end_only_their_own_connection(
    live: tuple[AMQPServer, Raw], after_handshake: bool, data: bytes
) -> None:
    server, observer = live
    n = next(_ids)
    raw = Raw(server)
    try:
        raw.sock.settimeout(TIMEOUT)
        if after_handshake:
            raw.handshake()
        raw.send(data)
        well_framed(raw.buffer + answer_and_close(raw))
    finally:
        raw.close()
        Raw.opened.remove(raw)
    # The consumer, connected all along, still gets what is published for it...
    payload = f"after {n}".encode()
    server.broker.publish("fuzz.observer", mqkit.Message(f"m{n}", payload))
    observer.expect(commands.Basic.Deliver)
    observer.expect(header.ContentHeader)
    assert observer.expect(body.ContentBody).value == payload
    # ...and a new client connects.
    fresh = Raw(server)
    try:
        fresh.handshake()
    finally:
        fresh.close()
        Raw.opened.remove(fresh)
