"""Never send what MQTT forbids (issue 13, point 4).

MQTT's UTF-8 strings (v5 1.5.4, 3.1.1 1.5.3) must not hold U+0000 or surrogates and must fit in
65,535 bytes; a receiver may also treat control characters (U+0001-U+001F, U+007F-U+009F) and
noncharacters as malformed, and libmosquitto does. An in-process message whose topic, or (for
MQTT 5 clients) whose meta keys and values, break these rules cannot be sent: it is dropped for
that client, counted as dropped, logged once per topic, and the session goes on; it is never
resent on reconnect.
"""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

import mqkit
from mqkit.protocols.mqtt import codec

from .helpers import TIMEOUT, Raw, Srv

# A meta (key, value) the wire cannot carry to an MQTT 5 client, and what the reason names.
BAD_META = [
    pytest.param({"k": "a\x00b"}, "U+0000", id="nul-value"),
    pytest.param({"a\x00b": "v"}, "U+0000", id="nul-key"),
    pytest.param({"k": "a\ud800b"}, "surrogate", id="surrogate-value"),
    pytest.param({"\udc00": "v"}, "surrogate", id="surrogate-key"),
    pytest.param({"k": "line\nbreak"}, "U+000A", id="control-lf"),
    pytest.param({"k": "\x01"}, "U+0001", id="control-01"),
    pytest.param({"k": "\x1f"}, "U+001F", id="control-1f"),
    pytest.param({"k": "\x7f"}, "U+007F", id="control-7f"),
    pytest.param({"k": "\x9f"}, "U+009F", id="control-9f"),
    pytest.param({"k": "\ufffe"}, "U+FFFE", id="nonchar-fffe"),
    pytest.param({"k": "\ufdd0"}, "U+FDD0", id="nonchar-fdd0"),
    pytest.param({"k": "\U0001ffff"}, "U+1FFFF", id="nonchar-1ffff"),
    pytest.param({"k": "\u00e9" * 40_000}, "65535", id="too-long-value"),
    pytest.param({"k" * 70_000: "v"}, "65535", id="too-long-key"),
    pytest.param({"mqtt.content_type": "text\x00"}, "U+0000", id="content-type"),
    pytest.param({"mqtt.response_topic": "re\x00ply"}, "U+0000", id="response-topic-nul"),
    pytest.param({"mqtt.response_topic": "reply/#"}, "wildcard", id="response-topic-wildcard"),
    pytest.param({"mqtt.response_topic": ""}, "empty", id="response-topic-empty"),
    pytest.param({"mqtt.correlation_data": "ab" * 70_000}, "65535", id="correlation-too-long"),
    pytest.param(
        {"mqtt.user_properties": json.dumps([["k", "v\x00"]])}, "U+0000", id="user-properties"
    ),
]

# In-process topics the broker takes but MQTT cannot carry (U+0000 is refused at publish).
BAD_TOPICS = [
    pytest.param("w/tab\there", "U+0009", id="tab"),
    pytest.param("w/\x01", "U+0001", id="control-01"),
    pytest.param("w/\x7f", "U+007F", id="del"),
    pytest.param("w/a\x85b", "U+0085", id="nel"),
    pytest.param("w/\ufdef", "U+FDEF", id="nonchar"),
]


def subscriber(srv: Srv, version: int, client_id: str, qos: int = 1) -> Raw:
    """A raw client with a persistent session subscribed to ``w/#``."""
    c = Raw(srv, version)
    props = codec.Properties(session_expiry_interval=300) if version == 5 else codec.NO_PROPERTIES
    assert c.connect(client_id, clean_start=False, properties=props).reason_code == 0
    c.send(
        codec.Subscribe(
            packet_id=1, subscriptions=(codec.SubscriptionRequest(topic_filter="w/#", qos=qos),)
        ).encode(version)
    )
    assert isinstance(c.packet(), codec.SubAck)
    return c


def next_publish(c: Raw) -> codec.Publish:
    """The next PUBLISH (a decoding error here is the bug: the server sent a malformed one)."""
    got = c.packet()
    assert isinstance(got, codec.Publish), got
    if got.qos:
        c.send(codec.PubAck(packet_id=got.packet_id).encode(c.version))
    return got


def dropped(srv: Srv, topic: str) -> int:
    found = srv.broker.metrics().topics.get(topic)
    return 0 if found is None else found.dropped


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize(("meta", "named"), BAD_META)
def test_unsendable_meta_is_dropped_for_v5_clients_and_the_session_goes_on(
    srv: Srv, meta: dict[str, str], named: str, qos: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mqkit.mqtt")
    with subscriber(srv, 5, "v5", qos) as v5, subscriber(srv, 4, "v3", qos) as v3:
        for i in range(2):
            srv.broker.publish("w/bad", mqkit.Message(f"bad{i}", b"bad", meta=meta))
        srv.broker.publish("w/ok", mqkit.Message("ok", b"ok", meta={"k": "v"}))
        got = next_publish(v5)
        assert (got.topic, got.payload) == ("w/ok", b"ok")  # the bad ones were not sent
        assert got.properties.user_properties == (("k", "v"),)
        # An MQTT 3.1.1 client gets no properties: it can take both messages.
        assert [next_publish(v3).topic for _ in range(3)] == ["w/bad", "w/bad", "w/ok"]
    assert dropped(srv, "w/bad") == 2  # once per message, for the one client that lost it
    logged = [r.getMessage() for r in caplog.records if "'w/bad'" in r.getMessage()]
    assert len(logged) == 1, logged  # once per topic
    assert named in logged[0]
    with subscriber(srv, 5, "v5", qos) as v5:  # reconnect: nothing is resent, the flow goes on
        srv.broker.publish("w/ok", mqkit.Message("ok2", b"ok2"))
        assert next_publish(v5).payload == b"ok2"


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
@pytest.mark.parametrize(("topic", "named"), BAD_TOPICS)
def test_unsendable_topic_is_dropped_for_every_client(
    srv: Srv, topic: str, named: str, version: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mqkit.mqtt")
    inproc = srv.broker.subscribe(topic)  # in-process, the topic is fine
    with subscriber(srv, version, f"t{version}") as c:
        srv.broker.publish(topic, mqkit.Message("bad", b"bad"))
        srv.broker.publish("w/ok", mqkit.Message("ok", b"ok"))
        assert next_publish(c).topic == "w/ok"
    assert inproc.get(timeout=TIMEOUT).id == "bad"
    assert dropped(srv, topic) == 1
    assert any(named in r.getMessage() and repr(topic) in r.getMessage() for r in caplog.records)


def test_queued_while_offline_is_dropped_at_reconnect_not_resent_for_ever(srv: Srv) -> None:
    subscriber(srv, 5, "off").close()
    srv.broker.publish("w/bad", mqkit.Message("bad", b"bad", meta={"k": "\x00"}))
    srv.broker.publish("w/ok", mqkit.Message("ok", b"ok"))
    for attempt in range(2):  # the good one (once), never the bad one
        with Raw(srv, 5) as c:
            props = codec.Properties(session_expiry_interval=300)
            assert c.connect("off", clean_start=False, properties=props).session_present
            srv.broker.publish("w/ok", mqkit.Message(f"more{attempt}", b"more"))
            got = [next_publish(c).payload for _ in range(2 - attempt)]
            assert got == ([b"ok", b"more"] if attempt == 0 else [b"more"])
    assert dropped(srv, "w/bad") == 1


def test_in_flight_to_v311_then_resumed_by_v5_is_dropped_and_frees_its_slot(srv: Srv) -> None:
    """A session taken from an MQTT 3.1.1 connection by an MQTT 5 one with Receive Maximum 1."""
    with subscriber(srv, 4, "swap") as v3:
        srv.broker.publish("w/bad", mqkit.Message("bad", b"bad", meta={"k": "\x00"}))
        got = v3.packet()  # fine for 3.1.1; left unacknowledged
        assert isinstance(got, codec.Publish) and got.topic == "w/bad"
    with Raw(srv, 5) as v5:
        props = codec.Properties(session_expiry_interval=300, receive_maximum=1)
        ack = v5.connect("swap", clean_start=False, properties=props)
        assert ack.session_present
        srv.broker.publish("w/ok", mqkit.Message("ok", b"ok"))
        got = next_publish(v5)  # the in-flight one is dropped, and its window slot freed
        assert (got.topic, got.payload, got.dup) == ("w/ok", b"ok", False)
    assert dropped(srv, "w/bad") == 1


def test_v5_connack_assigns_an_id_only_when_the_client_sent_none(srv: Srv) -> None:
    """libmosquitto treats an Assigned Client Identifier it did not ask for as a protocol error."""
    with Raw(srv) as c:
        assert c.connect("mine").properties.assigned_client_identifier is None
    with Raw(srv) as c:
        assert c.connect("").properties.assigned_client_identifier


@pytest.mark.usefixtures("mosquitto_clients")
def test_mosquitto_sub_keeps_its_session(srv: Srv) -> None:
    """libmosquitto refuses control characters: before the fix it disconnected, for good."""
    args = ["mosquitto_sub", "-h", srv.host, "-p", str(srv.port), "-V", "5", "-i", "mosq"]
    args += ["-c", "-x", "300", "-q", "1", "-t", "w/#", "-v", "-C", "1", "-W", str(int(TIMEOUT))]
    # Make the persistent session (and its subscription) first; it queues while offline.
    subprocess.run([*args[:-4], "-E"], check=True, timeout=TIMEOUT, capture_output=True)
    srv.broker.publish("w/bad", mqkit.Message("bad", b"bad", meta={"note": "two\nlines"}))
    srv.broker.publish("w/ok", mqkit.Message("ok", b"ok"))
    run = subprocess.run(args, timeout=TIMEOUT * 2, capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (0, "w/ok ok\n"), run.stderr


def test_sendable_strings_are_untouched(srv: Srv, caplog: pytest.LogCaptureFixture) -> None:
    """The check refuses only what it must: other Unicode (BOM, emoji, U+2028...) goes through."""
    caplog.set_level(logging.WARNING, logger="mqkit.mqtt")
    meta = {"k\u00e9": "\ufeff\U0001f600 \u00a0\u2028", "mqtt.response_topic": "re/\u00e9"}
    with subscriber(srv, 5, "good") as c:
        srv.broker.publish("w/\U0001f600", mqkit.Message("m", b"m", meta=meta))
        got = next_publish(c)
    assert got.topic == "w/\U0001f600"
    assert got.properties.user_properties == (("k\u00e9", "\ufeff\U0001f600 \u00a0\u2028"),)
    assert got.properties.response_topic == "re/\u00e9"
    assert dropped(srv, "w/\U0001f600") == 0
    assert not [r for r in caplog.records if r.name == "mqkit.mqtt"]
