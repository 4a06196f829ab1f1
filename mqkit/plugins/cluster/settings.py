"""The ``[cluster]`` settings section of the cluster plugin (``MQKIT_CLUSTER_<FIELD>`` variables).

The seed's ``enable_cluster``, ``cluster_node_id``, ``cluster_nodes``,
``cluster_replication_factor`` and ``cluster_sync_interval`` stay on :class:`~mqkit.Config`;
how the plugin reaches Redis lives here::

    cfg = mqkit.Config(
        enable_cluster=True,
        cluster_node_id="node-1",
        settings={"cluster": ClusterSettings(url="redis://redis.internal:6379/0")},
    )

``topology = "cluster"`` makes ``url`` one node of a Redis Cluster.

or, in a TOML file, a ``[cluster]`` table (``url = "rediss://user:pass@host:6380/0"``).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import attrs

from mqkit.core.convert import parse_seconds
from mqkit.core.settings import Settings

__all__ = ["ClusterSettings"]

_POSITIVE = "must be positive"

_TOPOLOGIES = ("standalone", "cluster")


def _database(url: str) -> str:
    """The database a Redis URL names (``/3`` or ``?db=3``), ``""`` when it names none."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query).get("db", [""])
    return parts.path.strip("/") or query[0]


def _protocol(url: str) -> str:
    """The RESP version a Redis URL asks for (``?protocol=3``), ``""`` when it names none."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return query.get("protocol", [""])[-1]


def _seconds(value: float | timedelta) -> Any:
    try:
        return parse_seconds(value)
    except ValueError:
        return value  # not a duration: the check names the field


@attrs.frozen(slots=True, kw_only=True)
class ClusterSettings(Settings):
    """How the cluster plugin reaches Redis and bounds its streams and waits."""

    url: str = "redis://127.0.0.1:6379/0"
    """The Redis server: ``redis://[user:pass@]host:port/db``, ``rediss://`` for TLS (with
    ``topology = "cluster"``, one node of the Redis Cluster; the others are discovered).
    The plugin speaks RESP2: ``?protocol=3`` is refused."""
    topology: str = "standalone"
    """``"standalone"``: one Redis server (a primary, with replicas or not); ``"cluster"``: a
    Redis Cluster (redis-py's ``RedisCluster``; each topic lives on one shard)."""
    key_prefix: str = "mqkit"
    """First part of every Redis key the plugin uses (``<prefix>:{t:<topic>}:stream``)."""
    stream_maxlen: int = 100_000
    """Entries each topic's stream keeps, approximately (``XADD MAXLEN ~``); 0: unbounded."""
    connect_timeout: float = attrs.field(default=2.0, converter=_seconds)
    """Seconds to open a connection to Redis before ``ClusterUnavailableError``."""
    socket_timeout: float = attrs.field(default=2.0, converter=_seconds)
    """Seconds a Redis command may take before ``ClusterUnavailableError``."""
    replica_timeout: float = attrs.field(default=1.0, converter=_seconds)
    """Seconds a publish waits for ``cluster_replication_factor - 1`` replicas (``WAIT``)."""
    read_block: float = attrs.field(default=1.0, converter=_seconds)
    """Seconds one ``XREAD BLOCK`` of a subscription's reader waits (how soon it sees a cancel)."""
    reconnect_max: float = attrs.field(default=5.0, converter=_seconds)
    """Longest pause between a reader's reconnection attempts (the backoff doubles up to it)."""
    index_refresh: float = attrs.field(default=60.0, converter=_seconds)
    """Seconds a node trusts its cache of the topics it put in the topic index; after that its
    next publish to each topic adds it again (so an index lost with Redis comes back)."""

    def rules(self) -> Iterable[tuple[str, bool, str]]:
        """The plugin's checks (see :meth:`mqkit.Settings.rules`)."""
        return [
            ("url", not self.url.strip(), "cannot be empty"),
            ("topology", self.topology not in _TOPOLOGIES, "must be 'standalone' or 'cluster'"),
            (
                "url",
                self.topology == "cluster" and _database(self.url) not in ("", "0"),
                "must use database 0 with topology 'cluster' (a Redis Cluster has no other)",
            ),
            (
                "url",
                _protocol(self.url) not in ("", "2"),
                "must not ask for another protocol than RESP2 (protocol=2): the plugin reads "
                "its replies as RESP2 shapes them",
            ),
            (
                "key_prefix",
                not self.key_prefix or any(c in self.key_prefix for c in "{}: \t\r\n"),
                "must be non-empty, without braces, colons or white space",
            ),
            ("stream_maxlen", self.stream_maxlen < 0, "cannot be negative (0: unbounded)"),
            ("connect_timeout", self.connect_timeout <= 0, _POSITIVE),
            ("socket_timeout", self.socket_timeout <= 0, _POSITIVE),
            ("replica_timeout", self.replica_timeout <= 0, _POSITIVE),
            ("read_block", self.read_block <= 0, _POSITIVE),
            ("reconnect_max", self.reconnect_max <= 0, _POSITIVE),
            ("index_refresh", self.index_refresh <= 0, _POSITIVE),
        ]
