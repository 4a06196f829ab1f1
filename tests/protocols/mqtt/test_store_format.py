"""The store format: a directory written by an earlier mqkit still opens, and what it holds.

``tests/fixtures/store_v1`` was written by mqkit before the store format had a home of its own
(``tests/fixtures/make_store_v1.py``, run with that code): the persistence store (a message
alone, a batch, an ack-required message waiting for its ack, the messages the MQTT gateway
published) and the MQTT session store as it was then (pickled tuple keys): a persistent session
``durable`` with an in-flight and a queued QoS 1 message, a QoS 2 packet id received, a
retained message, a shared subscription's queued message. Nothing in it ever expires (a
``persistence_max_age`` of a century, a session that never expires).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import mqkit
from mqkit.plugins.persistence.format import (
    DATABASE,
    FORMAT_VERSION,
    META_TABLE,
    MQTT_DIR,
    STORE_DIR,
    parse_record_key,
)
from mqkit.plugins.persistence.serializer import message_to_dict, to_json
from mqkit.protocols.mqtt import codec

from .helpers import Raw, Srv, make_server

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "store_v1"
AGE = 100 * 365 * 24 * 3600.0
FOREVER = codec.Properties(session_expiry_interval=0xFFFFFFFF)


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """A copy of the fixture (opening a store may write to it)."""
    copy = tmp_path / "store"
    shutil.copytree(FIXTURE, copy)
    return copy


def start(path: Path) -> Srv:
    return make_server(
        enable_persistence=True,
        persistence_path=str(path),
        persistence_max_age=AGE,
        enable_ack_support=True,
    )


@pytest.fixture
def server(old_store: Path) -> Iterator[Srv]:
    srv = start(old_store)
    yield srv
    srv.broker.close()


def ids(messages: list[mqkit.Message]) -> list[str]:
    return [m.id for m in messages]


def test_an_old_persistence_store_recovers_every_message(server: Srv) -> None:
    broker = server.broker
    assert ids(broker.recover_messages("orders")) == ["alone", "b0", "b1", "b2"]
    (alone,) = broker.recover_messages("orders", 1)
    assert alone.data == {"n": 1, "b": b"\x00\x01"}
    (job,) = broker.recover_messages("jobs")
    assert isinstance(job, mqkit.AckMessage) and job.data == "work"
    assert ids(broker.recover_messages("t")) == ["m-flight", "m-queued"]
    assert ids(broker.recover_messages("s")) == ["m-shared"]
    assert broker.health_check().status == "healthy"


def test_an_old_store_is_inspected_as_before(old_store: Path) -> None:
    from mqkit.plugins.persistence.inspector import inspect_store

    report = inspect_store(old_store)
    assert report.locked_by is None and report.unreadable == 0 and report.expired == 0
    assert report.total_messages == 10
    assert {t.topic: t.messages for t in report.topics} == {
        "in/q2": 1,
        "jobs": 1,
        "orders": 4,
        "r/1": 1,
        "s": 1,
        "t": 2,
    }
    assert [(p.topic, p.id) for p in report.pending_acks] == [("jobs", "job-1")]


def test_an_old_mqtt_session_store_restores_the_session(old_store: Path) -> None:
    srv = start(old_store)
    try:
        with Raw(srv) as raw:
            assert raw.connect("durable", clean_start=False, properties=FOREVER).session_present
            flight = raw.packet()  # in flight when the store was written: resent with DUP
            assert isinstance(flight, codec.Publish)
            assert (flight.topic, flight.payload, flight.dup, flight.packet_id) == (
                "t",
                b"in flight",
                True,
                1,
            )
            got = {flight.payload}
            for _ in range(2):  # the queued one and the shared subscription's
                p = raw.packet()
                assert isinstance(p, codec.Publish) and p.qos == 1 and not p.dup
                got.add(p.payload)
                raw.send(codec.PubAck(packet_id=p.packet_id).encode())
            raw.send(codec.PubAck(packet_id=1).encode())
            assert got == {b"in flight", b"queued", b"shared"}
            # QoS 2 packet id 9 was received (PUBREC sent, no PUBREL yet): a resend is known.
            raw.send(
                codec.Publish(topic="in/q2", payload=b"held", qos=2, packet_id=9, dup=True).encode()
            )
            rec = raw.packet()
            assert isinstance(rec, codec.PubRec) and rec.packet_id == 9
            raw.send(codec.PubRel(packet_id=9).encode())
            comp = raw.packet()
            assert isinstance(comp, codec.PubComp) and comp.packet_id == 9
            req = codec.SubscriptionRequest(topic_filter="r/#")
            raw.send(codec.Subscribe(packet_id=2, subscriptions=(req,)).encode())
            assert isinstance(raw.packet(), codec.SubAck)
            kept = raw.packet()
            assert isinstance(kept, codec.Publish)
            assert (kept.topic, kept.payload, kept.retain) == ("r/1", b"retained", True)
            raw.send(codec.Disconnect().encode())
            assert raw.closed()
    finally:
        srv.broker.close()
    # What was acknowledged stays gone; the session, its subscriptions and the retained
    # message stay (the store now written in this version's format).
    srv = start(old_store)
    try:
        with Raw(srv) as raw:
            assert raw.connect("durable", clean_start=False, properties=FOREVER).session_present
            srv.broker.publish("t", mqkit.Message("after", b"after"))
            p = raw.packet()
            assert isinstance(p, codec.Publish) and p.payload == b"after"
            raw.send(codec.PubAck(packet_id=p.packet_id).encode())
        with Raw(srv) as raw:
            raw.connect("reader")
            req = codec.SubscriptionRequest(topic_filter="r/#")
            raw.send(codec.Subscribe(packet_id=1, subscriptions=(req,)).encode())
            assert isinstance(raw.packet(), codec.SubAck)
            kept = raw.packet()
            assert isinstance(kept, codec.Publish) and kept.payload == b"retained"
    finally:
        srv.broker.close()


def rows(database: Path) -> list[tuple[object, int]]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT key, raw FROM Cache ORDER BY rowid").fetchall()


def format_of(database: Path) -> int | None:
    """The version a store records (None: none, as stores written before versions)."""
    with sqlite3.connect(database) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        if META_TABLE not in tables:
            return None
        found = db.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'format'").fetchall()
    return found[0][0] if found else None


def test_an_old_mqtt_store_is_upgraded_to_the_one_format(old_store: Path) -> None:
    mqtt_db = old_store / MQTT_DIR / DATABASE
    assert {raw for _, raw in rows(mqtt_db)} == {0}  # pickled tuple keys
    assert format_of(mqtt_db) is None and format_of(old_store / STORE_DIR / DATABASE) is None
    srv = start(old_store)
    srv.broker.publish("orders", mqkit.Message("new", 1))
    srv.broker.close()
    # Every record is keyed by its JSON text now, as the message store's entries are, and
    # both stores record the format's version.
    keys = rows(mqtt_db)
    assert len(keys) == 7 and {raw for _, raw in keys} == {1}
    assert sorted(parse_record_key(key) for key, _ in keys) == [  # type: ignore[type-var]
        ("gq", "mqtt:$share/g/s", 1),
        ("i", "durable", 1),
        ("p", "durable", 9),
        ("q", "durable", 1),
        ("q", "durable", 2),
        ("r", "r/1"),
        ("s", "durable"),
    ]
    assert format_of(mqtt_db) == FORMAT_VERSION
    assert format_of(old_store / STORE_DIR / DATABASE) == FORMAT_VERSION


def test_an_mqtt_store_of_a_later_format_is_refused(old_store: Path) -> None:
    start(old_store).broker.close()  # upgraded: it records its version
    with sqlite3.connect(old_store / MQTT_DIR / DATABASE) as db:
        later = (FORMAT_VERSION + 1,)
        db.execute(f"UPDATE {META_TABLE} SET value = ? WHERE key = 'format'", later)
    with pytest.raises(mqkit.PersistenceError, match="was written by a later mqkit"):
        start(old_store)


def test_an_old_mqtt_store_written_directly_keeps_a_large_message(tmp_path: Path) -> None:
    """The layout of the session store before the one format, written as that code wrote it:
    diskcache's default settings (a value of 32 KiB or more in a file of its own), pickled
    tuple keys, a session record and a queued message whose value is such a file."""
    import diskcache

    big = bytes(range(256)) * 400  # 100 KiB: its stored value is far beyond 32 KiB
    message = mqkit.Message("big", big, topic="t")
    old = diskcache.Cache(str(tmp_path / MQTT_DIR), eviction_policy="none", statistics=False)
    session = {
        "client_id": "durable",
        "owner": None,
        "expiry": 0xFFFFFFFF,
        "disconnected_at": 1.0,
        "subs": [["t", 1, False, False, None]],
    }
    old.set(("s", "durable"), json.dumps(session))
    old.set(("q", "durable", 1), to_json({"f": "t", "m": message_to_dict(message)}))
    old.close()
    assert list((tmp_path / MQTT_DIR).rglob("*.val"))  # the message is in a file
    srv = start(tmp_path)
    try:
        assert not list((tmp_path / MQTT_DIR).rglob("*.val"))  # now in the database
        with Raw(srv) as raw:
            assert raw.connect("durable", clean_start=False, properties=FOREVER).session_present
            p = raw.packet()
            assert isinstance(p, codec.Publish) and p.payload == big
            raw.send(codec.PubAck(packet_id=p.packet_id).encode())
    finally:
        srv.broker.close()
