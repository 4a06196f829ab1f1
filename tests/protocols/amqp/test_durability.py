"""Durable exchanges, queues, bindings and persistent messages across a restart and a SIGKILL.

With ``enable_persistence`` the gateway writes its durable topology and every persistent
message (delivery-mode 2) of a durable queue as it changes, the message before its confirm;
the next broker on the directory has them back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from .conftest import AMQPServer
from .helpers import TIMEOUT, connect

ROOT = Path(__file__).resolve().parents[3]
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def declare(ch: pika.adapters.blocking_connection.BlockingChannel) -> None:
    ch.exchange_declare("orders", "topic", durable=True)
    ch.exchange_declare("scratch", "fanout", durable=False)
    ch.queue_declare("kept", durable=True, arguments={"x-max-priority": 5})
    ch.queue_declare("transient", durable=False)
    ch.queue_bind("kept", "orders", "eu.#")


def test_a_recovered_queue_bounded_by_bytes_counts_its_recovered_messages(
    amqp_server_factory: Callable[..., AMQPServer], tmp_path: Path
) -> None:
    # The queue is declared again while the gateway loads (before it serves): its running
    # count of ready bytes must include what it recovered, or the bound would let more in.
    config = {"enable_persistence": True, "persistence_path": str(tmp_path)}
    args = {"x-max-length-bytes": 10}
    first = amqp_server_factory(**config)
    conn = connect(first)
    ch = conn.channel()
    ch.queue_declare("bounded", durable=True, arguments=args)
    ch.confirm_delivery()
    for body in (b"aaaa", b"bbbb"):
        ch.basic_publish("", "bounded", body, PERSISTENT)
    conn.close()
    first.broker.close()

    second = amqp_server_factory(**config)
    conn = connect(second)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "bounded", b"cccc", PERSISTENT)  # 12 > 10: the head (aaaa) goes
    got = [ch.basic_get("bounded", auto_ack=True)[2] for _ in range(3)]
    assert got == [b"bbbb", b"cccc", None]
    conn.close()
    second.broker.close()


def test_durable_topology_and_persistent_messages_survive_a_restart(
    amqp_server_factory: Callable[..., AMQPServer], tmp_path: Path
) -> None:
    config = {"enable_persistence": True, "persistence_path": str(tmp_path)}
    first = amqp_server_factory(**config)
    conn = connect(first)
    ch = conn.channel()
    declare(ch)
    ch.confirm_delivery()
    ch.basic_publish("orders", "eu.fr", b"p1", PERSISTENT)
    ch.basic_publish("orders", "eu.de", b"t1")  # transient: gone after the restart
    ch.basic_publish("orders", "eu.it", b"p2", PERSISTENT)
    ch.basic_publish("", "kept", b"p3", PERSISTENT)
    method, _, body = ch.basic_get("kept")
    assert body == b"p1"
    ch.basic_ack(method.delivery_tag)  # settled: not restored
    conn.close()
    first.broker.close()

    second = amqp_server_factory(**config)
    conn = connect(second)
    ch = conn.channel()
    assert ch.queue_declare("kept", durable=True, passive=True).method.message_count == 2
    got = [ch.basic_get("kept", auto_ack=True)[2] for _ in range(2)]
    assert got == [b"p2", b"p3"]
    ch.basic_publish("orders", "eu.es", b"after restart")  # the binding is back
    assert ch.basic_get("kept", auto_ack=True)[2] == b"after restart"
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        conn.channel().exchange_declare("scratch", passive=True)
    assert info.value.reply_code == 404
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        conn.channel().queue_declare("transient", passive=True)
    assert info.value.reply_code == 404
    ch = conn.channel()
    ch.queue_delete("kept")
    ch.exchange_delete("orders")
    conn.close()
    second.broker.close()

    third = amqp_server_factory(**config)
    conn = connect(third)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        conn.channel().queue_declare("kept", passive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        conn.channel().exchange_declare("orders", passive=True)
    conn.close()


CHILD = """
import sys

import mqkit

config = mqkit.Config(
    enable_persistence=True, persistence_path=sys.argv[1], enable_amqp=True, amqp_port=0
)
broker = mqkit.Broker(config)
host, port = broker.start_amqp_server()
sys.stdout.write(f"{port}\\n")
sys.stdout.flush()
sys.stdin.read()  # serve until killed
"""


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Callable[[], tuple[subprocess.Popen[str], int]]]:
    """Start a broker process on the test's directory; every one is killed at the end."""
    script = tmp_path / "broker.py"
    script.write_text(CHILD)
    started: list[subprocess.Popen[str]] = []

    def start() -> tuple[subprocess.Popen[str], int]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "store")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            _, errors = proc.communicate(timeout=TIMEOUT)
            pytest.fail(f"the broker did not start: {errors}")
        return proc, int(line)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


def test_a_confirmed_persistent_message_survives_a_sigkill(
    child: Callable[[], tuple[subprocess.Popen[str], int]],
) -> None:
    proc, port = child()
    params = pika.ConnectionParameters("127.0.0.1", port, socket_timeout=TIMEOUT)
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("jobs", durable=True)
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", "jobs", f"job {i}".encode(), PERSISTENT)  # each one confirmed
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(pika.exceptions.AMQPError):
        conn.process_data_events(time_limit=TIMEOUT)

    _, port = child()
    conn = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", port, socket_timeout=TIMEOUT)
    )
    ch = conn.channel()
    got = []
    while True:
        method, _, body = ch.basic_get("jobs", auto_ack=True)
        if method is None:
            break
        got.append(body)
    assert got == [f"job {i}".encode() for i in range(20)]
    conn.close()
