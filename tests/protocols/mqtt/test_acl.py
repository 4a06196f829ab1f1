"""Access control of the MQTT gateway (issue 13, points 1-3), through real sockets.

- A session belongs to the user that created it: another user (or an anonymous client) with
  the same client id is refused and neither resumes nor disconnects it, persisted sessions
  included.
- Read permission is checked for every delivery, so a subscription stops delivering what the
  ACL (after a reload) or an ``mqkit_authorize`` plugin no longer allows.
- ``pattern`` lines never widen: a client id or user name with ``+``, ``#`` or ``/`` (or an
  empty one) is never substituted.
- ``topic deny`` / ``pattern deny`` lines win over every grant.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mqkit
from mqkit.protocols.mqtt import codec
from mqkit.protocols.mqtt.auth import AccessControl, hash_password
from mqkit.protocols.mqtt.codec import Reason

from .helpers import TIMEOUT, Paho, Raw, Srv, make_server

ServerFactory = Callable[..., Srv]

V5_EXPIRY = codec.Properties(session_expiry_interval=300)


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "passwd"
    path.write_text(f"alice:{hash_password('wonderland')}\nbob:{hash_password('builder')}\n")
    return str(path)


CREDENTIALS: dict[str | None, bytes | None] = {
    "alice": b"wonderland",
    "bob": b"builder",
    None: None,
}


def connect(
    srv: Srv | tuple[str, int],
    version: int,
    client_id: str,
    user: str | None,
    *,
    clean: bool = False,
    password: bytes | None = None,
) -> tuple[Raw, codec.ConnAck]:
    """A raw connection; a persistent session unless ``clean``."""
    c = Raw(srv, version)
    props = V5_EXPIRY if version == 5 and not clean else codec.NO_PROPERTIES
    ack = c.connect(
        client_id,
        username=user,
        password=password if password is not None else CREDENTIALS.get(user),
        clean_start=clean,
        properties=props,
    )
    return c, ack


def subscribe(c: Raw, *filters: str, packet_id: int = 1) -> tuple[int, ...]:
    reqs = tuple(codec.SubscriptionRequest(topic_filter=f, qos=1) for f in filters)
    c.send(codec.Subscribe(packet_id=packet_id, subscriptions=reqs).encode(c.version))
    ack = c.packet()
    assert isinstance(ack, codec.SubAck), ack
    return ack.reason_codes


def receive(c: Raw) -> codec.Publish:
    """The next PUBLISH (acknowledged when QoS 1)."""
    p = c.packet()
    assert isinstance(p, codec.Publish), p
    if p.qos == 1:
        c.send(codec.PubAck(packet_id=p.packet_id).encode(c.version))
    return p


def publish_status(c: Raw, topic: str, packet_id: int) -> int:
    """Publish at QoS 1; the PUBACK's reason code (always 0 for 3.1.1)."""
    c.send(codec.Publish(topic=topic, payload=b"x", qos=1, packet_id=packet_id).encode(c.version))
    ack = c.packet()
    assert isinstance(ack, codec.PubAck) and ack.packet_id == packet_id, ack
    return ack.reason_code


def not_authorized(version: int) -> int:
    return Reason.NOT_AUTHORIZED if version == 5 else Reason.V3_NOT_AUTHORIZED


def suback_refused(version: int) -> int:
    return Reason.NOT_AUTHORIZED if version == 5 else 0x80


def ping(c: Raw) -> None:
    """A round trip: the connection is still up and served."""
    c.send(b"\xc0\x00")
    assert c.raw_packet() == b"\xd0\x00"


def write_acl(tmp_path: Path, text: str) -> str:
    path = tmp_path / "acl"
    path.write_text(text)
    return str(path)


# -- 1. a session belongs to its user ------------------------------------------------------------

OWNER_ACL = """
user alice
topic readwrite secret/#
user bob
topic readwrite bob/#
"""


@pytest.fixture
def owned(server_factory: ServerFactory, password_file: str, tmp_path: Path) -> Srv:
    return server_factory(password_file=password_file, acl_file=write_acl(tmp_path, OWNER_ACL))


INTRUDERS = ["bob", None]


@pytest.mark.parametrize("clean", [False, True], ids=["resume", "clean"])
@pytest.mark.parametrize("intruder", INTRUDERS, ids=["other-user", "anonymous"])
@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_another_user_cannot_resume_an_offline_session(
    owned: Srv, version: int, intruder: str | None, clean: bool
) -> None:
    c, ack = connect(owned, version, "alices-phone", "alice")
    with c:
        assert ack.reason_code == 0
        assert subscribe(c, "secret/#") == (1,)
        c.send(codec.Disconnect().encode(version))
        assert c.closed()
    owned.broker.publish("secret/plans", mqkit.Message("m1", b"for alice only"))
    c, ack = connect(owned, version, "alices-phone", intruder, clean=clean)
    with c:
        assert ack.reason_code == not_authorized(version)
        assert not ack.session_present
        assert c.closed()
    # The session was neither taken nor ended: alice gets it back with the queued message.
    c, ack = connect(owned, version, "alices-phone", "alice")
    with c:
        assert ack.reason_code == 0 and ack.session_present
        got = receive(c)
        assert (got.topic, got.payload) == ("secret/plans", b"for alice only")
        owned.broker.publish("secret/live", mqkit.Message("m2", b"live"))
        assert receive(c).payload == b"live"


@pytest.mark.parametrize("clean", [False, True], ids=["resume", "clean"])
@pytest.mark.parametrize("intruder", INTRUDERS, ids=["other-user", "anonymous"])
@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_another_user_cannot_kick_a_connected_session(
    owned: Srv, version: int, intruder: str | None, clean: bool
) -> None:
    alice, ack = connect(owned, version, "alices-laptop", "alice", clean=True)
    with alice:
        assert ack.reason_code == 0
        assert subscribe(alice, "secret/#") == (1,)
        c, ack = connect(owned, version, "alices-laptop", intruder, clean=clean)
        with c:
            assert ack.reason_code == not_authorized(version)
            assert c.closed()
        ping(alice)  # not disconnected, not taken over
        owned.broker.publish("secret/live", mqkit.Message("m", b"still alice's"))
        assert receive(alice).payload == b"still alice's"


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_a_session_of_an_anonymous_client_is_not_taken_by_a_user(
    server_factory: ServerFactory, password_file: str, version: int
) -> None:
    srv = server_factory(password_file=password_file)
    anon, ack = connect(srv, version, "kiosk", None)
    with anon:
        assert ack.reason_code == 0
        c, ack = connect(srv, version, "kiosk", "alice")
        with c:
            assert ack.reason_code == not_authorized(version)
        ping(anon)


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_the_owner_still_takes_over_its_own_session(owned: Srv, version: int) -> None:
    first, ack = connect(owned, version, "alices-tablet", "alice")
    with first:
        assert subscribe(first, "secret/#") == (1,)
        second, ack = connect(owned, version, "alices-tablet", "alice")
        with second:
            assert ack.reason_code == 0 and ack.session_present
            owned.broker.publish("secret/x", mqkit.Message("m", b"to the new connection"))
            assert receive(second).payload == b"to the new connection"
        if version == 5:
            assert first.raw_packet() == b"\xe0\x01\x8e"  # DISCONNECT 0x8E taken over


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_a_restored_session_keeps_its_owner(
    tmp_path: Path, password_file: str, version: int
) -> None:
    config = {
        "enable_persistence": True,
        "persistence_path": str(tmp_path / "data"),
        "password_file": password_file,
        "acl_file": write_acl(tmp_path, OWNER_ACL),
    }
    srv = make_server(**config)
    try:
        c, _ = connect(srv, version, "alices-server", "alice")
        with c:
            assert subscribe(c, "secret/#") == (1,)
            c.send(codec.Disconnect().encode(version))
            assert c.closed()
        srv.broker.publish("secret/plans", mqkit.Message("m1", b"kept for alice"))
    finally:
        srv.broker.close()

    srv = make_server(**config)
    try:
        for intruder in INTRUDERS:
            c, ack = connect(srv, version, "alices-server", intruder)
            with c:
                assert ack.reason_code == not_authorized(version)
                assert not ack.session_present
        c, ack = connect(srv, version, "alices-server", "alice")
        with c:
            assert ack.reason_code == 0 and ack.session_present
            assert receive(c).payload == b"kept for alice"
    finally:
        srv.broker.close()


def test_another_user_is_refused_with_paho(owned: Srv, paho_factory: Callable[..., Paho]) -> None:
    alice = paho_factory(owned, "shared-id", version=5, connect=False)
    alice.client.username_pw_set("alice", "wonderland")
    alice.connect()
    assert [r.value for r in alice.subscribe("secret/#", 1)] == [1]
    bob = paho_factory(owned, "shared-id", version=5, connect=False, reconnect=False)
    bob.client.username_pw_set("bob", "builder")
    _, reason, _ = bob.connect()
    assert reason.value == Reason.NOT_AUTHORIZED
    owned.broker.publish("secret/x", mqkit.Message("m", b"alice's"))
    assert alice.get().payload == b"alice's"
    assert alice.connected.is_set()


# -- 1. read permission is checked for every delivery -------------------------------------------

RELOAD_BEFORE = """
user alice
topic read data/#
"""

RELOAD_AFTER = """
user alice
topic read data/public/#
"""


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_acl_reload_stops_deliveries_it_no_longer_allows(
    server_factory: ServerFactory, password_file: str, tmp_path: Path, version: int
) -> None:
    acl = write_acl(tmp_path, RELOAD_BEFORE)
    srv = server_factory(password_file=password_file, acl_file=acl)
    c, _ = connect(srv, version, "reader", "alice", clean=True)
    with c:
        assert subscribe(c, "data/#") == (1,)
        srv.broker.publish("data/secret/1", mqkit.Message("a", b"allowed before"))
        assert receive(c).payload == b"allowed before"
        Path(acl).write_text(RELOAD_AFTER)
        srv.plugin.reload_acl()
        srv.broker.publish("data/secret/2", mqkit.Message("b", b"not any more"))
        srv.broker.publish("data/public/1", mqkit.Message("c", b"still allowed"))
        got = receive(c)  # one subscription, one pump: "b" would have come first
        assert (got.topic, got.payload) == ("data/public/1", b"still allowed")
        assert subscribe(c, "data/secret/#", packet_id=2) == (suback_refused(version),)
        Path(acl).write_text(RELOAD_BEFORE)
        srv.plugin.reload_acl()
        srv.broker.publish("data/secret/3", mqkit.Message("d", b"allowed again"))
        assert receive(c).payload == b"allowed again"


def test_a_bad_acl_file_is_refused_at_reload_and_the_old_rules_stay(
    server_factory: ServerFactory, password_file: str, tmp_path: Path
) -> None:
    acl = write_acl(tmp_path, RELOAD_BEFORE)
    srv = server_factory(password_file=password_file, acl_file=acl)
    Path(acl).write_text("user alice\ntopic read data/#\ntopic read bad/#/filter\n")
    with pytest.raises(mqkit.InvalidConfigError, match=r"mqtt\.acl_file line 3"):
        srv.plugin.reload_acl()
    c, _ = connect(srv, 5, "reader", "alice", clean=True)
    with c:
        assert subscribe(c, "data/#") == (1,)


def test_a_queued_message_is_not_delivered_after_the_acl_took_it_away(
    server_factory: ServerFactory, password_file: str, tmp_path: Path
) -> None:
    acl = write_acl(tmp_path, RELOAD_BEFORE)
    srv = server_factory(password_file=password_file, acl_file=acl)
    c, _ = connect(srv, 5, "offline-reader", "alice")
    with c:
        assert subscribe(c, "data/#") == (1,)
        c.send(codec.Disconnect().encode())
        assert c.closed()
    srv.broker.publish("data/secret/1", mqkit.Message("a", b"queued, then revoked"))
    srv.broker.publish("data/public/1", mqkit.Message("b", b"queued and allowed"))
    Path(acl).write_text(RELOAD_AFTER)
    srv.plugin.reload_acl()
    c, ack = connect(srv, 5, "offline-reader", "alice")
    with c:
        assert ack.session_present
        got = receive(c)
        assert (got.topic, got.payload) == ("data/public/1", b"queued and allowed")


def test_an_unacknowledged_message_is_not_resent_after_the_acl_took_it_away(
    server_factory: ServerFactory, password_file: str, tmp_path: Path
) -> None:
    acl = write_acl(tmp_path, RELOAD_BEFORE)
    srv = server_factory(password_file=password_file, acl_file=acl)
    c, _ = connect(srv, 5, "slow-reader", "alice")
    with c:
        assert subscribe(c, "data/#") == (1,)
        srv.broker.publish("data/secret/1", mqkit.Message("a", b"in flight, then revoked"))
        sent = c.packet()  # not acknowledged: in flight when the client goes
        assert isinstance(sent, codec.Publish) and sent.topic == "data/secret/1"
        c.send(codec.Disconnect().encode())
        assert c.closed()
    Path(acl).write_text(RELOAD_AFTER)
    srv.plugin.reload_acl()
    srv.broker.publish("data/public/1", mqkit.Message("b", b"allowed"))
    c, ack = connect(srv, 5, "slow-reader", "alice")
    with c:
        assert ack.session_present
        got = receive(c)  # the resend of "a" would have come first
        assert (got.topic, got.payload, got.dup) == ("data/public/1", b"allowed", False)


SERVE_BEFORE = """
user pub
topic write data/#
user alice
topic read data/#
"""


class Lines:
    """The stdout lines of a process, read on a thread (so that waits can time out)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        self.stdout = proc.stdout
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.stdout:
            self.lines.put(line)

    def next(self) -> str:
        return self.lines.get(timeout=TIMEOUT).strip()

    def close(self) -> None:
        """After the process ended: the reader sees the end of the pipe, then it is closed."""
        self.thread.join(TIMEOUT)
        self.stdout.close()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX only")
def test_the_standalone_gateway_reloads_the_acl_on_sighup(tmp_path: Path) -> None:
    acl = write_acl(tmp_path, SERVE_BEFORE)
    command = [sys.executable, "-m", "mqkit.protocols.mqtt.serve", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--acl-file", acl], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    out = Lines(proc)
    try:
        word, host, port = out.next().split()
        assert word == "listening"
        address = (host, int(port))
        reader, _ = connect(address, 5, "reader", "alice", clean=True)
        writer, _ = connect(address, 5, "writer", "pub", clean=True)
        with reader, writer:
            assert subscribe(reader, "data/#") == (1,)
            Path(acl).write_text(SERVE_BEFORE.replace("topic read data/#", "topic read data/p/#"))
            proc.send_signal(signal.SIGHUP)
            assert out.next() == "acl reloaded"
            assert publish_status(writer, "data/secret", 1) == 0
            assert publish_status(writer, "data/p/ok", 2) == 0
            assert receive(reader).topic == "data/p/ok"
            Path(acl).write_text("topic read data/#/wrong\n")
            proc.send_signal(signal.SIGHUP)
            assert out.next().startswith("acl not reloaded: ")
            assert publish_status(writer, "data/secret", 3) == 0  # the rules in force stay
            assert publish_status(writer, "data/p/still", 4) == 0
            assert receive(reader).topic == "data/p/still"
    finally:
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0
        out.close()


class NoSecrets:
    """An ``mqkit_authorize`` plugin: any filter may be subscribed, no topic ``*/secret``."""

    @mqkit.hookimpl
    def mqkit_authorize(self, protocol: str, action: str, topic: str) -> bool | None:
        if protocol != "mqtt" or action != "subscribe":
            return None
        return not topic.endswith("/secret")


@pytest.fixture
def no_secrets() -> Iterator[tuple[str, int]]:
    broker = mqkit.Broker(mqkit.Config(enable_mqtt=True, mqtt_port=0), plugins=[NoSecrets()])
    try:
        yield broker.start_mqtt_server()
    finally:
        broker.close()


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_every_delivery_asks_the_authorize_hook(no_secrets: tuple[str, int], version: int) -> None:
    with Raw(no_secrets, version) as pub:
        pub.connect("pub")
        pub.send(codec.Publish(topic="x/secret", payload=b"hidden", retain=True).encode(version))
        pub.send(codec.Publish(topic="x/open", payload=b"retained", retain=True).encode(version))
        ping(pub)
        with Raw(no_secrets, version) as c:
            c.connect("sub")
            assert subscribe(c, "x/#") == (1,)
            got = receive(c)  # retained: x/secret came first and was not sent
            assert (got.topic, got.payload) == ("x/open", b"retained")
            pub.send(codec.Publish(topic="x/secret", payload=b"live").encode(version))
            pub.send(codec.Publish(topic="x/open", payload=b"live").encode(version))
            got = receive(c)
            assert (got.topic, got.payload, got.retain) == ("x/open", b"live", False)


# -- 2. ACL patterns never widen ------------------------------------------------------------------

PATTERN_ACL = """
topic readwrite ok/#
pattern readwrite c/%c
pattern readwrite c/%c/#
pattern readwrite u/%u
pattern readwrite u/%u/#
"""

# Each dangerous name and a topic the substituted pattern would have opened to it.
DANGEROUS = [
    pytest.param("+", "{p}/victim/x", id="plus"),
    pytest.param("#", "{p}/victim/x", id="hash"),
    pytest.param("a/b", "{p}/a/b/x", id="slash"),
    pytest.param("a+", "{p}/victim/x", id="plus-in-name"),
    pytest.param("", "{p}//x", id="empty"),
]


@pytest.mark.parametrize("action", ["subscribe", "publish"])
@pytest.mark.parametrize("placeholder", ["%c", "%u"])
@pytest.mark.parametrize(("name", "probe"), DANGEROUS)
def test_patterns_never_widen_the_acl(placeholder: str, name: str, probe: str, action: str) -> None:
    acl = AccessControl.parse(PATTERN_ACL)
    prefix = placeholder[1]
    client_id, username = (name, "user") if placeholder == "%c" else ("client", name)
    topic = probe.format(p=prefix)
    assert not acl.allowed(username, client_id, action, topic)
    if "+" not in name and "#" not in name:  # nor its own (ambiguous) place
        assert not acl.allowed(username, client_id, action, f"{prefix}/{name}")
    # The other placeholder still works for the same client, and a plain name is fine.
    other = "u" if prefix == "c" else "c"
    own = username if other == "u" else client_id
    assert acl.allowed(username, client_id, action, f"{other}/{own}/x")
    assert acl.allowed(
        "user", "client", action, f"{prefix}/{'user' if prefix == 'u' else 'client'}"
    )


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
@pytest.mark.parametrize("placeholder", ["%c", "%u"])
@pytest.mark.parametrize(("name", "probe"), DANGEROUS)
def test_patterns_never_widen_over_the_wire(
    server_factory: ServerFactory,
    tmp_path: Path,
    placeholder: str,
    name: str,
    probe: str,
    version: int,
) -> None:
    srv = server_factory(acl_file=write_acl(tmp_path, PATTERN_ACL))
    inproc = srv.broker.subscribe_matching("every-topic", lambda _topic: True)
    prefix = placeholder[1]
    topic = probe.format(p=prefix)
    client_id, username = (name, "user") if placeholder == "%c" else ("client", name)
    # (An empty client id is replaced by an assigned one, which the pattern then uses.)
    c, ack = connect(srv, version, client_id, username, clean=True, password=b"")
    with c:
        assert ack.reason_code == 0
        assert subscribe(c, topic) == (suback_refused(version),)
        status = publish_status(c, topic, 2)
        if version == 5:
            assert status == Reason.NOT_AUTHORIZED
        assert publish_status(c, "ok/done", 3) == 0  # the connection works; "ok/#" is allowed
    # The refused publish never reached the broker: the next one is the first it got.
    assert inproc.get(timeout=TIMEOUT).topic == "ok/done"


# -- 3. ACL files can deny -------------------------------------------------------------------------

DENY_ACL = """
topic read #
topic deny secret/#
topic readwrite public/#
user alice
topic readwrite alice/#
topic deny alice/locked/#
topic readwrite alice/locked/granted-after-deny
pattern deny clients/%c/admin/#
pattern readwrite clients/%c/#
"""


@pytest.mark.parametrize(
    ("user", "client_id", "action", "topic", "allowed"),
    [
        (None, "c", "subscribe", "public/+", True),
        (None, "c", "subscribe", "secret/#", False),
        (None, "c", "subscribe", "secret/x", False),
        (None, "c", "subscribe", "secret/+/y", False),
        (None, "c", "publish", "secret/x", False),
        (None, "c", "publish", "public/x", True),
        ("alice", "c", "subscribe", "secret/x", False),  # a general deny holds for every user
        ("alice", "c", "publish", "alice/x", True),
        ("alice", "c", "publish", "alice/locked/x", False),
        ("alice", "c", "subscribe", "alice/locked/#", False),
        ("alice", "c", "publish", "alice/locked/granted-after-deny", False),  # order is moot
        ("bob", "c", "publish", "alice/locked/x", False),  # no grant at all
        (None, "c", "publish", "clients/c/state", True),
        (None, "c", "publish", "clients/c/admin/x", False),
        (None, "c", "subscribe", "clients/c/admin/+", False),
        (None, "d", "publish", "clients/c/admin/x", False),
        (None, "c", "subscribe", "#", True),  # wider than the deny: deliveries are filtered
    ],
)
def test_deny_lines_win_over_grants(
    user: str | None, client_id: str, action: str, topic: str, allowed: bool
) -> None:
    acl = AccessControl.parse(DENY_ACL)
    assert acl.allowed(user, client_id, action, topic) is allowed


@pytest.mark.parametrize("name", ["+", "#", "a/b", ""])
def test_a_deny_pattern_that_cannot_be_substituted_denies_everything(name: str) -> None:
    acl = AccessControl.parse("topic readwrite #\npattern deny clients/%c/admin\n")
    assert acl.allowed(None, "plain", "publish", "anything")
    assert not acl.allowed(None, name, "publish", "anything")
    assert not acl.allowed(None, name, "subscribe", "anything/#")


def test_deny_parse_errors() -> None:
    with pytest.raises(mqkit.InvalidConfigError, match=r"mqtt\.acl_file line 2"):
        AccessControl.parse("topic deny a/#\ntopic deny a/#/b\n")


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_deny_over_the_wire(
    server_factory: ServerFactory, password_file: str, tmp_path: Path, version: int
) -> None:
    srv = server_factory(password_file=password_file, acl_file=write_acl(tmp_path, DENY_ACL))
    inproc = srv.broker.subscribe_matching("every-topic", lambda _topic: True)
    c, _ = connect(srv, version, "alice-1", "alice", clean=True)
    with c:
        refused = suback_refused(version)
        assert subscribe(c, "secret/#", "alice/locked/+", "alice/#", "#") == (
            refused,
            refused,
            1,
            1,
        )
        status = publish_status(c, "alice/locked/x", 10)
        assert status == (Reason.NOT_AUTHORIZED if version == 5 else 0)
        assert publish_status(c, "alice/open", 11) == 0
        got = receive(c)
        assert (got.topic, got.payload) == ("alice/open", b"x")
        # "#" was granted, but what a deny covers is never delivered through it.
        srv.broker.publish("secret/plan", mqkit.Message("s", b"denied"))
        srv.broker.publish("alice/locked/y", mqkit.Message("l", b"denied too"))
        srv.broker.publish("news/today", mqkit.Message("n", b"readable"))
        got = receive(c)
        assert (got.topic, got.payload) == ("news/today", b"readable")
    assert inproc.get(timeout=TIMEOUT).topic == "alice/open"  # "alice/locked/x" never got in
