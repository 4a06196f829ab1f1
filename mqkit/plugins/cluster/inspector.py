"""Read a cluster's Redis without a broker: what ``mqkit inspect --cluster URL`` shows.

:func:`inspect_cluster` connects to the Redis a cluster of brokers uses and reads, with
read-only commands only (``SCAN``, ``TYPE``, ``XINFO``, ``SMEMBERS``, ``PTTL``, ``INFO``), the
keys under one ``key_prefix``:

- each topic stream ``<prefix>:{t:<topic>}:stream``: the topic, its length, its first and
  last entry ids, and its consumer groups (name, consumers, pending entries, last delivered
  id, lag - the entries not yet read by the group, when Redis can tell - and each consumer's
  pending count and idle time);
- each dead letter stream ``<prefix>:{t:<topic>}:dead`` (the consumer groups' dead letters),
  and any other stream under the prefix;
- the nodes: the registry ``<prefix>:nodes`` and the heartbeat keys ``<prefix>:node:<id>``
  (alive while the key exists; the time it has left);
- the size of the topic index (``<prefix>:{topics}:index``).

It never writes (no ``XREADGROUP``, no clean-up of dead nodes) and needs no broker. A Redis
Cluster (``cluster_enabled:1``) is read with redis-py's ``RedisCluster``, whose ``SCAN`` visits
every primary. The records are frozen attrs classes;
``mqkit.core.convert.unstructure(report)`` gives JSON-ready data (``mqkit inspect --json``).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from mqkit.core.errors import ClusterError, ClusterUnavailableError
from mqkit.plugins.cluster.index import index_keys
from mqkit.plugins.cluster.plugin import node_key

if TYPE_CHECKING:
    import redis

__all__ = [
    "ClusterReport",
    "ConsumerReport",
    "GroupReport",
    "NodeReport",
    "StreamReport",
    "inspect_cluster",
]


@attrs.frozen(kw_only=True)
class ConsumerReport:
    """One consumer of a consumer group."""

    name: str
    pending: int
    """Entries delivered to it and not acknowledged yet."""
    idle_ms: int
    """Milliseconds since it last read or claimed."""


@attrs.frozen(kw_only=True)
class GroupReport:
    """One consumer group of a stream (``XINFO GROUPS``)."""

    name: str
    consumers: int
    pending: int
    """Entries delivered to a consumer and not acknowledged yet (the group's PEL)."""
    last_delivered_id: str
    lag: int | None
    """Entries of the stream the group has not read yet; None when Redis cannot tell (an
    entry was deleted or trimmed past the group's position, or Redis before 7.0)."""
    consumer_list: tuple[ConsumerReport, ...]


@attrs.frozen(kw_only=True)
class StreamReport:
    """One stream under the prefix (``XINFO STREAM``)."""

    key: str
    topic: str | None
    """The topic whose stream it is (None for a stream that belongs to no topic)."""
    kind: str
    """``topic``, ``dead`` (a dead letter stream), ``index`` (the topic index's
    notifications) or the key's last part for any other stream."""
    length: int
    first_id: str | None
    last_id: str | None
    groups: tuple[GroupReport, ...]


@attrs.frozen(kw_only=True)
class NodeReport:
    """A node seen in the registry or by its heartbeat key."""

    node_id: str
    alive: bool
    """Its heartbeat key exists (it has renewed it within three sync intervals)."""
    expires_in: float | None
    """Seconds its heartbeat key has left (None when it is not alive)."""
    registered: bool
    """It is in the registry set (a dead node stays there until a live one removes it)."""


@attrs.frozen(kw_only=True)
class ClusterReport:
    """Everything :func:`inspect_cluster` found under one key prefix."""

    url: str
    """Where Redis is (the password, if any, replaced by ``***``)."""
    prefix: str
    redis_version: str
    mode: str
    """``standalone`` or ``cluster`` (a Redis Cluster)."""
    topics: tuple[StreamReport, ...]
    dead_letters: tuple[StreamReport, ...]
    other_streams: tuple[StreamReport, ...]
    nodes: tuple[NodeReport, ...]
    indexed_topics: int
    """Topics in the topic index (published to at least once since the index existed)."""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a ``SCAN MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname or '?'}:{parts.port or 6379}"


def _classify(prefix: str, key: str) -> tuple[str | None, str]:
    """(topic, kind) of a stream key under ``prefix``."""
    head, new = f"{prefix}:{{t:", index_keys(prefix)[1]
    if key == new:
        return None, "index"
    if key.startswith(head):
        escaped, sep, suffix = key[len(head) :].partition("}:")
        if sep and "{" not in escaped and "}" not in escaped:
            topic = urllib.parse.unquote(escaped, errors="replace")
            return topic, "topic" if suffix == "stream" else suffix
    return None, key.rsplit(":", 1)[-1]


def _entry_id(entry: Any) -> str | None:
    if not entry:
        return None
    return _text(entry[0])


def _stream(client: redis.Redis, prefix: str, key: str) -> StreamReport:
    info: dict[str, Any] = client.xinfo_stream(key)
    groups = []
    if int(info.get("groups", 0)):
        for group in client.xinfo_groups(key):
            name = _text(group["name"])
            consumers = tuple(
                ConsumerReport(
                    name=_text(c["name"]), pending=int(c["pending"]), idle_ms=int(c["idle"])
                )
                for c in client.xinfo_consumers(key, name)
            )
            lag = group.get("lag")
            groups.append(
                GroupReport(
                    name=name,
                    consumers=int(group["consumers"]),
                    pending=int(group["pending"]),
                    last_delivered_id=_text(group["last-delivered-id"]),
                    lag=None if lag is None else int(lag),
                    consumer_list=consumers,
                )
            )
    topic, kind = _classify(prefix, key)
    return StreamReport(
        key=key,
        topic=topic,
        kind=kind,
        length=int(info["length"]),
        first_id=_entry_id(info.get("first-entry")),
        last_id=_entry_id(info.get("last-entry")),
        groups=tuple(sorted(groups, key=lambda g: g.name)),
    )


def _streams(client: redis.Redis, prefix: str) -> Iterator[str]:
    keys = sorted({_text(k) for k in client.scan_iter(match=f"{_glob_escape(prefix)}:*")})
    if not keys:
        return
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    for key, kind in zip(keys, pipe.execute(), strict=True):
        if _text(kind) == "stream":
            yield key


def _nodes(client: redis.Redis, prefix: str) -> tuple[NodeReport, ...]:
    head = f"{prefix}:node:"
    registered = {_text(m) for m in client.smembers(f"{prefix}:nodes")}
    keyed = {
        urllib.parse.unquote(_text(k)[len(head) :])
        for k in client.scan_iter(match=f"{_glob_escape(head)}*")
    }
    found = []
    for node in sorted(registered | keyed):
        ttl = int(client.pttl(node_key(prefix, node)))
        alive = ttl != -2  # -2: no such key; -1: no expiry (not one the plugin set)
        found.append(
            NodeReport(
                node_id=node,
                alive=alive,
                expires_in=ttl / 1000 if ttl >= 0 else None,
                registered=node in registered,
            )
        )
    return tuple(found)


def _connect(url: str, timeout: float) -> redis.Redis:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    client = redis.Redis.from_url(url, **options)
    info: dict[str, Any] = client.info("cluster")
    if not int(info.get("cluster_enabled", 0)):
        return client
    client.close()
    from redis.cluster import RedisCluster

    cluster: redis.Redis = RedisCluster.from_url(url, **options)  # type: ignore[assignment]
    return cluster  # the same commands, routed by slot; SCAN visits every primary


def inspect_cluster(url: str, prefix: str = "mqkit", *, timeout: float = 5.0) -> ClusterReport:
    """Read what Redis at ``url`` holds under ``prefix`` (read-only; see the module's text).

    Raises :class:`~mqkit.ClusterUnavailableError` when Redis cannot be reached within
    ``timeout`` seconds and :class:`~mqkit.ClusterError` when it refuses a command (a wrong
    password, say) or the URL is not a Redis URL.
    """
    try:
        import redis.exceptions
    except ImportError:  # pragma: no cover - the cluster extra is missing
        raise ClusterError.because(
            "inspecting a cluster needs redis-py: pip install 'mqkit[cluster]'"
        ) from None
    down = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
    where = _where(url)
    try:
        client = _connect(url, timeout)
    except ValueError as exc:
        raise ClusterError.because(f"not a Redis URL: {_redacted(url)!r} ({exc})") from None
    except redis.exceptions.AuthenticationError as exc:  # a ConnectionError to redis-py
        raise ClusterError.because(f"Redis at {where} refused the login ({exc})") from None
    except down as exc:
        raise ClusterUnavailableError.because(
            f"Redis at {where} cannot be reached ({exc})"
        ) from None
    except redis.exceptions.RedisError as exc:
        raise ClusterError.because(f"Redis at {where} refused to answer ({exc})") from None
    try:
        server: dict[str, Any] = client.info("server")
        version = _text(server.get("redis_version", "?"))
        mode = "standalone" if isinstance(client, redis.Redis) else "cluster"
        streams = [_stream(client, prefix, key) for key in _streams(client, prefix)]
        nodes = _nodes(client, prefix)
        indexed = int(client.scard(index_keys(prefix)[0]))
    except down as exc:
        raise ClusterUnavailableError.because(
            f"Redis at {where} stopped answering ({exc})"
        ) from None
    except redis.exceptions.RedisError as exc:
        raise ClusterError.because(f"Redis at {where} refused to answer ({exc})") from None
    finally:
        client.close()
    return ClusterReport(
        url=_redacted(url),
        prefix=prefix,
        redis_version=version,
        mode=mode,
        topics=tuple(s for s in streams if s.kind == "topic"),
        dead_letters=tuple(s for s in streams if s.kind == "dead"),
        other_streams=tuple(s for s in streams if s.kind not in ("topic", "dead")),
        nodes=nodes,
        indexed_topics=indexed,
    )
