"""Per-vhost permissions ([amqp] permissions_file): configure, write and read expressions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import pytest

import mqkit
from mqkit.protocols.mqtt.auth import hash_password

from .conftest import AMQPServer
from .helpers import connect


@pytest.fixture
def server(amqp_server_factory: Callable[..., AMQPServer], tmp_path: Path) -> AMQPServer:
    users = tmp_path / "users.txt"
    users.write_text(
        "".join(f"{u}:{hash_password('pw', 'pbkdf2-sha256')}\n" for u in ("admin", "app", "ro"))
    )
    permissions = tmp_path / "permissions.txt"
    permissions.write_text(
        "# user vhost configure write read\n"
        'admin  /        ".*"     ".*"          ".*"\n'
        'app    /        "^app-"  "^(app-|amq\\.default$)"  "^app-"\n'
        'ro     /        ""       ""            "^app-"\n'
        'admin  staging  ".*"     ".*"          ".*"\n'
    )
    return amqp_server_factory(
        {"password_file": str(users), "permissions_file": str(permissions), "vhosts": "/,staging"}
    )


def refused(call: Callable[[], object]) -> int:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        call()
    return int(info.value.reply_code)


def test_configure_write_and_read_are_checked(server: AMQPServer) -> None:
    app = connect(server, "app", "pw")
    ch = app.channel()
    ch.queue_declare("app-jobs")
    ch.basic_publish("", "app-jobs", b"job")
    assert ch.basic_get("app-jobs", auto_ack=True)[2] == b"job"
    assert refused(lambda: app.channel().queue_declare("other")) == 403
    assert refused(lambda: app.channel().exchange_declare("other", "fanout")) == 403
    ch = app.channel()
    ch.basic_publish("amq.fanout", "", b"not allowed")
    assert refused(lambda: ch.queue_declare("app-jobs", passive=True)) == 403

    ro = connect(server, "ro", "pw")
    ch = ro.channel()
    assert ch.basic_get("app-jobs", auto_ack=True)[0] is None  # reading is allowed
    ch.basic_publish("", "app-jobs", b"x")
    assert refused(lambda: ch.queue_declare("app-jobs", passive=True)) == 403
    assert refused(lambda: ro.channel().queue_delete("app-jobs")) == 403
    app.close()
    ro.close()


def test_a_vhost_without_permissions_cannot_be_opened(server: AMQPServer) -> None:
    params = pika.URLParameters(
        f"amqp://app:pw@{server.host}:{server.port}/staging?socket_timeout=10"
    )
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params)
    admin = pika.BlockingConnection(
        pika.URLParameters(f"amqp://admin:pw@{server.host}:{server.port}/staging?socket_timeout=10")
    )
    admin.channel().queue_declare("anything")
    admin.close()


def test_a_bad_permissions_file_fails_the_broker(tmp_path: Path) -> None:
    bad = tmp_path / "permissions.txt"
    bad.write_text('app / "(" ".*" ".*"\n')
    settings = {"amqp": {"permissions_file": str(bad)}}
    with pytest.raises(mqkit.InvalidConfigError, match=r"amqp\.permissions_file.*line 1"):
        mqkit.Broker(mqkit.Config(enable_amqp=True, settings=settings))


@pytest.mark.parametrize("section", ["amqp", "mqtt"])
def test_a_password_file_that_cannot_be_read_names_its_own_setting(
    tmp_path: Path, section: str
) -> None:
    # the gateways share the password file's code (mqkit/protocols/passwords.py): each error
    # names the setting of the gateway that read it
    missing = str(tmp_path / "no-such-file")
    settings = {section: {"password_file": missing}}
    cfg = mqkit.Config(
        enable_amqp=section == "amqp", enable_mqtt=section == "mqtt", settings=settings
    )
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Broker(cfg)
    assert f"{section}.password_file cannot be read" in str(info.value)
    assert info.value.field == f"{section}.password_file"
