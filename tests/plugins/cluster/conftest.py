"""A real ``redis-server`` per test (Debian package ``redis-server``) and cluster brokers on it."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.process import Child
from support.system import require_programs

import mqkit
from mqkit.plugins.cluster import ClusterSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` on 127.0.0.1, its data in ``directory``; restartable on the same port."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.extra = list(extra)
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.directory), "--save", "", "--protected-mode", "no"]
        args += [*self.extra, *extra]
        self.child = Child(args, env=dict(os.environ))
        self.child.wait_for(
            lambda line: "Ready to accept connections" in line, 30, "redis-server did not start"
        )

    def stop(self) -> None:
        child, self.child = self.child, None
        if child is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            child.wait(30)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers (skipped naming the package when it is missing); stop them after."""
    require_programs("redis-server", "redis-server")
    made: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        directory = tmp_path / f"redis{len(made)}"
        directory.mkdir()
        server = RedisServer(directory, *extra)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_factory()


def cluster_config(url: str, node_id: str, **fields: Any) -> mqkit.Config:
    settings = {k: fields.pop(k) for k in list(fields) if k in ClusterSettings.__slots__}
    return mqkit.Config(
        enable_cluster=True,
        cluster_node_id=node_id,
        cluster_sync_interval=fields.pop("cluster_sync_interval", 0.2),
        settings={"cluster": ClusterSettings(url=url, **settings)},
        **fields,
    )


@pytest.fixture
def cluster_broker(redis_server: RedisServer) -> Iterator[Callable[..., mqkit.Broker]]:
    """Brokers in cluster mode on ``redis_server`` (or another url); closed after the test."""
    made: list[mqkit.Broker] = []

    def make(node_id: str, url: str | None = None, **fields: Any) -> mqkit.Broker:
        broker = mqkit.Broker(cluster_config(url or redis_server.url, node_id, **fields))
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


CHILD = Path(__file__).with_name("child.py")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env
