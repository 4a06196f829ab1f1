"""The connection level of the AMQP gateway: handshake, login, tune, heartbeats, close."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import pytest
from pamqp import commands, heartbeat

import mqkit
from mqkit.protocols.mqtt.auth import hash_password

from .conftest import AMQPServer
from .helpers import HEADER, Raw, connect


def test_pika_connects_opens_a_channel_and_closes(mqkit_amqp: AMQPServer) -> None:
    conn = connect(mqkit_amqp)
    channel = conn.channel()
    assert channel.is_open
    props = conn._impl.server_properties
    assert props["product"] == b"mqkit" or props["product"] == "mqkit"
    assert props["capabilities"]["publisher_confirms"] is True
    channel.close()
    conn.close()
    assert conn.is_closed


def test_a_wrong_protocol_header_gets_the_amqp_header_back_and_a_close(
    mqkit_amqp: AMQPServer,
) -> None:
    raw = Raw(mqkit_amqp)
    raw.send(b"AMQP\x01\x01\x00\x0a")
    assert raw.sock.recv(16) == HEADER
    assert raw.sock.recv(16) == b""


def test_http_instead_of_amqp_gets_the_header_and_a_close(mqkit_amqp: AMQPServer) -> None:
    raw = Raw(mqkit_amqp)
    raw.send(b"GET / HTTP/1.1\r\n\r\n")
    assert raw.sock.recv(16) == HEADER
    assert raw.sock.recv(16) == b""


def test_start_offers_plain_and_amqplain(mqkit_amqp: AMQPServer) -> None:
    raw = Raw(mqkit_amqp)
    raw.send(HEADER)
    start = raw.expect(commands.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms.split() == ["PLAIN", "AMQPLAIN"]


def test_tune_proposes_the_settings_and_honours_a_smaller_frame_max(
    amqp_server_factory: Callable[..., AMQPServer],
) -> None:
    server = amqp_server_factory({"frame_max": 8192, "channel_max": 7, "heartbeat": 5})
    raw = Raw(server)
    raw.send(HEADER)
    raw.expect(commands.Connection.Start)
    raw.send_frame(commands.Connection.StartOk(response="\0guest\0guest"))
    tune = raw.expect(commands.Connection.Tune)
    assert (tune.frame_max, tune.channel_max, tune.heartbeat) == (8192, 7, 5)
    conn = connect(server, frame_max=8192, channel_max=7)
    assert conn._impl.params.frame_max == 8192
    channel = conn.channel()
    channel.queue_declare("big")
    body = bytes(range(256)) * 100  # 25600 bytes: four body frames of at most 8184
    channel.basic_publish("", "big", body)
    method, _, got = channel.basic_get("big", auto_ack=True)
    assert method is not None and got == body
    conn.close()


def test_more_channels_than_channel_max_close_the_connection_530(
    amqp_server_factory: Callable[..., AMQPServer],
) -> None:
    # As RabbitMQ: channel-max bounds how many channels are open, not their numbers.
    server = amqp_server_factory({"channel_max": 2})
    raw = Raw(server)
    raw.handshake(channel=False)
    for number in (7, 65535):
        raw.send_frame(commands.Channel.Open(), number)
        raw.expect(commands.Channel.OpenOk)
    raw.send_frame(commands.Channel.Open(), 1)
    close = raw.expect(commands.Connection.Close)
    assert close.reply_code == 530


def test_a_frame_larger_than_frame_max_closes_the_connection_501(
    amqp_server_factory: Callable[..., AMQPServer],
) -> None:
    server = amqp_server_factory({"frame_max": 4096})
    raw = Raw(server)
    raw.handshake()
    raw.send(b"\x03\x00\x01" + (9000).to_bytes(4, "big") + b"x" * 9000 + b"\xce")
    close = raw.expect(commands.Connection.Close)
    assert close.reply_code == 501
    raw.send_frame(commands.Connection.CloseOk())
    assert raw.read_all() == []


def test_login_with_plain_and_amqplain_against_the_password_file(
    amqp_server_factory: Callable[..., AMQPServer], tmp_path: Path
) -> None:
    users = tmp_path / "users.txt"
    users.write_text(f"alice:{hash_password('s3cret', 'pbkdf2-sha256')}\n")
    server = amqp_server_factory({"password_file": str(users)})
    connect(server, "alice", "s3cret").close()
    params = pika.ConnectionParameters(
        host=server.host,
        port=server.port,
        credentials=pika.PlainCredentials("alice", "s3cret"),
        socket_timeout=10,
        connection_attempts=1,
    )
    conn = pika.BlockingConnection(params)
    conn.close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(server, "alice", "wrong")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(server, "guest", "guest")


def test_amqplain_login(amqp_server_factory: Callable[..., AMQPServer], tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text(f"bob:{hash_password('pw', 'pbkdf2-sha256')}\n")
    server = amqp_server_factory({"password_file": str(users)})
    for password, ok in (("pw", True), ("nope", False)):
        raw = Raw(server)
        raw.send(HEADER)
        raw.expect(commands.Connection.Start)
        table = commands.Connection.StartOk(
            mechanism="AMQPLAIN", response=_amqplain("bob", password)
        )
        raw.send_frame(table)
        if ok:
            raw.expect(commands.Connection.Tune)
        else:
            close = raw.expect(commands.Connection.Close)
            assert close.reply_code == 403
        raw.close()


def _amqplain(user: str, password: str) -> str:
    from pamqp import encode

    raw = encode.field_table({"LOGIN": user, "PASSWORD": password})[4:]
    return raw.decode("latin-1")


def test_an_unknown_vhost_is_refused(mqkit_amqp: AMQPServer) -> None:
    params = pika.URLParameters(
        f"amqp://guest:guest@{mqkit_amqp.host}:{mqkit_amqp.port}/nowhere?socket_timeout=10"
    )
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params)


def test_more_vhosts_from_the_settings(amqp_server_factory: Callable[..., AMQPServer]) -> None:
    server = amqp_server_factory({"vhosts": ("/", "staging")})
    params = pika.URLParameters(
        f"amqp://guest:guest@{server.host}:{server.port}/staging?socket_timeout=10"
    )
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("only-in-staging")
    conn.close()
    other = connect(server)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            other.channel().queue_declare("only-in-staging", passive=True)
        assert info.value.reply_code == 404
    finally:
        other.close()


def test_broker_close_sends_connection_close_320(mqkit_amqp: AMQPServer) -> None:
    raw = Raw(mqkit_amqp)
    raw.handshake()
    mqkit_amqp.broker.close()
    close = raw.expect(commands.Connection.Close)
    assert close.reply_code == 320
    assert raw.read_all() == [] or True


def test_pika_sees_connection_forced_on_broker_close(mqkit_amqp: AMQPServer) -> None:
    conn = connect(mqkit_amqp)
    conn.channel()
    mqkit_amqp.broker.close()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.process_data_events(time_limit=10)
    assert info.value.reply_code == 320


def test_client_close_gets_close_ok(mqkit_amqp: AMQPServer) -> None:
    raw = Raw(mqkit_amqp)
    raw.handshake()
    raw.send_frame(commands.Connection.Close(200, "bye", 0, 0))
    raw.expect(commands.Connection.CloseOk)
    assert raw.read_all() == []


def test_a_silent_client_is_dropped_after_two_heartbeats(
    amqp_server_factory: Callable[..., AMQPServer],
) -> None:
    server = amqp_server_factory({"heartbeat": 1})
    raw = Raw(server)
    raw.handshake(heartbeat=1)
    raw.sock.settimeout(10)
    frames = raw.read_all()  # the server's heartbeats, then the end of the stream
    assert frames and all(isinstance(f, heartbeat.Heartbeat) for f in frames)


def test_a_client_that_beats_stays(amqp_server_factory: Callable[..., AMQPServer]) -> None:
    server = amqp_server_factory({"heartbeat": 1})
    raw = Raw(server)
    raw.handshake(heartbeat=1)
    for _ in range(5):  # five server beats (0.5 s apart): 2.5 s, past two intervals
        raw.expect(heartbeat.Heartbeat)
        raw.send_frame(heartbeat.Heartbeat())
    raw.send_frame(commands.Queue.Declare(queue="alive"), 1)
    raw.expect(commands.Queue.DeclareOk)


def test_channel_flow_is_acknowledged(mqkit_amqp: AMQPServer) -> None:
    raw = Raw(mqkit_amqp)
    raw.handshake()
    raw.send_frame(commands.Channel.Flow(False), 1)
    assert raw.expect(commands.Channel.FlowOk).active is False
    raw.send_frame(commands.Channel.Flow(True), 1)
    assert raw.expect(commands.Channel.FlowOk).active is True


@pytest.mark.parametrize(
    ("send", "code"),
    [
        # a method on a channel that was never opened
        (lambda raw: raw.send_frame(commands.Queue.Declare(queue="q"), 5), 504),
        # a content header with no publish before it
        (
            lambda raw: raw.send(
                __import__("pamqp.frame").frame.marshal(
                    __import__("pamqp.header").header.ContentHeader(0, 3), 1
                )
            ),
            505,
        ),
        # a channel method on channel 0
        (lambda raw: raw.send_frame(commands.Queue.Declare(queue="q"), 0), 503),
        # a frame of an unknown type
        (lambda raw: raw.send(b"\x09\x00\x01\x00\x00\x00\x01x\xce"), 501),
        # a frame that does not end in 0xCE
        (lambda raw: raw.send(b"\x01\x00\x01\x00\x00\x00\x04\x00\x14\x00\x0a\x00"), 501),
        # connection.open again
        (lambda raw: raw.send_frame(commands.Connection.Open("/")), 503),
        # a method frame whose arguments are cut short
        (lambda raw: raw.send(b"\x01\x00\x01\x00\x00\x00\x05\x00\x32\x00\x0a\x00\xce"), 502),
    ],
    ids=[
        "unopened-channel",
        "stray-header",
        "channel-0",
        "frame-type",
        "frame-end",
        "reopen",
        "short-args",
    ],
)
def test_bad_frames_close_the_connection_with_their_code_and_the_server_stays_up(
    mqkit_amqp: AMQPServer, send: Callable[[Raw], None], code: int
) -> None:
    raw = Raw(mqkit_amqp)
    raw.handshake()
    send(raw)
    close = raw.expect(commands.Connection.Close)
    assert close.reply_code == code
    raw.send_frame(commands.Connection.CloseOk())
    assert raw.read_all() == []
    conn = connect(mqkit_amqp)
    conn.channel().queue_declare("still-serving")
    conn.close()


def test_enable_amqp_true_starts_the_gateway_from_a_config() -> None:
    broker = mqkit.Broker(mqkit.Config(enable_amqp=True, amqp_port=0))
    try:
        host, port = broker.start_amqp_server()
        assert broker.start_amqp_server() == (host, port)  # idempotent
        assert host == "127.0.0.1" and port > 0
    finally:
        broker.close()


def test_a_port_in_use_is_a_protocol_error(mqkit_amqp: AMQPServer) -> None:
    broker = mqkit.Broker(mqkit.Config(enable_amqp=True, amqp_port=mqkit_amqp.port))
    try:
        with pytest.raises(mqkit.ProtocolError, match="already in use"):
            broker.start_amqp_server()
    finally:
        broker.close()


def test_without_a_password_file_only_guest_logs_in(mqkit_amqp: AMQPServer) -> None:
    connect(mqkit_amqp, "guest", "guest").close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(mqkit_amqp, "guest", "wrong")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(mqkit_amqp, "someone", "guest")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    return str(d / "ca.pem"), str(d / "cert.pem"), str(d / "key.pem")


def test_tls_listener(
    amqp_server_factory: Callable[..., AMQPServer], tls_files: tuple[str, str, str]
) -> None:
    import ssl

    ca, cert, key = tls_files
    server = amqp_server_factory({"tls_cert": cert, "tls_key": key, "tls_port": 0})
    plugin = server.broker.get_plugin("amqp")
    tls_host, tls_port = plugin.tls_address  # type: ignore[attr-defined]
    context = ssl.create_default_context(cafile=ca)
    params = pika.ConnectionParameters(
        host=tls_host,
        port=tls_port,
        ssl_options=pika.SSLOptions(context, "127.0.0.1"),
        socket_timeout=10,
        connection_attempts=1,
    )
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.queue_declare("secure")
        ch.basic_publish("", "secure", b"over tls")
        assert ch.basic_get("secure", auto_ack=True)[2] == b"over tls"
    finally:
        conn.close()


@pytest.mark.parametrize("required", [True, False])
def test_a_client_without_a_certificate_and_tls_ca(
    amqp_server_factory: Callable[..., AMQPServer],
    tls_files: tuple[str, str, str],
    required: bool,
) -> None:
    import ssl

    ca, cert, key = tls_files
    settings = {"tls_cert": cert, "tls_key": key, "tls_ca": ca, "tls_port": 0}
    server = amqp_server_factory({**settings, "tls_fail_if_no_peer_cert": required})
    tls_host, tls_port = server.broker.get_plugin("amqp").tls_address  # type: ignore[attr-defined]
    params = pika.ConnectionParameters(
        host=tls_host,
        port=tls_port,
        ssl_options=pika.SSLOptions(ssl.create_default_context(cafile=ca), "127.0.0.1"),
        socket_timeout=10,
        connection_attempts=1,
    )
    if required:  # RabbitMQ's fail_if_no_peer_cert = true: the handshake fails
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(params)
        return
    conn = pika.BlockingConnection(params)  # verify_peer without fail_if_no_peer_cert
    try:
        assert conn.channel().queue_declare("", exclusive=True).method.queue
    finally:
        conn.close()


def test_bad_tls_files_fail_the_broker(tmp_path: Path) -> None:
    settings = {"amqp": {"tls_cert": str(tmp_path / "no.pem"), "tls_key": str(tmp_path / "no")}}
    with pytest.raises(mqkit.InvalidConfigError, match=r"amqp\.tls_cert"):
        mqkit.Broker(mqkit.Config(enable_amqp=True, settings=settings))


def test_connection_blocked_and_unblocked_on_the_memory_limit(
    amqp_server_factory: Callable[..., AMQPServer],
) -> None:
    import threading

    server = amqp_server_factory(max_memory_usage=200_000)
    conn = connect(server)
    blocked, unblocked = threading.Event(), threading.Event()
    conn.add_on_connection_blocked_callback(lambda *a: blocked.set())
    conn.add_on_connection_unblocked_callback(lambda *a: unblocked.set())
    ch = conn.channel()
    ch.queue_declare("hoard")
    ch.confirm_delivery()
    for _ in range(19):  # 19 x 10 kB: past 90% of the 200 kB limit
        ch.basic_publish("", "hoard", b"x" * 10_000)
    while not blocked.is_set():
        conn.process_data_events(time_limit=1)
    ch.queue_purge("hoard")
    while not unblocked.is_set():
        conn.process_data_events(time_limit=1)
    conn.close()


def test_update_secret_checks_the_new_secret(mqkit_amqp: AMQPServer) -> None:
    raw = Raw(mqkit_amqp)
    raw.handshake()
    raw.send_frame(commands.Connection.UpdateSecret("guest", "rotated"))
    raw.expect(commands.Connection.UpdateSecretOk)
    raw.send_frame(commands.Connection.UpdateSecret("wrong", "rotated"))
    assert raw.expect(commands.Connection.Close).reply_code == 403
