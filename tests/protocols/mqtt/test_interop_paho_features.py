"""paho-mqtt 2.x drives the features the raw-packet tests pin down byte for byte.

Keep-alive (PINGREQ/PINGRESP and the timeout), Receive Maximum both ways and the server's
Maximum Packet Size, the will's delay and DISCONNECT 0x04, QoS 2 queued for an offline session,
message expiry while queued, and reason codes, each seen through a real client's callbacks.
ACLs, the connection limit and client certificates with paho are in ``test_security.py``; a
paho session across a broker restart in ``test_persistence.py``.

AUTH (MQTT 5 enhanced authentication) stays raw-only
(``test_security.py::test_enhanced_authentication_with_auth_packets``): paho-mqtt 2.2 has no
handler for an AUTH packet from the server (it takes one for a protocol error and drops the
connection), so it cannot answer a challenge.
"""

from __future__ import annotations

import queue
import select
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

import mqkit
from mqkit.protocols.mqtt.codec import Reason

from .helpers import TIMEOUT, Paho, Srv

Factory = Callable[..., Paho]
ServerFactory = Callable[..., Srv]
VERSIONS = pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])


def props(packet_type: int, **values: object) -> PahoProperties:
    p = PahoProperties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def nothing_arrives(client: Paho, within: float = 0.5) -> None:
    with pytest.raises(queue.Empty):
        client.get(timeout=within)


# -- keep-alive --------------------------------------------------------------------------------


def test_paho_pings_keep_it_connected(srv: Srv, paho_factory: Factory) -> None:
    # paho checks its keep-alive once a second, so its PINGREQ comes 3 to 4 s after the last
    # packet: inside the server's 1.5 x 3 s.
    pongs: dict[int, queue.Queue[str]] = {4: queue.Queue(), 5: queue.Queue()}
    clients = {}
    for version, pong in pongs.items():
        c = paho_factory(srv, f"ping{version}", version=version, connect=False)

        def on_log(_c: Any, _u: Any, _level: int, text: str, pong: queue.Queue[str] = pong) -> None:
            if text.startswith("Received PINGRESP"):
                pong.put(text)

        c.client.on_log = on_log
        c.connect(keepalive=3)
        clients[version] = c
    for _ in range(3):  # three keep-alive periods, each answered
        for pong in pongs.values():
            pong.get(timeout=TIMEOUT)
    for version, c in clients.items():
        assert c.connected.is_set() and not c.disconnected.is_set()
        c.subscribe(f"alive/{version}", 1)
        c.publish(f"alive/{version}", b"still here", 1)
        assert c.get().payload == b"still here"


@VERSIONS
def test_silent_paho_client_is_dropped(srv: Srv, paho_factory: Factory, version: int) -> None:
    c = paho_factory(srv, "quiet", version=version, connect=False)
    c.connect(keepalive=1)
    c.client.loop_stop()  # no network thread: paho sends nothing more (its socket stays open)
    sock = c.client.socket()
    assert sock is not None
    while not c.disconnected.is_set():  # read (never write) until the server lets go
        readable, _, _ = select.select([sock], [], [], TIMEOUT)
        assert readable, "the server kept a silent client"
        c.client.loop_read()
    if version == 5:
        assert c.disconnect_from_server
        assert c.disconnect_reason == Reason.KEEP_ALIVE_TIMEOUT
    else:  # 3.1.1 has no DISCONNECT from the server: the connection is just closed
        assert not c.disconnect_from_server


# -- Receive Maximum and Maximum Packet Size, both ways ----------------------------------------


def test_paho_receive_maximum_bounds_unacked(srv: Srv, paho_factory: Factory) -> None:
    c = paho_factory(
        srv,
        "rm",
        version=5,
        manual_ack=True,
        properties=props(PacketTypes.CONNECT, ReceiveMaximum=2),
    )
    c.subscribe("rm/#", 1)
    for i in range(5):
        srv.broker.publish("rm/x", mqkit.Message(f"m{i}", f"{i}"))
    held = [c.get(), c.get()]
    nothing_arrives(c)  # two unacknowledged: the server sends no third
    got = [m.payload for m in held]
    while len(got) < 5:
        c.client.ack(held.pop(0).mid, 1)  # each PUBACK frees one slot, and only one
        held.append(c.get())
        got.append(held[-1].payload)
        if len(got) < 5:
            nothing_arrives(c, 0.2)
    assert got == [b"0", b"1", b"2", b"3", b"4"]


def test_server_receive_maximum_seen_and_honoured_by_paho(
    server_factory: ServerFactory, paho_factory: Factory
) -> None:
    srv = server_factory(max_inflight=2)
    inproc = srv.broker.subscribe("in/x")
    pub = paho_factory(srv, "pub", version=5, connect=False)
    pub.client.max_inflight_messages_set(2)
    _, reason, connack = pub.connect()
    assert reason == 0 and connack.ReceiveMaximum == 2
    infos = [pub.client.publish("in/x", f"{i}", 2) for i in range(10)]
    for info in infos:
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()
    assert [inproc.get(timeout=TIMEOUT).data for _ in range(10)] == [
        f"{i}".encode() for i in range(10)
    ]
    assert pub.connected.is_set()


def test_server_maximum_packet_size_with_paho(
    server_factory: ServerFactory, paho_factory: Factory
) -> None:
    srv = server_factory(max_packet_size=128)
    inproc = srv.broker.subscribe("size/x")
    c = paho_factory(srv, "big", version=5, reconnect=False)
    assert c.connack is not None and c.connack[2].MaximumPacketSize == 128
    c.publish("size/x", b"x" * 64, 1)
    assert inproc.get(timeout=TIMEOUT).data == b"x" * 64
    c.client.publish("size/x", b"x" * 200, 1)
    assert c.disconnected.wait(TIMEOUT)
    assert c.disconnect_from_server
    assert c.disconnect_reason == Reason.PACKET_TOO_LARGE
    with pytest.raises(TimeoutError):
        inproc.get(timeout=0.2)
    old = paho_factory(srv, "big4", version=4, reconnect=False)
    old.client.publish("size/x", b"x" * 200, 1)
    assert old.disconnected.wait(TIMEOUT)  # 3.1.1: closed, no reason to give
    assert not old.disconnect_from_server


# -- wills -------------------------------------------------------------------------------------


def will_client(srv: Srv, factory: Factory, client_id: str, delay: int, expiry: int) -> Paho:
    c = factory(srv, client_id, version=5, clean=False, connect=False, reconnect=False)
    will_props = props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay)
    c.client.will_set("wills/paho", f"{client_id} gone", 1, properties=will_props)
    c.connect(properties=props(PacketTypes.CONNECT, SessionExpiryInterval=expiry))
    return c


def drop_connection(c: Paho) -> None:
    """End the TCP connection under paho without a DISCONNECT (as a crash or a cut cable)."""
    sock = c.client.socket()
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)
    assert c.disconnected.wait(TIMEOUT)


def test_will_delay_interval_from_paho(srv: Srv, paho_factory: Factory) -> None:
    watcher = paho_factory(srv, "watcher", version=5)
    watcher.subscribe("wills/#", 1)
    c = will_client(srv, paho_factory, "late", delay=2, expiry=60)
    drop_connection(c)
    nothing_arrives(watcher)  # the will waits for its delay ...
    will = watcher.get()  # ... then goes out
    assert (will.topic, will.payload) == ("wills/paho", b"late gone")


def test_will_delay_cancelled_when_paho_comes_back(srv: Srv, paho_factory: Factory) -> None:
    watcher = paho_factory(srv, "watcher", version=5)
    watcher.subscribe("wills/#", 1)
    c = will_client(srv, paho_factory, "back", delay=2, expiry=60)
    drop_connection(c)
    again = paho_factory(
        srv,
        "back",
        version=5,
        clean=False,
        properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60),
    )
    assert again.connack is not None and again.connack[0].session_present
    nothing_arrives(watcher, 3.0)  # past the delay: the reconnect cancelled the will


def test_will_published_when_the_session_ends_first(srv: Srv, paho_factory: Factory) -> None:
    watcher = paho_factory(srv, "watcher", version=5)
    watcher.subscribe("wills/#", 1)
    c = will_client(srv, paho_factory, "short", delay=600, expiry=1)
    drop_connection(c)
    will = watcher.get()  # at the session's end (1 s), not after the 600 s delay
    assert will.payload == b"short gone"


def test_paho_disconnect_0x04_sends_the_will(srv: Srv, paho_factory: Factory) -> None:
    watcher = paho_factory(srv, "watcher", version=5)
    watcher.subscribe("wills/#", 1)
    polite = will_client(srv, paho_factory, "polite", delay=0, expiry=0)
    polite.disconnect()  # reason 0x00: the will is discarded
    leaving = will_client(srv, paho_factory, "leaving", delay=0, expiry=0)
    leaving.disconnect(
        reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
    )
    will = watcher.get()
    assert (will.topic, will.payload, will.qos) == ("wills/paho", b"leaving gone", 1)
    nothing_arrives(watcher)


# -- offline sessions --------------------------------------------------------------------------


def persistent(srv: Srv, factory: Factory, client_id: str, version: int) -> Paho:
    if version == 5:
        expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=300)
        return factory(srv, client_id, version=5, clean=False, properties=expiry)
    return factory(srv, client_id, version=4, clean=False)


@VERSIONS
def test_qos2_queued_for_offline_paho_session(
    srv: Srv, paho_factory: Factory, version: int
) -> None:
    sub = persistent(srv, paho_factory, "away", version)
    assert [r.value for r in sub.subscribe("q2/#", 2)] == [2]
    sub.disconnect()
    pub = paho_factory(srv, "pub", version=version)
    for i in range(3):
        pub.publish("q2/x", f"m{i}", 2)
    srv.broker.publish("q2/y", mqkit.Message("in", b"from inside", meta={"mqtt.qos": "2"}))
    back = persistent(srv, paho_factory, "away", version)
    assert back.connack is not None and back.connack[0].session_present
    got = [back.get() for _ in range(4)]
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("q2/x", b"m0", 2),
        ("q2/x", b"m1", 2),
        ("q2/x", b"m2", 2),
        ("q2/y", b"from inside", 2),
    ]
    nothing_arrives(back)


@VERSIONS
def test_message_expiring_while_queued_is_not_delivered(
    server_factory: ServerFactory, paho_factory: Factory, version: int
) -> None:
    clock = mqkit.FakeClock()
    srv = server_factory(clock=clock)
    sub = persistent(srv, paho_factory, "away", version)
    sub.subscribe("exp/#", 1)
    sub.disconnect()
    pub = paho_factory(srv, "pub", version=5)
    pub.publish(
        "exp/a", b"short", 1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=30)
    )
    pub.publish(
        "exp/b", b"long", 1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=90)
    )
    srv.broker.publish(
        "exp/c",
        mqkit.TTLMessage("ttl", b"in-process", expires_at=clock.now() + timedelta(seconds=30)),
    )
    srv.broker.publish("exp/d", mqkit.Message("plain", b"no expiry"))
    clock.advance(60)  # "short" and "in-process" expire while the client is away
    back = persistent(srv, paho_factory, "away", version)
    got = [back.get(), back.get()]
    assert [(m.topic, m.payload) for m in got] == [("exp/b", b"long"), ("exp/d", b"no expiry")]
    if version == 5:  # the interval left, not the original one
        assert got[0].properties.MessageExpiryInterval == 30
        assert not hasattr(got[1].properties, "MessageExpiryInterval")
    nothing_arrives(back)


# -- reason codes ------------------------------------------------------------------------------


def test_reason_codes_seen_by_paho(srv: Srv, paho_factory: Factory) -> None:
    c = paho_factory(srv, "rc", version=5)
    requests = [("rc/0", 0), ("rc/1", 1), ("rc/2", 2), ("$share/g", 1)]
    c.subscribed.clear()
    result, _ = c.client.subscribe(requests)
    assert result == 0 and c.subscribed.wait(TIMEOUT)
    # Granted QoS 0, 1 and 2; "$share/g" names no filter: 0x8F Topic Filter Invalid.
    assert [r.value for r in c.granted] == [0, 1, 2, Reason.TOPIC_FILTER_INVALID]
    assert [r.value for r in c.unsubscribe("rc/1")] == [0]
    assert [r.value for r in c.unsubscribe("rc/none")] == [Reason.NO_SUBSCRIPTION_EXISTED]
    assert c.publish("rc/2", b"one", 1) == 0  # PUBACK 0x00
    assert c.publish("rc/2", b"two", 2) == 0  # PUBCOMP 0x00
    assert [(m.payload, m.qos) for m in (c.get(), c.get())] == [(b"one", 1), (b"two", 2)]
    old = paho_factory(srv, "rc4", version=4)
    old.subscribed.clear()
    result, _ = old.client.subscribe(requests)
    assert result == 0 and old.subscribed.wait(TIMEOUT)
    assert [r.value for r in old.granted] == [0, 1, 2, 0x80]  # 3.1.1: 0x80 Failure


def test_no_local_on_shared_subscription_paho_is_disconnected(
    srv: Srv, paho_factory: Factory
) -> None:
    c = paho_factory(srv, "bad", version=5, reconnect=False)
    c.client.subscribe("$share/g/a", options=SubscribeOptions(qos=1, noLocal=True))
    assert c.disconnected.wait(TIMEOUT)
    assert c.disconnect_from_server
    assert c.disconnect_reason == Reason.PROTOCOL_ERROR


def test_unknown_topic_alias_from_paho_is_a_protocol_error(srv: Srv, paho_factory: Factory) -> None:
    c = paho_factory(srv, "alias", version=5, reconnect=False)
    c.client.publish("", b"where?", 0, properties=props(PacketTypes.PUBLISH, TopicAlias=5))
    assert c.disconnected.wait(TIMEOUT)
    assert c.disconnect_from_server
    assert c.disconnect_reason == Reason.PROTOCOL_ERROR
