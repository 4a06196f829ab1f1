"""``mosquitto_pub``/``mosquitto_sub`` (Debian's mosquitto-clients) against the gateway."""

from __future__ import annotations

import subprocess

import pytest

import mqkit

from .helpers import TIMEOUT, Srv

pytestmark = pytest.mark.usefixtures("mosquitto_clients")

VERSIONS = pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])


def pub(srv: Srv, *args: str) -> None:
    out = subprocess.run(
        ["mosquitto_pub", "-h", srv.host, "-p", str(srv.port), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr


def sub(srv: Srv, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["mosquitto_sub", "-h", srv.host, "-p", str(srv.port), "-W", str(int(TIMEOUT)), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_subscribed(srv: Srv, count: int = 1) -> None:
    """Wait until ``count`` MQTT subscriptions exist (mosquitto_sub has subscribed)."""
    server = srv.plugin.server
    import time

    deadline = time.monotonic() + TIMEOUT
    while sum(len(s.subs) for s in list(server.sessions.values())) < count:
        assert time.monotonic() < deadline, "mosquitto_sub did not subscribe"
        time.sleep(0.01)


@VERSIONS
def test_pub_sub_qos_and_in_process(srv: Srv, version: str) -> None:
    inproc = srv.broker.subscribe("m/x")
    proc = sub(srv, "-V", version, "-t", "m/#", "-q", "2", "-C", "4", "-v")
    try:
        wait_subscribed(srv)
        for qos in ("0", "1", "2"):
            pub(srv, "-V", version, "-t", "m/x", "-m", f"q{qos}", "-q", qos)
        srv.broker.publish("m/y", mqkit.Message("i", "inproc"))
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.communicate()
    assert sorted(out.splitlines()) == ["m/x q0", "m/x q1", "m/x q2", "m/y inproc"]
    assert [inproc.get(timeout=TIMEOUT).data for _ in range(3)] == [b"q0", b"q1", b"q2"]


@VERSIONS
def test_retained(srv: Srv, version: str) -> None:
    pub(srv, "-V", version, "-t", "keep/a", "-m", "kept", "-r", "-q", "1")
    out = subprocess.run(
        ["mosquitto_sub", "-h", srv.host, "-p", str(srv.port), "-V", version, "-t", "keep/#",
         "-C", "1", "-v", "-W", str(int(TIMEOUT)), "-F", "%t %p %r"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert out.stdout.strip() == "keep/a kept 1"


def test_v5_properties(srv: Srv) -> None:
    inproc = srv.broker.subscribe("props/m")
    pub(
        srv, "-V", "mqttv5", "-t", "props/m", "-m", "p", "-q", "1",
        "-D", "publish", "user-property", "unit", "celsius",
        "-D", "publish", "message-expiry-interval", "30",
        "-D", "publish", "content-type", "text/plain",
    )  # fmt: skip
    message = inproc.get(timeout=TIMEOUT)
    assert isinstance(message, mqkit.TTLMessage)
    assert message.meta["unit"] == "celsius"
    assert message.meta["mqtt.content_type"] == "text/plain"
    assert message.meta["mqtt.message_expiry"] == "30"


def test_will(srv: Srv) -> None:
    inproc = srv.broker.subscribe("will/m")
    proc = sub(srv, "-t", "other", "--will-topic", "will/m", "--will-payload", "gone", "-i", "w")
    try:
        wait_subscribed(srv)
    finally:
        proc.kill()  # no DISCONNECT: the will goes out
        proc.communicate()
    assert inproc.get(timeout=TIMEOUT).data == b"gone"


def test_persistent_session(srv: Srv) -> None:
    first = sub(srv, "-V", "mqttv311", "-c", "-i", "durable", "-q", "1", "-t", "d/#", "-C", "1")
    try:
        wait_subscribed(srv)
        pub(srv, "-t", "d/1", "-m", "one", "-q", "1")
        out, _ = first.communicate(timeout=TIMEOUT)
    finally:
        first.kill()
        first.communicate()
    assert out.strip() == "one"
    pub(srv, "-t", "d/2", "-m", "while away", "-q", "1")
    again = subprocess.run(
        ["mosquitto_sub", "-h", srv.host, "-p", str(srv.port), "-V", "mqttv311", "-c", "-i",
         "durable", "-q", "1", "-t", "d/#", "-C", "1", "-W", str(int(TIMEOUT))],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert again.stdout.strip() == "while away"
