"""The private RabbitMQ node the interop tests and benchmarks start (``benchmarks/servers.py``).

It must boot on its own ports as the current user, serve AMQP, and leave nothing behind: no
process it started (the VM, its helpers, its epmd), no listening port, no directory.
"""

from __future__ import annotations

import socket

import pika
import pytest
from support.rabbitmq import RabbitMQNode, servers
from support.system import require_programs


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_a_node_starts_serves_and_leaves_nothing_behind() -> None:
    require_programs("rabbitmq-server", "rabbitmq-server", "epmd")
    node = RabbitMQNode()
    node.start()
    try:
        assert node.url == f"amqp://guest:guest@127.0.0.1:{node.port}/%2F"
        assert node.nodename.startswith("rabbit-") and node.nodename.endswith("@localhost")
        assert len({node.port, node.dist_port, node.epmd_port} - {5672, 25672, 4369}) == 3
        directory = node.directory
        assert directory is not None and (directory / "mnesia").is_dir()
        started = servers._descendants(node._server.pid)  # the VM and its helpers
        assert any("beam" in servers.Path(f"/proc/{pid}/comm").read_text() for pid, _ in started)
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        ch.queue_declare("node-test")
        ch.confirm_delivery()
        ch.basic_publish("", "node-test", b"hello")
        assert ch.basic_get("node-test", auto_ack=True)[2] == b"hello"
        conn.close()
        epmd = node._epmd
    finally:
        node.stop()
    assert not listening(node.port)
    assert not listening(node.epmd_port)
    assert epmd is not None and epmd.poll() is not None
    alive = [pid for pid, start in started if (servers._stat(pid) or (0, ""))[1] == start]
    assert alive == []
    assert not directory.exists()
    node.stop()  # a second stop does nothing


def test_a_node_that_cannot_listen_fails_with_its_output() -> None:
    require_programs("rabbitmq-server", "rabbitmq-server", "epmd")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        node = RabbitMQNode(port=taken.getsockname()[1])
        with pytest.raises(servers.ServerError, match="RabbitMQ did not start") as failed:
            node.start()
    assert "eaddrinuse" in str(failed.value)  # the node's own log, in the error
    assert node.directory is None  # stopped and removed
    assert node._server is None and node._epmd is None
