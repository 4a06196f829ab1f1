"""Password file, ACLs, the authentication hooks, TLS (and client certificates), connection limits.

ACLs and the connection limit are seen both through the raw client (exact bytes) and through
paho-mqtt 2.x (the reason codes its callbacks report). Enhanced authentication (AUTH) is
raw-only: paho-mqtt 2.2 cannot answer an AUTH packet.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

import mqkit
from mqkit.protocols.mqtt import MQTTSettings, codec
from mqkit.protocols.mqtt.auth import AccessControl, hash_password, verify_password
from mqkit.protocols.mqtt.codec import Reason

from .helpers import TIMEOUT, Paho, Raw, Srv

ServerFactory = Callable[..., Srv]


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "passwd"
    path.write_text(
        f"alice:{hash_password('wonderland')}\nbob:{hash_password('builder', 'pbkdf2-sha256')}\n"
    )
    return str(path)


def test_hashes_are_salted_and_verify() -> None:
    a, b = hash_password("pw"), hash_password("pw")
    assert a != b
    assert verify_password(a, b"pw") and not verify_password(a, b"nope")
    assert not verify_password("garbage", b"pw")


def test_the_passwd_command_writes_a_verifiable_entry_without_warnings(tmp_path: Path) -> None:
    """docs/mqtt.md's command, with warnings as errors (runpy warned about a double import)."""
    path = tmp_path / "passwd"
    run = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "mqkit.protocols.mqtt.auth",
            "passwd",
            str(path),
            "carol",
        ],
        input="s3cret\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    user, _, stored = path.read_text().strip().partition(":")
    assert user == "carol" and verify_password(stored, b"s3cret")


@pytest.mark.parametrize("version", [4, 5])
def test_password_file(server_factory: ServerFactory, password_file: str, version: int) -> None:
    srv = server_factory(password_file=password_file, allow_anonymous=False)
    with Raw(srv, version) as c:
        assert c.connect("a", username="alice", password=b"wonderland").reason_code == 0
    with Raw(srv, version) as c:
        assert c.connect("b", username="bob", password=b"builder").reason_code == 0
    bad = Reason.BAD_USER_NAME_OR_PASSWORD if version == 5 else Reason.V3_BAD_USER_NAME_OR_PASSWORD
    with Raw(srv, version) as c:
        assert c.connect("x", username="alice", password=b"wrong").reason_code == bad
        assert c.closed()
    anonymous = Reason.NOT_AUTHORIZED if version == 5 else Reason.V3_NOT_AUTHORIZED
    with Raw(srv, version) as c:
        assert c.connect("y").reason_code == anonymous


@pytest.mark.usefixtures("mosquitto_clients")
def test_mosquitto_clients_authenticate(server_factory: ServerFactory, password_file: str) -> None:
    srv = server_factory(password_file=password_file, allow_anonymous=False)
    inproc = srv.broker.subscribe("auth/x")
    base = ["mosquitto_pub", "-h", srv.host, "-p", str(srv.port), "-t", "auth/x", "-q", "1"]
    ok = subprocess.run([*base, "-m", "in", "-u", "alice", "-P", "wonderland"], timeout=TIMEOUT)
    assert ok.returncode == 0
    assert inproc.get(timeout=TIMEOUT).data == b"in"
    bad = subprocess.run(
        [*base, "-m", "out", "-u", "alice", "-P", "x"], capture_output=True, timeout=TIMEOUT
    )
    assert bad.returncode != 0


ACL = """
topic read public/#
user alice
topic readwrite sensors/#
topic write commands/alice/+
pattern readwrite clients/%c/#
"""


def test_acl_parsing_and_rules() -> None:
    acl = AccessControl.parse(ACL)
    assert acl.allowed("alice", "c1", "subscribe", "sensors/+/temp")
    assert acl.allowed("alice", "c1", "publish", "commands/alice/x")
    assert not acl.allowed("alice", "c1", "subscribe", "commands/alice/x")
    assert acl.allowed(None, "c1", "subscribe", "public/news")
    assert not acl.allowed(None, "c1", "publish", "public/news")
    assert acl.allowed(None, "c1", "publish", "clients/c1/state")
    assert not acl.allowed(None, "c2", "publish", "clients/c1/state")
    with pytest.raises(mqkit.InvalidConfigError, match=r"mqtt\.acl_file line 1"):
        AccessControl.parse("bogus line")


def test_acls_over_the_wire(
    server_factory: ServerFactory, password_file: str, tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    srv = server_factory(password_file=password_file, acl_file=str(acl))
    inproc = srv.broker.subscribe("sensors/x")
    with Raw(srv) as c:
        c.connect("a1", username="alice", password=b"wonderland")
        reqs = tuple(
            codec.SubscriptionRequest(topic_filter=f, qos=1)
            for f in ("sensors/#", "secret/#", "public/+")
        )
        c.send(codec.Subscribe(packet_id=1, subscriptions=reqs).encode())
        ack = c.packet()
        assert isinstance(ack, codec.SubAck)
        assert ack.reason_codes == (1, Reason.NOT_AUTHORIZED, 1)
        c.send(codec.Publish(topic="secret/x", payload=b"no", qos=1, packet_id=2).encode())
        assert c.raw_packet() == b"\x40\x03\x00\x02\x87"
        c.send(codec.Publish(topic="sensors/x", payload=b"yes", qos=1, packet_id=3).encode())
        got = [c.packet(), c.packet()]
        assert any(isinstance(p, codec.PubAck) and p.reason_code == 0 for p in got)
    assert inproc.get(timeout=TIMEOUT).data == b"yes"
    with Raw(srv, 4) as c:  # 3.1.1 cannot say "not authorized": acked, dropped
        c.connect("anon")
        c.send(codec.Publish(topic="sensors/x", payload=b"dropped", qos=1, packet_id=4).encode(4))
        assert c.raw_packet() == b"\x40\x02\x00\x04"
        req = codec.SubscriptionRequest(topic_filter="sensors/#")
        c.send(codec.Subscribe(packet_id=5, subscriptions=(req,)).encode(4))
        assert c.raw_packet() == b"\x90\x03\x00\x05\x80"
    with pytest.raises(TimeoutError):
        inproc.get(timeout=0.2)


class EnhancedAuth:
    """A challenge-response method for the hook: the answer must be the challenge reversed."""

    @mqkit.hookimpl
    def mqkit_authenticate(
        self, protocol: str, method: str, data: bytes | None, state: dict[str, object]
    ) -> bool | bytes | None:
        if protocol != "mqtt" or method != "REVERSE":
            return None
        if data is None:  # a new exchange: CONNECT, or AUTH 0x19 to re-authenticate
            state["challenge"] = b"abc123"
            return b"abc123"
        return data == b"321cba"


def test_enhanced_authentication_with_auth_packets() -> None:
    broker = mqkit.Broker(mqkit.Config(enable_mqtt=True, mqtt_port=0), plugins=[EnhancedAuth()])
    try:
        host, port = broker.start_mqtt_server()
        with Raw((host, port)) as c:
            props = codec.Properties(authentication_method="REVERSE")
            c.send(codec.Connect(client_id="e", properties=props).encode())
            challenge = c.packet()
            assert isinstance(challenge, codec.Auth)
            assert challenge.reason_code == Reason.CONTINUE_AUTHENTICATION
            assert challenge.properties.authentication_data == b"abc123"
            answer = codec.Properties(
                authentication_method="REVERSE", authentication_data=b"321cba"
            )
            c.send(codec.Auth(reason_code=0x18, properties=answer).encode())
            ack = c.packet()
            assert isinstance(ack, codec.ConnAck) and ack.reason_code == 0
            # Re-authentication on the same connection.
            c.send(codec.Auth(reason_code=0x19, properties=props).encode())
            assert isinstance(c.packet(), codec.Auth)
            c.send(codec.Auth(reason_code=0x18, properties=answer).encode())
            done = c.packet()
            assert isinstance(done, codec.Auth) and done.reason_code == 0
        with Raw((host, port)) as c:
            props = codec.Properties(authentication_method="UNKNOWN")
            c.send(codec.Connect(client_id="u", properties=props).encode())
            assert c.raw_packet() == b"\x20\x03\x00\x8c\x00"
    finally:
        broker.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    return str(d / "ca.pem"), str(d / "cert.pem"), str(d / "key.pem")


@pytest.mark.usefixtures("mosquitto_clients")
def test_tls(server_factory: ServerFactory, tls_files: tuple[str, str, str]) -> None:
    ca, cert, key = tls_files
    srv = server_factory(tls_cert=cert, tls_key=key)
    tls_host, tls_port = srv.plugin.tls_address
    inproc = srv.broker.subscribe("secure/x")
    client = Paho(Srv(srv.broker, tls_host, tls_port), "tls", version=5, connect=False)
    try:
        client.client.tls_set(ca_certs=ca)
        client.connect()
        client.subscribe("secure/#", 1)
        client.publish("secure/x", b"encrypted", 1)
        assert client.get().payload == b"encrypted"
        assert inproc.get(timeout=TIMEOUT).data == b"encrypted"
    finally:
        client.close()
    out = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(tls_port), "--cafile", ca,
         "-t", "secure/x", "-m", "mosq", "-q", "1"],
        capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert inproc.get(timeout=TIMEOUT).data == b"mosq"
    # A client that does not trust the certificate is refused by the TLS handshake.
    context = ssl.create_default_context()
    with (
        socket.create_connection((tls_host, tls_port), timeout=TIMEOUT) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_bad_tls_files_fail_construction(tmp_path: Path) -> None:
    with pytest.raises(mqkit.InvalidConfigError, match=r"mqtt\.tls_cert"):
        mqkit.Broker(
            mqkit.Config(
                enable_mqtt=True,
                settings={
                    "mqtt": MQTTSettings(
                        tls_cert=str(tmp_path / "none.pem"), tls_key=str(tmp_path / "none.key")
                    )
                },
            )
        )


def test_connection_limit(server_factory: ServerFactory) -> None:
    srv = server_factory(max_connections=2)
    with Raw(srv) as a, Raw(srv, 4) as b:
        assert a.connect("a").reason_code == 0
        assert b.connect("b").reason_code == 0
        with Raw(srv) as c:
            assert c.connect("c").reason_code == Reason.QUOTA_EXCEEDED
        with Raw(srv, 4) as d:
            assert d.connect("d").reason_code == Reason.V3_SERVER_UNAVAILABLE


def test_acls_with_paho(
    server_factory: ServerFactory,
    password_file: str,
    tmp_path: Path,
    paho_factory: Callable[..., Paho],
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    srv = server_factory(password_file=password_file, acl_file=str(acl))
    inproc = srv.broker.subscribe("sensors/x")
    alice = paho_factory(srv, "a1", version=5, connect=False)
    alice.client.username_pw_set("alice", "wonderland")
    alice.connect()
    requests = [("sensors/#", 1), ("secret/#", 1), ("public/+", 1), ("commands/alice/+", 1)]
    result, _ = alice.client.subscribe(requests)
    assert result == 0 and alice.subscribed.wait(TIMEOUT)
    assert [r.value for r in alice.granted] == [1, Reason.NOT_AUTHORIZED, 1, Reason.NOT_AUTHORIZED]
    assert alice.publish("secret/x", b"no", 1) == Reason.NOT_AUTHORIZED
    assert alice.publish("public/news", b"no", 1) == Reason.NOT_AUTHORIZED  # read only
    assert alice.publish("commands/alice/go", b"yes", 1) == 0  # write only
    assert alice.publish("sensors/x", b"yes", 1) == 0
    assert inproc.get(timeout=TIMEOUT).data == b"yes"
    assert alice.get().payload == b"yes"  # through "sensors/#"
    srv.broker.publish("public/news", mqkit.Message("n", b"news"))
    assert alice.get().payload == b"news"  # through "public/+"
    assert alice.messages.empty()
    anon = paho_factory(srv, "anon", version=4)  # 3.1.1: acked and dropped; SUBACK 0x80
    assert anon.publish("sensors/x", b"dropped", 1) == 0
    anon.subscribed.clear()
    result, _ = anon.client.subscribe([("sensors/#", 1), ("public/#", 1)])
    assert result == 0 and anon.subscribed.wait(TIMEOUT)
    assert [r.value for r in anon.granted] == [0x80, 1]
    with pytest.raises(TimeoutError):
        inproc.get(timeout=0.2)


def test_connection_limit_with_paho(
    server_factory: ServerFactory, paho_factory: Callable[..., Paho]
) -> None:
    srv = server_factory(max_connections=1)
    first = paho_factory(srv, "first", version=5)
    assert first.connack is not None and first.connack[1] == 0
    over5 = paho_factory(srv, "over5", version=5, reconnect=False)
    assert over5.connack is not None and over5.connack[1] == Reason.QUOTA_EXCEEDED
    over4 = paho_factory(srv, "over4", version=4, reconnect=False)
    assert over4.connack is not None
    # 3.1.1 CONNACK return code 3, which paho reports as 0x88 "Server unavailable"
    assert over4.connack[1].getName() == "Server unavailable"
    first.publish("still/here", b"x", 1)  # the first connection is untouched
    assert first.connected.is_set()


@pytest.fixture(scope="module")
def client_cert_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, a server certificate and a client certificate it issued, and a stranger's."""
    ca = trustme.CA()
    other = trustme.CA()
    d = tmp_path_factory.mktemp("mtls")
    files = {name: str(d / f"{name}.pem") for name in ("ca", "server", "client", "stranger")}
    ca.cert_pem.write_to_path(files["ca"])
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(files["server"])
    ca.issue_cert("client-1").private_key_and_cert_chain_pem.write_to_path(files["client"])
    other.issue_cert("client-2").private_key_and_cert_chain_pem.write_to_path(files["stranger"])
    return files


@pytest.mark.usefixtures("mosquitto_clients")
def test_tls_client_certificates(
    server_factory: ServerFactory,
    client_cert_files: dict[str, str],
    paho_factory: Callable[..., Paho],
) -> None:
    f = client_cert_files
    srv = server_factory(tls_cert=f["server"], tls_key=f["server"], tls_ca=f["ca"])
    host, port = srv.plugin.tls_address
    inproc = srv.broker.subscribe("mtls/x")
    client = paho_factory(Srv(srv.broker, host, port), "mtls", version=5, connect=False)
    client.client.tls_set(ca_certs=f["ca"], certfile=f["client"])
    _, reason, _ = client.connect()
    assert reason == 0
    client.publish("mtls/x", b"with a certificate", 1)
    assert inproc.get(timeout=TIMEOUT).data == b"with a certificate"
    base = ["mosquitto_pub", "-h", host, "-p", str(port), "--cafile", f["ca"], "-t", "mtls/x",
            "-q", "1"]  # fmt: skip
    ok = subprocess.run(
        [*base, "-m", "mosq", "--cert", f["client"], "--key", f["client"]],
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert ok.returncode == 0, ok.stderr
    assert inproc.get(timeout=TIMEOUT).data == b"mosq"
    for extra in ([], ["--cert", f["stranger"], "--key", f["stranger"]]):
        refused = subprocess.run(
            [*base, "-m", "refused", *extra], capture_output=True, timeout=TIMEOUT
        )
        assert refused.returncode != 0
    # Without a certificate the server ends the TLS connection: no CONNACK for any CONNECT.
    context = ssl.create_default_context(cafile=f["ca"])
    with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(codec.Connect(client_id="nocert", protocol_level=5).encode())
                answer = tls.recv(1024)
        except (ssl.SSLError, ConnectionError):  # an alert, or a reset: refused all the same
            answer = b""
    assert answer == b""
    with pytest.raises(TimeoutError):
        inproc.get(timeout=0.2)
