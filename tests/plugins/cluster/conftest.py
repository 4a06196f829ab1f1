"""A real ``redis-server`` per test (Debian package ``redis-server``) and cluster brokers on it."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
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

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last fsync of the AOF."""
        child, self.child = self.child, None
        if child is not None:
            child.kill(30)

    def wait_for(self, text: str | tuple[str, ...], what: str) -> None:
        """Wait (30 s at most) for the server to log a line containing ``text`` (one of)."""
        assert self.child is not None, "the server is not running"
        texts = (text,) if isinstance(text, str) else text
        self.child.wait_for(lambda line: any(t in line for t in texts), 30, what)


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


class RedisClusterServers:
    """Three redis-servers with ``--cluster-enabled yes``, one primary per third of the slots.

    Each has its own directory (its ``nodes.conf`` in it) and its own bus port; the slots are
    assigned with CLUSTER ADDSLOTSRANGE and the nodes meet with CLUSTER MEET.
    """

    def __init__(self, root: Path, primaries: int = 3) -> None:
        self.root = root
        self.nodes: list[RedisServer] = []
        self.buses: list[int] = []
        self.replicas: list[RedisServer] = []
        for i in range(primaries):
            self.nodes.append(self._server(f"shard{i}"))

    def _server(self, name: str) -> RedisServer:
        directory = self.root / name
        directory.mkdir()
        bus = free_port()
        cluster = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        cluster += ["--cluster-port", str(bus), "--cluster-node-timeout", "5000"]
        self.buses.append(bus)
        return RedisServer(directory, *cluster)

    def add_replica(self, of: int) -> RedisServer:
        """Start a replica of primary ``of`` (CLUSTER MEET, then CLUSTER REPLICATE), synced."""
        replica = self._server(f"replica{len(self.replicas)}")
        self.replicas.append(replica)
        replica.start()
        primary = redis.Redis(port=self.nodes[of].port)
        client = redis.Redis(port=replica.port)
        try:
            primary_id = primary.execute_command("CLUSTER MYID").decode()
            primary.execute_command("CLUSTER MEET", "127.0.0.1", replica.port, self.buses[-1])
            deadline = time.monotonic() + 30
            while True:  # the replica must have heard of the primary through the handshake
                try:
                    client.execute_command("CLUSTER REPLICATE", primary_id)
                    break
                except redis.ResponseError:
                    assert time.monotonic() < deadline, "the replica never met its primary"
        finally:
            primary.close()
            client.close()
        replica.wait_for("MASTER <-> REPLICA sync: Finished with success", "no replica sync")
        return replica

    @property
    def url(self) -> str:
        """The seed node's URL (the client discovers the others)."""
        return self.nodes[0].url

    def start(self) -> None:
        for server in self.nodes:
            server.start()
        per = 16384 // len(self.nodes)
        clients = [redis.Redis(port=s.port) for s in self.nodes]
        try:
            for i, client in enumerate(clients):
                last = 16383 if i == len(clients) - 1 else (i + 1) * per - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", i * per, last)
            for server, bus in zip(self.nodes[1:], self.buses[1:], strict=True):
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", server.port, bus)
        finally:
            for client in clients:
                client.close()
        for server in self.nodes:  # each logs it once it knows every slot's owner
            server.wait_for("Cluster state changed: ok", "the Redis Cluster did not form")

    def stop(self) -> None:
        for server in [*self.replicas, *self.nodes]:
            server.stop()

    def holder(self, key: str) -> int:
        """The index of the node whose data holds ``key`` (asked of every node; -1: none)."""
        found = []
        for i, server in enumerate(self.nodes):
            client = redis.Redis(port=server.port)
            try:
                if client.exists(key):
                    found.append(i)
            except redis.ResponseError:
                pass  # MOVED: the key's slot is not this node's
            finally:
                client.close()
        assert len(found) <= 1, f"{key!r} is on several nodes: {found}"
        return found[0] if found else -1


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """A three-primary Redis Cluster on 127.0.0.1, started and stopped by the fixture."""
    require_programs("redis-server", "redis-server")
    servers = RedisClusterServers(tmp_path)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def primary_with_replica(
    redis_factory: Callable[..., RedisServer],
) -> tuple[RedisServer, RedisServer]:
    """A primary and one replica (``--replicaof``) that has finished its first sync."""
    primary = redis_factory()
    replica = redis_factory("--replicaof", "127.0.0.1", str(primary.port))
    replica.wait_for("MASTER <-> REPLICA sync: Finished with success", "the replica did not sync")
    return primary, replica


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for a whole test module (property tests run many examples on it)."""
    require_programs("redis-server", "redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
