"""Persistent sessions and retained messages survive a broker restart (with persistence on)."""

from __future__ import annotations

from pathlib import Path

import mqkit
from mqkit.protocols.mqtt import codec

from .helpers import Raw, make_server


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
