"""The cluster plugin: topics shared by brokers in many processes through Redis Streams.

Each topic is one Redis stream, ``<prefix>:{t:<escaped topic>}:stream`` (:func:`stream_key`):
the topic's text is percent-escaped, so no topic can name another key, and the braces are a
Redis Cluster hash tag (one topic, one shard). ``publish_to_cluster`` stamps the message as a
local publish would, serializes it with the persistence serializer and ``XADD``\\s it
(``MAXLEN ~ stream_maxlen``); with ``cluster_replication_factor`` R > 1 it then ``WAIT``\\s for
R - 1 replicas. ``subscribe_from_cluster`` returns an ordinary subscription fed by a reader
thread (``XREAD BLOCK`` from the stream's last id at subscribe time, resuming from the last id
it saw after a reconnect): every node's subscriptions receive every message (fan-out).

Each node heartbeats ``<prefix>:node:<escaped id>`` (a TTL of three sync intervals, owned by
this broker's random token) and stays in the registry set ``<prefix>:nodes``; a second live
node with the same id fails at start with :class:`~mqkit.ClusterError`.

The client comes from :class:`~mqkit.plugins.cluster.connection.Connector`: one Redis server
(``topology = "standalone"``) or a Redis Cluster (``"cluster"``). Every command names one key.
Filter and pattern subscriptions read the topic index (:mod:`~mqkit.plugins.cluster.index`);
``mqkit inspect --cluster`` reads Redis without a broker (:mod:`~mqkit.plugins.cluster.inspector`).
``SubOptions(group=...)`` makes a consumer of a Redis consumer group instead (competing
consumers, ack, redelivery, claims, dead letters): :mod:`mqkit.plugins.cluster.groups`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mqkit.core.errors import ClusterError, ClusterUnavailableError, MQError
from mqkit.core.features import ClusterFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import Message
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.status import ClusterStatus, DeadLetter
from mqkit.core.subscription import SubOptions, Subscription, Taps
from mqkit.core.topics import normalize_topic
from mqkit.plugins.cluster.connection import Connector, Direct
from mqkit.plugins.cluster.groups import SETTLE, GroupReader, Settler
from mqkit.plugins.cluster.index import FilterReader, TopicIndex
from mqkit.plugins.cluster.settings import ClusterSettings
from mqkit.plugins.persistence.serializer import decode_message, encode_message

if TYPE_CHECKING:
    import redis

    from mqkit.core.broker import Broker
    from mqkit.plugins.cluster.connection import Client

__all__ = ["ClusterPlugin", "dead_key", "node_key", "parse_start", "stream_key"]

log = logging.getLogger("mqkit.cluster")

T = TypeVar("T")

_FIELD = b"m"
"""The one field of a stream entry: the message's stored JSON."""

_NOTHING = "0-0"

_MAX_ID_PART = 2**64 - 1

_KEYS_CACHED = 10_000
"""Topics whose XADD arguments a node keeps (the cache starts over beyond it)."""

_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
"""Take or refresh the heartbeat key if it is free or this broker's (1), else 0."""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _escape(text: str) -> str:
    """``text`` percent-escaped: only ``[A-Za-z0-9._/-]`` stay (an injective encoding)."""
    return urllib.parse.quote(text, safe="._/-")


def stream_key(prefix: str, topic: str) -> str:
    """The stream of ``topic``: ``<prefix>:{t:<escaped topic>}:stream`` (hash-tagged)."""
    return f"{prefix}:{{t:{_escape(topic)}}}:stream"


def dead_key(prefix: str, topic: str) -> str:
    """The dead letter stream of ``topic``'s groups: ``<prefix>:{t:<escaped topic>}:dead``."""
    return f"{prefix}:{{t:{_escape(topic)}}}:dead"


def node_key(prefix: str, node_id: str) -> str:
    """The heartbeat key of node ``node_id``."""
    return f"{prefix}:node:{_escape(node_id)}"


def parse_start(start: str) -> str | None:
    """The stream id a fan-out reader starts after; None for ``"now"`` (the stream's last).

    ``"now"`` (or ``"$"``): what is published from now on; ``"earliest"`` (or ``"0"``): every
    entry the stream retains; ``"<ms>-<seq>"``: the entries after that stream id (as ``XREAD``
    reads, so a reader resumes after the last id it handled); ``"<ms>"``: the entries added at
    or after that Unix time in milliseconds. Anything else raises ``ClusterError``.
    """
    if start in ("now", "$"):
        return None
    if start == "earliest":
        return _NOTHING
    ms, dash, seq = start.partition("-")
    parts = (ms, seq) if dash else (ms,)
    if all(p.isascii() and p.isdigit() and int(p) <= _MAX_ID_PART for p in parts):
        if dash:
            return f"{int(ms)}-{int(seq)}"
        return f"{int(ms) - 1}-{_MAX_ID_PART}" if int(ms) > 0 else _NOTHING
    raise ClusterError.because(
        f"start={start!r} is not 'now', 'earliest', a stream id '<ms>-<seq>' "
        "or a Unix time in milliseconds"
    )


class _Reader:
    """One cluster subscription's reader thread: stream entries -> the local subscription."""

    def __init__(
        self, plugin: ClusterPlugin, key: str, topic: str, sub: Subscription, last_id: str
    ) -> None:
        self.plugin = plugin
        self.key = key
        self.topic = topic
        self.sub = sub
        self.last_id = last_id
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self.run, name=f"mqkit-cluster-reader-{sub.id}", daemon=True
        )

    def run(self) -> None:
        settings = self.plugin.settings
        block_ms = max(1, int(settings.read_block * 1000))
        client: Client | None = None
        backoff = 0.05
        try:
            while not self.stop.is_set():
                try:
                    if client is None:  # a Redis Cluster client connects when it is built
                        client = self.plugin.client(read_block=settings.read_block)
                    found: Any = client.xread({self.key: self.last_id}, count=256, block=block_ms)
                except self.plugin.failed as exc:
                    log.warning("cluster reader of %r: %s (retrying)", self.topic, exc)
                    if self.stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, settings.reconnect_max)
                    continue
                backoff = 0.05
                for _key, entries in found or ():
                    for entry_id, fields in entries:
                        self.deliver(fields)
                        self.last_id = entry_id.decode()
        finally:
            if client is not None:
                client.close()

    def deliver(self, fields: dict[bytes, bytes]) -> None:
        try:
            message = decode_message(fields[_FIELD])
        except (KeyError, ValueError, TypeError, MQError) as exc:
            log.error("cluster stream of %r holds an unreadable entry: %r", self.topic, exc)
            return
        if not isinstance(message, Message) or message.topic != self.topic:
            log.error("cluster stream of %r holds a message of another topic", self.topic)
            return
        self.sub.offer(message)


class ClusterPlugin(ClusterFeature, Plugin):
    """Cluster mode over one Redis server (with replicas) or a Redis Cluster: fan-out."""

    plugin_info = PluginInfo(
        name="cluster",
        description="cluster mode on Redis Streams (fan-out across brokers)",
        flag="enable_cluster",
        runtime_toggle=False,
        settings=ClusterSettings,
        section="cluster",
        extra="cluster",
    )

    def __init__(self, broker: Broker) -> None:
        import redis  # the `cluster` extra: without it the broker names it

        self._broker = broker
        self.settings = broker.settings(ClusterSettings)
        config = broker.config
        self.node_id = config.cluster_node_id.strip()
        self._replicas = config.cluster_replication_factor - 1
        self.connector = Connector(
            self.settings, f"mqkit-{_escape(self.node_id)}"[:64], self._replicas
        )
        """Opens the clients of the configured topology (standalone or Redis Cluster)."""
        self.down = self.connector.down
        """What a Redis that cannot be reached raises."""
        self.failed = self.connector.failed
        """What any failed Redis command raises."""
        self.no_script: tuple[type[BaseException], ...] = (redis.exceptions.NoScriptError,)
        """What a script Redis does not know (any more) raises."""
        self.refused: tuple[type[BaseException], ...] = (redis.exceptions.ResponseError,)
        """What a command Redis refused raises (an error reply, not a lost connection)."""
        self._interval = max(config.cluster_sync_interval, 0.05)
        self._token = uuid.uuid4().hex
        self._prefix = self.settings.key_prefix
        self._node_key = node_key(self._prefix, self.node_id)
        self._nodes_key = f"{self._prefix}:nodes"
        self._client: Client | None = None
        self._direct: Direct | None = None
        """The single publish's connections (one server, no replicas to wait for), or None."""
        self._xadd: dict[str, tuple[str | bytes, ...]] = {}  # topic -> its XADD up to the value
        self._running = False
        self._topology_checked = False
        self._readers: dict[int, _Reader | FilterReader] = {}
        self._index = TopicIndex(self._prefix, self.settings)
        self._groups: dict[int, GroupReader] = {}
        self._settler: Settler | None = None
        self.settle_sha = hashlib.sha1(SETTLE.encode()).hexdigest()
        """The SHA1 of the consumer groups' settling script (``groups.SETTLE``)."""
        self.claim_idle = max(config.default_ack_timeout, 0.1)
        """Seconds an entry of a group stays unclaimed: the ack timeout (``XAUTOCLAIM``)."""
        self.claim_every = min(self.claim_idle / 2, 1.0)
        """Seconds between a group reader's claims of idle or given-back entries."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None
        self._reachable = False
        self._problem = ""
        self._last_sync: datetime | None = None
        self._peers: tuple[str, ...] = ()
        self._replicas_seen = 0

    def client(self, read_block: float = 0.0) -> Client:
        """A new client of the configured topology, with the settings' timeouts and no retries.

        A Redis Cluster client connects when it is built: it may raise one of :attr:`down`.
        """
        return self.connector.open(read_block)

    def _shared(self) -> Client:
        with self._lock:
            if not self._running:
                raise ClusterUnavailableError.because("the cluster plugin is not running")
            if self._client is None:
                self._client = client = self.client()
                if not self.connector.cluster and self._replicas <= 0:
                    self._direct = Direct(cast("redis.Redis", client))
            return self._client

    def _call(self, what: str, action: Callable[[Client], T]) -> T:
        """Run ``action`` on the shared client; an unreachable Redis is ClusterUnavailableError."""
        try:
            return action(self._shared())
        except self.failed as exc:
            raise self._failure(what, exc) from exc

    def _failure(self, what: str, exc: BaseException) -> MQError:
        """The error for a failed Redis command: unreachable (ClusterUnavailableError) or not."""
        if isinstance(exc, self.down):
            self._reachable = False
            return ClusterUnavailableError.because(
                f"{what}: {self._where()} cannot be reached ({exc})"
            )
        return ClusterError.because(f"{what}: Redis refused it ({exc})")

    def _where(self) -> str:
        return self.connector.where()

    # -- lifecycle -------------------------------------------------------------------------------

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Connect, claim this node's id (refused while another live node holds it), heartbeat."""
        self._running = True
        with contextlib.suppress(*self.failed):  # else: loaded when first needed
            self._shared().script_load(SETTLE)
        self._sync(first=True)
        self._heart = threading.Thread(target=self._beat, name="mqkit-cluster-heartbeat")
        self._heart.daemon = True
        self._heart.start()

    @hookimpl
    def mqkit_broker_close(self, broker: Broker) -> None:
        """Stop the readers and the heartbeat; give the node id back."""
        self._stop.set()
        with self._lock:
            readers = list(self._readers.values())
            self._readers.clear()
        for reader in readers:
            reader.stop.set()
        for reader in readers:
            reader.thread.join(self.settings.read_block + self.settings.socket_timeout + 1)
        self._close_groups()
        if self._heart is not None:
            self._heart.join(self._interval + self.settings.socket_timeout + 1)
        with self._lock:
            self._running = False
            client, self._client = self._client, None
            self._direct = None
        if client is None:
            return
        try:
            if client.eval(_RELEASE, 1, self._node_key, self._token):  # only an id it held
                client.srem(self._nodes_key, self.node_id)
        except self.failed as exc:
            log.info("cluster: node id %r not released (%s)", self.node_id, exc)
        client.close()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sync(first=False)
            except MQError as exc:
                log.warning("cluster heartbeat: %s", exc)

    def _sync(self, *, first: bool) -> None:
        """Refresh the heartbeat and read who is alive.

        Redis unreachable: the status says so (a broker starts without it). The id held by
        another live node: ``ClusterError`` at start, a problem in the status later.
        """
        ttl_ms = max(1, int(self._interval * 3 * 1000))
        try:
            if not self._topology_checked and not self._check_topology(first=first):
                return
            owned = self._call(
                "cluster heartbeat",
                lambda c: c.eval(_CLAIM, 1, self._node_key, self._token, ttl_ms),
            )
            if owned:
                members = self._call("cluster heartbeat", self._members)
                replicas = self._call("cluster heartbeat", self._count_replicas)
        except ClusterUnavailableError as exc:
            self._reachable = False
            self._problem = str(exc)
            if first:
                log.warning("cluster: starting without Redis (%s)", exc)
            return
        if not owned:
            self._problem = f"cluster_node_id {self.node_id!r} is held by another live node"
            if first:
                raise ClusterError.because(
                    f"cluster_node_id {self.node_id!r} is already in use by another live node "
                    f"(on {self._where()}); give each broker its own id"
                )
            return
        self._peers = tuple(sorted(n for n in members if n != self.node_id))
        self._replicas_seen = replicas
        self._reachable = True
        self._problem = ""
        self._last_sync = datetime.now(UTC)

    def _check_topology(self, *, first: bool) -> bool:
        """False for a standalone client pointed at a Redis Cluster node (ClusterError at start)."""
        if self.connector.cluster or not self._call(
            "cluster heartbeat", self.connector.is_cluster_node
        ):
            self._topology_checked = True
            return True
        self._problem = (
            f"[cluster] topology is 'standalone' but {self._where()} is a Redis Cluster node: "
            "set topology = 'cluster'"
        )
        if first:
            raise ClusterError.because(self._problem)
        return False

    def _members(self, client: Client) -> list[str]:
        pipe = client.pipeline(transaction=False)
        pipe.sadd(self._nodes_key, self.node_id)
        pipe.smembers(self._nodes_key)
        _, raw = pipe.execute()
        names = sorted(m.decode() for m in raw)
        # one GET per heartbeat key: in a Redis Cluster they live in different slots
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.get(node_key(self._prefix, name))
        alive = pipe.execute() if names else []
        dead = [n for n, v in zip(names, alive, strict=True) if v is None]
        if dead:
            client.srem(self._nodes_key, *dead)
        return [n for n, v in zip(names, alive, strict=True) if v is not None]

    def _count_replicas(self, client: Client) -> int:
        if self._replicas <= 0:
            return 0
        return self.connector.replicas_connected(client)

    @hookimpl
    def mqkit_health(self, broker: Broker) -> Sequence[str] | None:
        """A problem whenever the cluster status is not ``active`` (see :meth:`status`)."""
        status = self.status()
        if status.status == "active":
            return None
        if self._problem:
            return [f"cluster: {self._problem}"]
        if status.status == "disconnected":
            return [f"cluster: {self._where()} cannot be reached"]
        if self._replicas_seen < self._replicas:
            return [f"cluster: {self._replicas_seen} of {self._replicas} replica(s) connected"]
        return [f"cluster: configured node(s) not alive: {', '.join(status.missing_nodes)}"]

    @hookimpl
    def mqkit_unsubscribe(self, broker: Broker, subscription: Subscription) -> None:
        """A cancelled cluster subscription stops its reader."""
        with self._lock:
            reader = self._readers.pop(subscription.id, None)
            group = self._groups.get(subscription.id)
        if reader is not None:
            reader.stop.set()
        if group is not None and group.sub is subscription:
            group.stop.set()  # reads no more; what it holds settles as it is drained or dropped

    # -- the feature -----------------------------------------------------------------------------

    def publish(self, topic: str, message: Message) -> None:
        """XADD the stamped message to its topic's stream (and WAIT for the replicas).

        The common case - one server, no replicas to wait for, a topic this node registered
        already - is one command on a :class:`~mqkit.plugins.cluster.connection.Direct`
        connection; the others take :meth:`publish_batch`'s pipeline.
        """
        stamped = self._broker.stamp(topic, message)
        topic = stamped.topic
        direct = self._direct
        if direct is None or self._index.due(topic):
            self._send(topic, [stamped])
            return
        args = self._xadd.get(topic) or self._xadd_args(topic)
        text = encode_message(stamped)
        try:  # (``_direct`` is None unless running: then ``_send`` refuses)
            direct.call(*args, text.encode())
        except self.failed as exc:
            raise self._failure(f"publish to cluster topic {topic!r}", exc) from exc

    def _xadd_args(self, topic: str) -> tuple[str | bytes, ...]:
        """The XADD of ``topic`` up to its field's value (cached per topic)."""
        key = stream_key(self._prefix, topic)
        maxlen = self.settings.stream_maxlen
        trim = ("MAXLEN", "~", str(maxlen)) if maxlen else ()
        args = ("XADD", key, *trim, "*", _FIELD)
        if len(self._xadd) >= _KEYS_CACHED:
            self._xadd.clear()
        self._xadd[topic] = args
        return args

    def publish_batch(self, topic: str, messages: Sequence[Message]) -> None:
        """XADD every stamped message in one pipeline, then WAIT once for the replicas."""
        stamped = [self._broker.stamp(topic, m) for m in messages]
        if stamped:
            self._send(stamped[0].topic, stamped)

    def _send(self, topic: str, stamped: Sequence[Message]) -> None:
        """XADD stamped messages of ``topic`` in one pipeline (registering a new topic)."""
        key = stream_key(self._prefix, topic)
        texts = [encode_message(m) for m in stamped]
        maxlen = self.settings.stream_maxlen or None

        register = self._index.due(topic)
        if register and self.connector.cluster:
            # The index lives on its own slot: register it first, in a call of its own.
            self._call(f"register cluster topic {topic!r}", lambda c: self._index.add_to(c, topic))

        def send(server: redis.Redis) -> list[Any]:
            if len(texts) == 1 and not register and self._replicas <= 0:  # one command: no pipeline
                return [server.xadd(key, {_FIELD: texts[0]}, maxlen=maxlen, approximate=True)]
            pipe = server.pipeline(transaction=False)
            if register and not self.connector.cluster:
                self._index.add_to(pipe, topic)  # one server: in the same round trip
            for text in texts:
                pipe.xadd(key, {_FIELD: text}, maxlen=maxlen, approximate=True)
            if self._replicas > 0:
                wait_ms = max(1, int(self.settings.replica_timeout * 1000))
                pipe.execute_command("WAIT", self._replicas, wait_ms)  # type: ignore[no-untyped-call]
            return pipe.execute()

        replies = self._call(
            f"publish to cluster topic {topic!r}",
            lambda client: self.connector.on_shard(client, key, send),
        )
        if register:
            self._index.added(topic)
        if self._replicas > 0 and int(replies[-1]) < self._replicas:
            self._replicas_seen = min(self._replicas_seen, int(replies[-1]))  # until the next sync
            raise ClusterError.because(
                f"only {int(replies[-1])} of {self._replicas} replica(s) confirmed the publish "
                f"to {topic!r} within {self.settings.replica_timeout}s: the "
                "message may be on the primary only"
            )

    def subscribe(self, topic: str, options: SubOptions | None, start: str = "now") -> Subscription:
        """A local subscription fed by a reader of the topic's stream, from ``start`` on.

        With ``options.group``: a consumer of that group (see ``groups``); ``start`` is where
        the group begins when this call creates it.
        """
        checked = normalize_topic(topic)
        after = parse_start(start)
        key = stream_key(self._prefix, checked)
        if options is not None and options.group is not None:
            return self._subscribe_group(checked, key, options, after or "$")

        def last(client: Client) -> str:
            found: Any = client.xrevrange(key, count=1)
            return str(found[0][0].decode()) if found else _NOTHING

        if after is None:
            after = self._call(f"subscribe to cluster topic {checked!r}", last)
        else:  # Redis must answer now too: an unreachable one fails the subscribe alike
            self._call(f"subscribe to cluster topic {checked!r}", lambda c: c.exists(key))
        # No local publish reaches it (``_never``): only the reader feeds it.
        sub = self._broker.subscribe_matching(f"cluster:{checked}", _never, options)
        reader = _Reader(self, key, checked, sub, after)
        with self._lock:
            self._readers[sub.id] = reader
        reader.thread.start()
        return sub

    def subscribe_matching(
        self, key: str, matches: Callable[[str], bool], options: SubOptions | None
    ) -> Subscription:
        """A local subscription fed by the streams of every topic ``matches`` accepts.

        The topic index says which topics exist (``index.py``): those from now on, and each
        one first published later from its first message.
        """
        reader = FilterReader(
            prefix=self._prefix,
            matches=matches,
            stream_of=lambda topic: stream_key(self._prefix, topic),
            connect=lambda read_block: self.client(read_block=read_block),
            failed=self.failed,
            settings=self.settings,
        )
        self._call(f"subscribe to cluster topics matching {key!r}", reader.prepare)
        sub = self._broker.subscribe_matching(f"cluster:{key}", _never, options)
        with self._lock:
            self._readers[sub.id] = reader
        reader.begin(sub)
        return sub

    def status(self) -> ClusterStatus:
        """The cluster as the last heartbeat saw it."""
        config = self._broker.config
        reachable = self._reachable and self._running
        peers = self._peers if reachable else ()  # read once: the heartbeat replaces it
        live = (self.node_id, *peers)
        missing = tuple(n for n in config.cluster_nodes if n not in live)
        if not reachable:
            state = "disconnected"
        elif self._problem or self._replicas_seen < self._replicas or missing:
            state = "degraded"
        else:
            state = "active"
        return ClusterStatus(
            status=state,
            node_id=self.node_id,
            peers=peers,
            replication_factor=config.cluster_replication_factor,
            sync_interval=config.cluster_sync_interval,
            total_nodes=len(live),
            healthy_nodes=len(live) if reachable else 0,
            last_sync_time=self._last_sync,
            missing_nodes=missing,
        )

    # -- consumer groups (mqkit.plugins.cluster.groups) ------------------------------------------

    @property
    def broker(self) -> Broker:
        """The broker this plugin serves."""
        return self._broker

    @property
    def settler(self) -> Settler:
        """The node's settling thread (started with the first group subscription)."""
        with self._lock:
            if self._settler is None:
                self._settler = Settler(self, self._group_readers)
            return self._settler

    def claim_soon(self, key: str) -> None:
        """Have this node's readers of stream ``key`` claim at once (an entry came back)."""
        for group in self._group_readers():
            if group.key == key:
                group.claim_now = True
                group.space.set()

    def _group_readers(self) -> list[GroupReader]:
        with self._lock:
            return list(self._groups.values())

    def create_group(self, client: Client, key: str, group: str, start: str) -> None:
        """``XGROUP CREATE key group start MKSTREAM``; a group that exists is left as it is."""
        try:
            client.xgroup_create(key, group, id=start, mkstream=True)
        except self.refused as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _subscribe_group(
        self, topic: str, key: str, options: SubOptions, begin: str
    ) -> Subscription:
        group = options.group
        assert group is not None
        self._call(
            f"join group {group!r} of cluster topic {topic!r}",
            lambda c: self.create_group(c, key, group, begin),
        )
        sub = self._broker.subscribe_matching(f"cluster:{topic}", _never, options)
        reader = GroupReader(self, key, dead_key(self._prefix, topic), topic, group, sub)
        self.settler  # noqa: B018 - started before the first entry is held
        with self._lock:
            self._groups[sub.id] = reader
        reader.thread.start()
        return sub

    def _close_groups(self) -> None:
        """Stop the group readers, give what they hold back to the groups, flush the settler."""
        with self._lock:
            groups = list(self._groups.values())
            settler = self._settler
        for group in groups:
            group.stop.set()
        for group in groups:
            group.thread.join(self.settings.read_block + self.settings.socket_timeout + 1)
        if settler is None:
            return
        for group in groups:
            group.release_all()
        settler.close(self.settings.socket_timeout * 2 + 1)
        with self._lock:
            self._groups.clear()

    def _group_of(self, subscription: Subscription | None) -> GroupReader | None:
        if subscription is None:
            return None
        group = self._groups.get(subscription.id)
        return group if group is not None and group.sub is subscription else None

    @hookimpl
    def mqkit_subscription_taps(self, broker: Broker, subscription: Subscription) -> Taps | None:
        """A group subscription settles what it hands out that needs no ack (``taken``)."""
        if subscription.options.group is None or not subscription.topic.startswith("cluster:"):
            return None
        return Taps(taken=self._taken)

    def _taken(self, subscription: Subscription, message: Message) -> None:
        group = self._group_of(subscription)
        if group is not None:
            group.taken(subscription, message)

    @hookimpl
    def mqkit_ack(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """A group subscription's ack: ``XACK``."""
        group = self._group_of(subscription)
        if group is not None:
            group.acked(message)

    @hookimpl
    def mqkit_nack(
        self, broker: Broker, subscription: Subscription, message: Message, requeue: bool
    ) -> None:
        """Remembered: a dead letter after it says ``nacked``."""
        group = self._group_of(subscription)
        if group is not None:
            group.nacked(message)

    @hookimpl
    def mqkit_redeliver(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """A redelivery to a group subscription raises its entry's delivery count."""
        group = self._group_of(subscription)
        if group is not None:
            group.redelivered(message)

    @hookimpl
    def mqkit_dead_letter(
        self,
        broker: Broker,
        topic: str,
        message: Message,
        reason: str,
        subscription: Subscription | None,
    ) -> None:
        """A group's message given up: to the dead letter stream (cancelled: to the group)."""
        group = self._group_of(subscription)
        if group is not None:
            group.dead(message, reason, message.attempt, known=True)
            return
        for group in self._group_readers():
            if group.topic == topic and group.dead(message, reason, message.attempt, known=False):
                return

    @hookimpl
    def mqkit_drop(
        self, broker: Broker, subscription: Subscription | None, message: Message, reason: str
    ) -> None:
        """A group's entry dropped: back to the group; given up with no DLQ: dead letter."""
        group = self._group_of(subscription)
        if group is not None:
            if reason == "withheld":  # not deliverable: settled (expired: a dead letter)
                why = group.reason_of(message)
                if why == "expired":
                    group.dead(message, why, message.attempt, known=False)
                else:
                    group._settle(group.find(message), "ack")
            else:
                group.release(message)
            return
        if subscription is None and reason.startswith("dead letter"):
            for group in self._group_readers():
                if group.topic == message.topic:
                    why = group.reason_of(message)
                    if group.dead(message, why, message.attempt, known=False):
                        return

    def dead_letters(self, topic: str, limit: int = 0) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``topic``'s groups (all when ``limit <= 0``).

        Read from the dead letter stream ``<prefix>:{t:<topic>}:dead`` (``XRANGE``); each
        record's message is the dead letter copy (its ``meta`` has ``x-original-topic``,
        ``x-dead-letter-reason``, ``x-attempts``). The entries stay in the stream.
        """
        checked = normalize_topic(topic)
        key = dead_key(self._prefix, checked)
        found: Any = self._call(
            f"read the dead letters of {checked!r}",
            lambda c: c.xrange(key, count=limit if limit > 0 else None),
        )
        records: list[DeadLetter] = []
        for entry_id, fields in found:
            try:
                message = decode_message(fields[_FIELD])
            except (KeyError, ValueError, TypeError, MQError) as exc:
                log.error("dead letter stream of %r holds an unreadable entry: %r", checked, exc)
                continue
            millis = int(entry_id.split(b"-")[0])
            records.append(
                DeadLetter(
                    message=message,
                    original_topic=checked,
                    reason=fields.get(b"reason", b"").decode(),
                    attempts=int(fields.get(b"attempts", b"0")),
                    time=datetime.fromtimestamp(millis / 1000, UTC),
                )
            )
        return records


def _never(topic: str) -> bool:
    """No local topic matches a cluster subscription's key."""
    return False
