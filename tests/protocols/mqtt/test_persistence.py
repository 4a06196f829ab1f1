"""Persistent sessions and retained messages survive a broker restart (with persistence on).

The raw client pins the packets down; paho-mqtt 2.x (3.1.1 and 5) shows a real client's
persistent session coming back with its QoS 1 and QoS 2 messages.
"""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

import mqkit
from mqkit.protocols.mqtt import codec

from .helpers import Paho, Raw, make_server


def test_session_and_retained_survive_restart(tmp_path: Path) -> None:
    config = {"enable_persistence": True, "persistence_path": str(tmp_path)}
    props = codec.Properties(session_expiry_interval=300)
    srv = make_server(**config)
    try:
        with Raw(srv) as c:
            c.connect("durable", clean_start=False, properties=props)
            reqs = (
                codec.SubscriptionRequest(topic_filter="orders/#", qos=1),
                codec.SubscriptionRequest(topic_filter="$share/g/jobs", qos=1),
            )
            c.send(codec.Subscribe(packet_id=1, subscriptions=reqs).encode())
            c.packet()
            c.send(codec.Publish(topic="config/x", payload=b"kept", retain=True).encode())
            c.send(codec.Disconnect().encode())
            assert c.closed()
        for i in range(3):
            srv.broker.publish("orders/new", mqkit.Message(f"o{i}", f"order {i}"))
        srv.broker.publish("jobs", mqkit.Message("j", b"job"))
    finally:
        srv.broker.close()

    srv = make_server(**config)
    try:
        with Raw(srv) as c:
            ack = c.connect("durable", clean_start=False, properties=props)
            assert ack.session_present
            got = []
            for _ in range(4):
                p = c.packet()
                assert isinstance(p, codec.Publish) and p.qos == 1
                c.send(codec.PubAck(packet_id=p.packet_id).encode())
                got.append((p.topic, p.payload))
            assert sorted(got) == [
                ("jobs", b"job"),
                ("orders/new", b"order 0"),
                ("orders/new", b"order 1"),
                ("orders/new", b"order 2"),
            ]
            assert [t for t, _ in got if t.startswith("orders")] == ["orders/new"] * 3
        with Raw(srv) as c:
            c.connect("reader")
            req = codec.SubscriptionRequest(topic_filter="config/#")
            c.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode())
            c.packet()
            kept = c.packet()
            assert isinstance(kept, codec.Publish)
            assert (kept.topic, kept.payload, kept.retain) == ("config/x", b"kept", True)
    finally:
        srv.broker.close()


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_paho_persistent_session_survives_restart(tmp_path: Path, version: int) -> None:
    config = {"enable_persistence": True, "persistence_path": str(tmp_path)}
    expiry = PahoProperties(PacketTypes.CONNECT)
    expiry.SessionExpiryInterval = 300
    session_kw = {"properties": expiry} if version == 5 else {}

    srv = make_server(**config)
    try:
        sub = Paho(srv, "durable", version=version, clean=False, **session_kw)
        try:
            assert [r.value for r in sub.subscribe("orders/#", 2)] == [2]
        finally:
            sub.close()
        pub = Paho(srv, "pub", version=version)
        try:
            pub.publish("orders/1", b"at least once", 1)
            pub.publish("orders/2", b"exactly once", 2)
        finally:
            pub.close()
    finally:
        srv.broker.close()

    srv = make_server(**config)
    try:
        back = Paho(srv, "durable", version=version, clean=False, **session_kw)
        try:
            assert back.connack is not None and back.connack[0].session_present
            got = [back.get(), back.get()]
            assert [(m.topic, m.payload, m.qos) for m in got] == [
                ("orders/1", b"at least once", 1),
                ("orders/2", b"exactly once", 2),
            ]
            with pytest.raises(queue.Empty):
                back.get(timeout=0.3)
            back.publish("orders/3", b"live again", 1)  # the subscription came back too
            assert back.get().payload == b"live again"
        finally:
            back.close()
    finally:
        srv.broker.close()
