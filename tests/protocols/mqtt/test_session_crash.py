"""Persistent MQTT sessions survive a SIGKILL of the broker process (issue 13, point 5).

A child process runs a broker with persistence and the MQTT gateway; the tests talk to it
with real clients (paho-mqtt, the raw socket client), kill it with SIGKILL and start a new one
on the same directory. What a persistent session holds - its subscriptions, its expiry, the
QoS 1/2 messages queued for it and those in flight to it - must be on disk as soon as it
changes: every message PUBACKed/PUBRECed to its publisher comes back after the restart, and
nothing the subscriber acknowledged does. Synchronisation is by the protocol alone (an ack,
a PINGRESP, a CONNACK); nothing sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

import mqkit
from mqkit.protocols.mqtt import codec

from .helpers import TIMEOUT, Paho, Raw, make_server

ROOT = Path(__file__).resolve().parents[3]
COUNT = 20

CHILD = """
import json
import sys
from datetime import UTC, datetime, timedelta

import mqkit

path, shift, extra = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])


class Shifted(mqkit.Clock):
    # The real clock moved ``shift`` seconds on: a restart "later" without waiting.
    def now(self):
        return datetime.now(UTC) + timedelta(seconds=shift)

    def time(self):
        return self.now().timestamp()


config = mqkit.Config(
    enable_persistence=True,
    persistence_path=path,
    enable_mqtt=True,
    mqtt_port=0,
    settings={"mqtt": {"tls_port": 0, **extra}},
)
broker = mqkit.Broker(config, clock=Shifted())
host, port = broker.start_mqtt_server()
sys.stdout.write(f"{port}\\n")
sys.stdout.flush()
for line in sys.stdin:  # "<topic> <payload> <qos>": an in-process publish; serve until killed
    topic, payload, qos = line.split()
    message = mqkit.Message(payload, payload.encode(), meta={"mqtt.qos": qos})
    broker.publish(topic, message)
    sys.stdout.write("published\\n")
    sys.stdout.flush()
"""


@attrs.define
class Address:
    """Where a child broker listens (what ``Paho`` and ``Raw`` need of a server)."""

    host: str
    port: int

    @property
    def pair(self) -> tuple[str, int]:
        return self.host, self.port


class Child:
    """A broker in a child process on ``store``; ``kill()`` sends SIGKILL."""

    def __init__(self, script: Path, store: Path, shift: float, config: dict[str, Any]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.pop("MQKIT_AUTOLOAD_PLUGINS", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(store), str(shift), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=TIMEOUT)
            assert self.proc.stderr is not None
            pytest.fail(f"the broker did not start: {self.proc.stderr.read()}")
        self.address = Address("127.0.0.1", int(line))

    def publish(self, topic: str, payload: str, qos: int) -> None:
        """Publish in-process in the child; return once its ``publish`` returned."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{topic} {payload} {qos}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "published\n"

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        _, errors = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == -signal.SIGKILL, errors  # it was running: killed

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Any]:
    """``brokers(shift=0.0, **config)`` starts a child broker on the test's store directory."""
    script = tmp_path / "broker.py"
    script.write_text(CHILD)
    store = tmp_path / "store"
    started: list[Child] = []

    def start(shift: float = 0.0, **config: Any) -> Child:
        child = Child(script, store, shift, config)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


@pytest.fixture
def clients() -> Iterator[Any]:
    """``clients(address, client_id, **kw)``: a ``Paho`` client, closed after the test."""
    made: list[Paho] = []

    def make(address: Address, client_id: str, **kw: Any) -> Paho:
        client = Paho(address, client_id, **kw)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def session_kw(version: int, expiry: int = 3600) -> dict[str, Any]:
    """Connect arguments of a persistent session (v5: a Session Expiry Interval)."""
    if version != 5:
        return {}
    props = PahoProperties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    return {"properties": props}


def raw_connect(raw: Raw, client_id: str, version: int) -> codec.ConnAck:
    props = codec.Properties(session_expiry_interval=3600) if version == 5 else codec.NO_PROPERTIES
    return raw.connect(client_id, clean_start=False, properties=props)


def ping(raw: Raw) -> None:
    """Wait until the server handled everything sent before (one connection is in order)."""
    raw.send(codec.PingReq().encode(raw.version))
    assert isinstance(raw.packet(), codec.PingResp)


def nothing_more(client: Paho, publisher: Paho, topic: str, qos: int = 1) -> None:
    """A message published now is the next ``client`` receives: nothing else was queued."""
    publisher.publish(topic, b"sentinel", qos)
    got = client.get()
    assert (got.topic, got.payload) == (topic, b"sentinel")


@pytest.mark.parametrize("pub_version", [4, 5, 0], ids=["pub311", "pub5", "in_process"])
@pytest.mark.parametrize("qos", [1, 2])
def test_messages_acked_to_the_publisher_while_offline_survive_sigkill(
    brokers: Any, clients: Any, qos: int, pub_version: int
) -> None:
    # pub_version 0: published in-process in the broker's process (``publish`` returned).
    child = brokers()
    versions = (5, 4)
    for version in versions:
        sub = clients(
            child.address, f"durable-{version}", version=version, clean=False, **session_kw(version)
        )
        assert [getattr(g, "value", g) for g in sub.subscribe("orders/#", qos)] == [qos]
        sub.close()  # DISCONNECT: the session stays, offline
    if pub_version:
        pub = clients(child.address, "pub", version=pub_version)
        for i in range(COUNT):
            reason = pub.publish(f"orders/{i}", f"order {i}".encode(), qos)
            assert reason is None or not reason.is_failure  # PUBACKed / PUBCOMPed
        pub.close()
    else:
        for i in range(COUNT):
            child.publish(f"orders/{i}", f"order-{i}", qos)
    child.kill()

    child = brokers()
    pub = clients(child.address, "pub-after", version=pub_version or 5)
    sep = " " if pub_version else "-"
    expected = [(f"orders/{i}", f"order{sep}{i}".encode(), qos) for i in range(COUNT)]
    back = {}
    for version in versions:
        back[version] = clients(
            child.address, f"durable-{version}", version=version, clean=False, **session_kw(version)
        )
        connack = back[version].connack
        assert connack is not None and connack[0].session_present, version
    for version in versions:
        got = [back[version].get() for _ in range(COUNT)]
        assert [(m.topic, m.payload, m.qos) for m in got] == expected, version
    # The subscription came back too, and nothing comes twice: what is published now is next.
    pub.publish("orders/end", b"sentinel", qos)
    for version in versions:
        got = back[version].get()
        assert (got.topic, got.payload) == ("orders/end", b"sentinel"), version


def test_messages_the_subscriber_acknowledged_stay_gone_after_sigkill(
    brokers: Any, clients: Any
) -> None:
    child = brokers()
    sub = clients(child.address, "durable", version=5, clean=False, **session_kw(5))
    sub.subscribe("orders/#", 1)
    sub.close()
    pub = clients(child.address, "pub")
    for i in range(COUNT):
        pub.publish(f"orders/{i}", f"order {i}".encode(), 1)
    pub.close()
    child.kill()

    child = brokers()
    back = clients(child.address, "durable", version=5, clean=False, **session_kw(5))
    assert [back.get().payload for _ in range(COUNT)] == [
        f"order {i}".encode() for i in range(COUNT)
    ]
    # paho PUBACKs each message as it arrives; a publish of its own on the same connection,
    # once PUBACKed, shows the server handled those PUBACKs before it.
    back.publish("elsewhere", b"sync", 1)
    back.close()
    child.kill()

    child = brokers()
    pub = clients(child.address, "pub-after")
    back = clients(child.address, "durable", version=5, clean=False, **session_kw(5))
    assert back.connack is not None and back.connack[0].session_present
    nothing_more(back, pub, "orders/end")


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
@pytest.mark.parametrize("qos", [1, 2])
def test_in_flight_messages_are_resent_with_dup_after_sigkill(
    brokers: Any, clients: Any, version: int, qos: int
) -> None:
    child = brokers()
    raw = Raw(child.address.pair, version)
    try:
        assert not raw_connect(raw, "inflight", version).session_present
        req = codec.SubscriptionRequest(topic_filter="jobs/#", qos=qos)
        raw.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode(version))
        assert isinstance(raw.packet(), codec.SubAck)
        pub = clients(child.address, "pub")
        sent: list[codec.Publish] = []
        for i in range(3):
            pub.publish(f"jobs/{i}", f"job {i}".encode(), qos)
            packet = raw.packet()
            assert isinstance(packet, codec.Publish) and not packet.dup
            sent.append(packet)
        if qos == 2:  # the first one's PUBREC: the server released it and waits for PUBCOMP
            raw.send(codec.PubRec(packet_id=sent[0].packet_id).encode(version))
            rel = raw.packet()
            assert isinstance(rel, codec.PubRel) and rel.packet_id == sent[0].packet_id
        pub.close()
        child.kill()  # none of the three completed
    finally:
        raw.close()

    child = brokers()
    with Raw(child.address.pair, version) as raw:
        assert raw_connect(raw, "inflight", version).session_present
        again = [raw.packet() for _ in range(3)]
        if qos == 2:
            rel = again.pop(0)
            assert isinstance(rel, codec.PubRel) and rel.packet_id == sent[0].packet_id
            expected = sent[1:]
        else:
            expected = sent
        for packet, first in zip(again, expected, strict=True):
            assert isinstance(packet, codec.Publish)
            assert packet.dup, packet
            assert (packet.packet_id, packet.topic, packet.payload, packet.qos) == (
                first.packet_id,
                first.topic,
                first.payload,
                qos,
            )
        # Complete every flow, then make sure the server handled it before the next kill.
        if qos == 1:
            for packet in sent:
                raw.send(codec.PubAck(packet_id=packet.packet_id).encode(version))
        else:
            raw.send(codec.PubComp(packet_id=sent[0].packet_id).encode(version))
            for packet in sent[1:]:
                raw.send(codec.PubRec(packet_id=packet.packet_id).encode(version))
                rel = raw.packet()
                assert isinstance(rel, codec.PubRel)
                raw.send(codec.PubComp(packet_id=packet.packet_id).encode(version))
        ping(raw)
    child.kill()

    child = brokers()
    with Raw(child.address.pair, version) as raw:
        assert raw_connect(raw, "inflight", version).session_present
        pub = clients(child.address, "pub-after")
        pub.publish("jobs/end", b"sentinel", 1)
        packet = raw.packet()  # not one of the completed three
        assert isinstance(packet, codec.Publish)
        assert (packet.topic, packet.payload, packet.dup) == ("jobs/end", b"sentinel", False)


def test_session_expiry_counts_from_the_stored_disconnect_time(brokers: Any, clients: Any) -> None:
    child = brokers()
    expiries = {"short": 600, "long": 3600}
    for client_id, expiry in expiries.items():
        sub = clients(child.address, client_id, version=5, clean=False, **session_kw(5, expiry))
        sub.subscribe("news", 1)
        sub.close()
    # A session still connected when the broker dies: its expiry counts from the restart.
    online = clients(
        child.address, "online", version=5, clean=False, reconnect=False, **session_kw(5, 600)
    )
    online.subscribe("news", 1)
    pub = clients(child.address, "pub")
    pub.publish("news", b"kept for the long one", 1)
    assert online.get().payload == b"kept for the long one"
    online.publish("elsewhere", b"sync", 1)  # PUBACKed: the server handled online's PUBACK
    pub.close()
    child.kill()
    online.close()

    child = brokers(shift=1200.0)  # 20 minutes later: "short" expired while the broker was down
    short = clients(child.address, "short", version=5, clean=False, **session_kw(5, 600))
    assert short.connack is not None and not short.connack[0].session_present
    long = clients(child.address, "long", version=5, clean=False, **session_kw(5, 3600))
    assert long.connack is not None and long.connack[0].session_present
    assert long.get().payload == b"kept for the long one"
    again = clients(child.address, "online", version=5, clean=False, **session_kw(5, 600))
    assert again.connack is not None and again.connack[0].session_present
    pub = clients(child.address, "pub-after")
    short.subscribe("news", 1)
    nothing_more(short, pub, "news")
    assert again.get().payload == b"sentinel"  # online's message was PUBACKed before the kill
    assert long.get().payload == b"sentinel"


def test_subscriptions_made_and_removed_are_written_at_once(brokers: Any, clients: Any) -> None:
    child = brokers()
    sub = clients(child.address, "changing", version=4, clean=False)
    sub.subscribe("a/#", 1)
    sub.subscribe("b/#", 2)
    sub.subscribe("c/#", 1)
    sub.unsubscribe("b/#")
    sub.close()
    child.kill()

    child = brokers()
    back = clients(child.address, "changing", version=4, clean=False)
    assert back.connack is not None and back.connack[0].session_present
    pub = clients(child.address, "pub")
    for topic in ("b/x", "a/x", "c/x"):
        pub.publish(topic, topic.encode(), 2)
    got = [back.get(), back.get()]
    assert [(m.topic, m.qos) for m in got] == [("a/x", 1), ("c/x", 1)]
    nothing_more(back, pub, "a/end")


@pytest.mark.parametrize(
    ("policy", "kept"),
    # The session holds the first message (its pump was waiting for one when it went offline)
    # and the buffer's 5, under the policy.
    [("drop_oldest", [0, *range(COUNT - 5, COUNT)]), ("drop_newest", list(range(6)))],
)
def test_messages_the_subscription_dropped_do_not_come_back(
    brokers: Any, clients: Any, policy: str, kept: list[int]
) -> None:
    config = {"max_queued_messages": 5, "backpressure": policy}
    child = brokers(**config)
    with Raw(child.address.pair, 4) as raw:
        raw_connect(raw, "bounded", 4)
        req = codec.SubscriptionRequest(topic_filter="orders/#", qos=1)
        raw.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode(4))
        assert isinstance(raw.packet(), codec.SubAck)
        raw.send(codec.Disconnect().encode(4))
        assert raw.closed()  # the server closed it: the session is offline, its buffer fills
    pub = clients(child.address, "pub")
    for i in range(COUNT):
        pub.publish(f"orders/{i}", f"order {i}".encode(), 1)
    pub.close()
    child.kill()

    child = brokers(**config)
    back = clients(child.address, "bounded", version=4, clean=False)
    assert back.connack is not None and back.connack[0].session_present
    assert [back.get().payload for _ in kept] == [f"order {i}".encode() for i in kept]
    nothing_more(back, clients(child.address, "pub-after"), "orders/end")


@pytest.mark.parametrize(
    ("policy", "kept"),
    [("drop_oldest", list(range(COUNT - 5, COUNT))), ("drop_newest", list(range(5)))],
)
def test_an_offline_sessions_queue_keeps_its_bound_while_another_client_reads(
    brokers: Any, clients: Any, policy: str, kept: list[int]
) -> None:
    """The filter's broker subscription is drained for a reader; the offline session's own
    queue drops under its policy, and what it dropped does not come back after a SIGKILL."""
    config = {"max_queued_messages": 5, "backpressure": policy}
    child = brokers(**config)
    with Raw(child.address.pair, 4) as raw:
        raw_connect(raw, "bounded", 4)
        req = codec.SubscriptionRequest(topic_filter="orders/#", qos=1)
        raw.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode(4))
        assert isinstance(raw.packet(), codec.SubAck)
        raw.send(codec.Disconnect().encode(4))
        assert raw.closed()
    reader = clients(child.address, "reader")
    reader.subscribe("orders/#", 1)
    pub = clients(child.address, "pub")
    for i in range(COUNT):
        pub.publish(f"orders/{i}", f"order {i}".encode(), 1)
        assert reader.get().payload == f"order {i}".encode()  # it keeps up, one at a time
    child.kill()

    child = brokers(**config)
    back = clients(child.address, "bounded", version=4, clean=False)
    assert back.connack is not None and back.connack[0].session_present
    assert [back.get().payload for _ in kept] == [f"order {i}".encode() for i in kept]
    nothing_more(back, clients(child.address, "pub-after"), "orders/end")


def test_a_message_that_expired_while_the_broker_was_down_is_not_sent(
    brokers: Any, clients: Any
) -> None:
    child = brokers()
    sub = clients(child.address, "durable", version=5, clean=False, **session_kw(5))
    sub.subscribe("news", 1)
    sub.close()
    pub = clients(child.address, "pub")
    short = PahoProperties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 60
    pub.publish("news", b"stale soon", 1, properties=short)
    pub.publish("news", b"still good", 1)
    pub.close()
    child.kill()

    child = brokers(shift=120.0)  # two minutes later: the first one expired
    back = clients(child.address, "durable", version=5, clean=False, **session_kw(5))
    assert back.connack is not None and back.connack[0].session_present
    assert back.get().payload == b"still good"
    nothing_more(back, clients(child.address, "pub-after"), "news")


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_a_qos2_publication_received_before_the_kill_is_published_once(
    brokers: Any, clients: Any, version: int
) -> None:
    child = brokers()
    reader = clients(child.address, "reader", version=5, clean=False, **session_kw(5))
    reader.subscribe("once/#", 2)
    reader.close()
    publish = codec.Publish(topic="once/x", payload=b"exactly once", qos=2, packet_id=7)
    with Raw(child.address.pair, version) as raw:
        raw_connect(raw, "writer", version)
        raw.send(publish.encode(version))
        rec = raw.packet()
        assert isinstance(rec, codec.PubRec) and rec.packet_id == 7
    child.kill()  # before the PUBREL

    child = brokers()
    with Raw(child.address.pair, version) as raw:
        assert raw_connect(raw, "writer", version).session_present
        # The client may not have seen the PUBREC: it sends the PUBLISH again, DUP set.
        raw.send(attrs.evolve(publish, dup=True).encode(version))
        rec = raw.packet()
        assert isinstance(rec, codec.PubRec) and rec.packet_id == 7
        raw.send(codec.PubRel(packet_id=7).encode(version))
        comp = raw.packet()
        assert isinstance(comp, codec.PubComp)
        assert (comp.packet_id, comp.reason_code) == (7, 0)  # known: 0, not 0x92
    back = clients(child.address, "reader", version=5, clean=False, **session_kw(5))
    assert back.get().payload == b"exactly once"
    nothing_more(back, clients(child.address, "pub-after"), "once/end", 2)


def test_a_session_write_that_fails_is_reported_and_the_message_kept_in_memory(
    tmp_path: Path,
) -> None:
    srv = make_server(enable_persistence=True, persistence_path=str(tmp_path))
    props = codec.Properties(session_expiry_interval=300)
    try:
        with Raw(srv) as raw:
            raw.connect("durable", clean_start=False, properties=props)
            req = codec.SubscriptionRequest(topic_filter="t", qos=1)
            raw.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode())
            assert isinstance(raw.packet(), codec.SubAck)
            raw.send(codec.Disconnect().encode())
            assert raw.closed()
        # This thread's connection to the session store refuses writes (as a full disk would).
        store = srv.plugin.server.store
        store._sql("PRAGMA query_only = ON").fetchall()
        srv.broker.publish("t", mqkit.Message("m", b"kept in memory"))
        health = srv.broker.health_check()
        assert health.status == "degraded"
        assert any(
            re.fullmatch(r"mqtt session store failed 1 write\(s\); last: .*readonly.*", p)
            for p in health.problems
        ), health.problems
        store._sql("PRAGMA query_only = OFF").fetchall()
        with Raw(srv) as raw:
            assert raw.connect("durable", clean_start=False, properties=props).session_present
            got = raw.packet()
            assert isinstance(got, codec.Publish) and got.payload == b"kept in memory"
    finally:
        srv.broker.close()


def test_a_shared_subscriptions_queued_messages_survive_sigkill(brokers: Any, clients: Any) -> None:
    child = brokers()
    for version in (5, 4):
        member = clients(
            child.address, f"member-{version}", version=version, clean=False, **session_kw(version)
        )
        member.subscribe("$share/workers/jobs/#", 1)
        member.close()
    pub = clients(child.address, "pub")
    for i in range(COUNT):
        pub.publish(f"jobs/{i}", f"job {i}".encode(), 1)
    pub.close()
    child.kill()

    child = brokers()
    back = clients(child.address, "member-5", version=5, clean=False, **session_kw(5))
    assert back.connack is not None and back.connack[0].session_present
    got = [back.get() for _ in range(COUNT)]  # the only member online: it gets them all
    assert [m.payload for m in got] == [f"job {i}".encode() for i in range(COUNT)]
    nothing_more(back, clients(child.address, "pub-after"), "jobs/end")


def test_a_shared_message_in_flight_goes_back_to_the_group_after_sigkill(
    brokers: Any, clients: Any
) -> None:
    child = brokers()
    req = codec.SubscriptionRequest(topic_filter="$share/workers/jobs/#", qos=1)
    with Raw(child.address.pair, 5) as raw:
        raw_connect(raw, "worker", 5)
        raw.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode())
        assert isinstance(raw.packet(), codec.SubAck)
        pub = clients(child.address, "pub")
        for i in range(2):
            pub.publish(f"jobs/{i}", f"job {i}".encode(), 1)
            packet = raw.packet()
            assert isinstance(packet, codec.Publish) and packet.payload == f"job {i}".encode()
        child.kill()  # neither was PUBACKed

    child = brokers()
    with Raw(child.address.pair, 5) as raw:
        assert raw_connect(raw, "worker", 5).session_present
        again = [raw.packet() for _ in range(2)]
        assert all(isinstance(p, codec.Publish) for p in again)
        assert [p.payload for p in again] == [b"job 0", b"job 1"]  # type: ignore[union-attr]
        for packet in again:
            raw.send(codec.PubAck(packet_id=packet.packet_id).encode())  # type: ignore[union-attr]
        ping(raw)
    child.kill()

    child = brokers()
    with Raw(child.address.pair, 5) as raw:
        assert raw_connect(raw, "worker", 5).session_present
        clients(child.address, "pub-after").publish("jobs/end", b"sentinel", 1)
        packet = raw.packet()  # not one of the two completed
        assert isinstance(packet, codec.Publish) and packet.payload == b"sentinel"


@pytest.mark.parametrize("topic_filter", ["jobs/#", "$share/workers/jobs/#"])
def test_messages_queued_across_two_kills_all_come_back_in_order(
    brokers: Any, clients: Any, topic_filter: str
) -> None:
    child = brokers()
    sub = clients(child.address, "durable", version=4, clean=False)
    sub.subscribe(topic_filter, 1)
    sub.close()
    for round_ in range(2):  # queued before the first kill, then after the restart
        pub = clients(child.address, f"pub-{round_}")
        for i in range(5):
            pub.publish(f"jobs/{round_}", f"job {round_}.{i}".encode(), 1)
        pub.close()
        child.kill()
        child = brokers()
    back = clients(child.address, "durable", version=4, clean=False)
    assert back.connack is not None and back.connack[0].session_present
    got = [back.get().payload for _ in range(10)]
    assert got == [f"job {r}.{i}".encode() for r in range(2) for i in range(5)]
    nothing_more(back, clients(child.address, "pub-after"), "jobs/end")
