"""How the cluster plugin reaches Redis: one server (with replicas) or a Redis Cluster.

``[cluster] topology`` chooses the client: ``"standalone"`` (the default) is redis-py's
``Redis`` on ``url``; ``"cluster"`` is ``RedisCluster``, which discovers the shards from the
seed node ``url`` and sends each command to the shard holding its key. Every key the plugin
uses in one command is a single key (a topic's stream is hash-tagged, so a topic lives on one
shard), so every command works in both topologies. This module is the one place that knows the
difference: the plugin, its readers and its consumer groups get their clients from
:class:`Connector` and use them the same way.
"""

from __future__ import annotations

import os
import urllib.parse
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

from mqkit.plugins.cluster.settings import ClusterSettings

if TYPE_CHECKING:
    import redis
    import redis.cluster

    Client: TypeAlias = redis.Redis | redis.cluster.RedisCluster
    """A client of either topology (both have the same single-key commands)."""

__all__ = ["Connector", "Direct"]

T = TypeVar("T")


class Connector:
    """Opens Redis clients of the configured topology, with the settings' timeouts.

    No client retries a command on its own (the plugin decides what a failure means). A
    ``RedisCluster`` connects when it is built (to learn the slots), so :meth:`open` may raise
    one of :attr:`down` in that topology; a standalone client connects at its first command.
    """

    def __init__(self, settings: ClusterSettings, client_name: str, replicas: int) -> None:
        import redis  # the `cluster` extra: the plugin imports it first and names a missing one
        import redis.cluster
        import redis.exceptions as rx

        self._redis = redis
        self._cluster_class = redis.cluster.RedisCluster
        self.settings = settings
        self.cluster = settings.topology == "cluster"
        """True for a Redis Cluster (``topology = "cluster"``)."""
        self._client_name = client_name
        self._replicas = replicas
        self.down: tuple[type[BaseException], ...] = (
            rx.ConnectionError,
            rx.TimeoutError,
            OSError,
            rx.ClusterDownError,
            rx.SlotNotCoveredError,
            rx.RedisClusterUnreachableError,
        )
        """What a Redis (or a shard of a Redis Cluster) that cannot be reached raises."""
        self.failed: tuple[type[BaseException], ...] = (
            *self.down,
            rx.RedisError,
            rx.RedisClusterException,
        )
        """What any failed Redis command raises."""
        self._redirected: tuple[type[BaseException], ...] = (rx.AskError, rx.TryAgainError)

    def open(self, read_block: float = 0.0) -> Client:
        """A new client; ``read_block`` seconds are added to its socket timeout (``XREAD``)."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        s = self.settings
        timeout = s.socket_timeout + read_block
        if self._replicas > 0 and not read_block:
            timeout += s.replica_timeout
        if self.cluster:
            return self._cluster_class.from_url(
                s.url,
                socket_connect_timeout=s.connect_timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                client_name=self._client_name,
            )
        return self._redis.Redis.from_url(
            s.url,
            socket_connect_timeout=s.connect_timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            client_name=self._client_name,
        )

    def where(self) -> str:
        """``host:port`` of ``url`` (no credentials), for error texts."""
        parts = urllib.parse.urlsplit(self.settings.url)
        where = f"{parts.hostname or '?'}:{parts.port or 6379}"
        return f"the Redis Cluster seen from {where}" if self.cluster else f"Redis at {where}"

    def on_shard(self, client: Client, key: str, action: Callable[[redis.Redis], T]) -> T:
        """Run ``action`` on one connection to the primary holding ``key``.

        What must share a connection (``XADD`` then ``WAIT``, which counts the replicas that
        have this connection's writes) goes through here. A Redis Cluster that moved the slot
        since the client learned the map answers ``MOVED``/``ASK``: the client relearns the
        slots and the action runs once more on the new owner (nothing was written before).
        """
        if not isinstance(client, self._cluster_class):
            return action(client)
        try:
            return action(client.get_redis_connection(_owner(client, key)))
        except self._redirected:
            client.nodes_manager.initialize()
            return action(client.get_redis_connection(_owner(client, key)))

    def replicas_connected(self, client: Client) -> int:
        """Replicas connected to the primary; in a Redis Cluster, the fewest of any shard."""
        if isinstance(client, self._cluster_class):
            counts = [
                _connected(client.get_redis_connection(node).info("replication"))
                for node in client.get_primaries()  # type: ignore[no-untyped-call]
            ]
            return min(counts, default=0)
        return _connected(client.info("replication"))

    def is_cluster_node(self, client: Client) -> bool:
        """True when a standalone client actually reached a Redis Cluster node."""
        if isinstance(client, self._cluster_class):
            return True
        info: dict[str, Any] = client.info("cluster")
        return bool(int(info.get("cluster_enabled", 0)))


def _owner(client: redis.cluster.RedisCluster, key: str) -> redis.cluster.ClusterNode:
    """The primary that holds ``key``'s slot, as the client last learned the slots."""
    node: redis.cluster.ClusterNode = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    return node


def _connected(info: Any) -> int:
    return int(dict(info).get("connected_slaves", 0))


class Direct:
    """Single commands on connections of their own: the publish hot path of one server.

    redis-py's client takes a connection from its pool under a lock, runs the command through
    its retry and event machinery and gives the connection back: on the 2-core benchmark
    machine about 30 µs of CPU per command, as much as the round trip itself. :meth:`call`
    instead takes a connection from a free list (``deque.pop``/``append`` are atomic, no
    lock), sends the packed command and reads its reply. A thread that finds the list empty
    takes one more connection from the client's pool, so concurrent publishers still run side
    by side. A connection that failed is disconnected (redis-py does it for a lost one) and
    goes back to the list: it connects again on its next command. The connections stay the
    pool's (taken, never given back), so closing the client closes them too.
    """

    def __init__(self, client: redis.Redis) -> None:
        import redis.exceptions as rx

        self._pack: Callable[[tuple[Any, ...]], bytes] | None = None
        try:  # the `cluster` extra's C packer; redis-py's own (which calls it) otherwise
            from hiredis import pack_command

            self._pack = pack_command
        except ImportError:  # pragma: no cover - depends on the install
            pass
        self._pool = client.connection_pool
        self._free: deque[Any] = deque()
        self._refused = rx.ResponseError
        _after_fork.add(self)

    def forget(self) -> None:
        """Drop every connection unclosed: a forked child must not use its parent's sockets.

        (As redis-py's pool does in a child: the parent's connections stay open for it.)
        """
        self._free = deque()

    def call(self, *args: str | bytes) -> Any:
        """Send one command (``str`` and ``bytes`` arguments) and return its reply.

        Raises what redis-py raises for it.
        """
        free = self._free
        try:
            conn = free.pop()
        except IndexError:
            conn = self._pool.get_connection()
        pack = self._pack
        try:
            if pack is not None:
                conn.send_packed_command([pack(args)], check_health=False)
            else:
                conn.send_command(*args, check_health=False)
            reply = conn.read_response()
        except self._refused:  # an error reply: read whole, the connection is in step
            free.append(conn)
            raise
        except BaseException:  # anything else may leave a reply unread: never reuse it as is
            conn.disconnect()
            free.append(conn)
            raise
        free.append(conn)
        return reply


class _AfterFork(weakref.WeakSet[Direct]):
    """Every live :class:`Direct`: a forked child forgets their connections."""

    registered = False

    def add(self, item: Direct) -> None:
        if not self.registered and hasattr(os, "register_at_fork"):  # POSIX; once a process
            os.register_at_fork(after_in_child=self.forget_all)
            type(self).registered = True
        super().add(item)

    def forget_all(self) -> None:
        for direct in list(self):
            direct.forget()


_after_fork: Final = _AfterFork()
