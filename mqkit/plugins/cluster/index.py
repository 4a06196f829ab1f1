"""The cluster's topic index, and the readers of filter and pattern subscriptions.

Two keys under one hash tag, ``{topics}`` (one Redis Cluster slot, so one script may touch
both; no topic stream can have that tag, theirs is ``{t:...}``):

- ``<prefix>:{topics}:index``, a set: every topic ever published to the cluster;
- ``<prefix>:{topics}:new``, a stream with one entry per topic added to the set: ``t`` the
  topic, ``n`` the set's size just after the add (a sequence number: a reader that sees
  ``n`` skip knows it missed notifications - trimmed, or an index that was lost - and reads
  the set again).

**Publishing** (:class:`TopicIndex`): each node caches the topics it has put in the index; the
first publish of a topic by a node (and again after ``index_refresh`` seconds, so an index lost
with an empty Redis comes back) runs :data:`_REGISTER` in the publish's own pipeline, before
its ``XADD``\\s: ``SADD``, and for a topic new to the set one ``XADD`` to the notification
stream. Every other publish pays one set lookup: nothing grows with the number of topics.

**Subscribing** (:class:`FilterReader`): at subscribe time one script reads the set and the
notification stream's last id atomically; each matching topic's stream is read from its last
entry then (messages from now on). Notifications after that name topics first published
later: a matching one is read from the start of its stream (its first message included).
Within a topic, messages arrive in stream order.

Redis Cluster: one ``XREAD`` may only name keys of one slot, and each topic has its own
hash tag. So the reader groups its streams by slot and runs one *lane* (a thread, its own
connection, one ``XREAD BLOCK`` over that slot's streams) per group; the notification stream
is in the lane of its own slot (the *watcher*). With one Redis server (standalone) there is
one group: a single lane reads the notification stream and every matched stream in one
``XREAD``, so a new topic is read as soon as its notification arrives. In a Redis Cluster a
new topic usually gets a new lane at once; one that shares a slot with a lane already
blocking joins it at that lane's next read (at most ``read_block`` later).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mqkit.core.errors import MQError
from mqkit.core.message import Message
from mqkit.plugins.cluster.settings import ClusterSettings
from mqkit.plugins.persistence.serializer import decode_message

if TYPE_CHECKING:
    from mqkit.core.subscription import Subscription
    from mqkit.plugins.cluster.connection import Client

__all__ = ["FilterReader", "TopicIndex", "index_keys"]

log = logging.getLogger("mqkit.cluster")

FIELD = b"m"
"""The one field of a topic stream's entry: the message's stored JSON."""

_START = "0-0"
_KNOWN_MAX = 65_536
"""Topics a node's cache keeps; a full cache is emptied (its topics are registered again)."""

_REGISTER = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  local n = redis.call('SCARD', KEYS[1])
  if tonumber(ARGV[2]) > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 't', ARGV[1], 'n', n)
  else
    redis.call('XADD', KEYS[2], '*', 't', ARGV[1], 'n', n)
  end
  return 1
end
return 0
"""
"""Add ARGV[1] to the index set; if it is new there, notify it (``MAXLEN ~ ARGV[2]``)."""

_SNAPSHOT = """
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {id, redis.call('SMEMBERS', KEYS[1])}
"""
"""The notification stream's last id and the index set, read at one instant."""


def index_keys(prefix: str) -> tuple[str, str]:
    """The index set and the notification stream of key prefix ``prefix``."""
    return f"{prefix}:{{topics}}:index", f"{prefix}:{{topics}}:new"


def snapshot(client: Client, prefix: str) -> tuple[str, list[str]]:
    """The notification stream's last id and every indexed topic, atomically (read-only)."""
    raw: Any = client.eval(_SNAPSHOT, 2, *index_keys(prefix))
    last, members = raw
    return _text(last), sorted(_text(m) for m in members)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TopicIndex:
    """A node's side of the index: which topics it has registered, and registering them."""

    def __init__(self, prefix: str, settings: ClusterSettings) -> None:
        self.set_key, self.new_key = index_keys(prefix)
        self._maxlen = settings.stream_maxlen
        self._refresh = settings.index_refresh
        self._known: set[str] = set()
        self._since = time.monotonic()

    def due(self, topic: str) -> bool:
        """Whether ``topic`` must be registered now (new to this node, or the refresh is due)."""
        now = time.monotonic()
        if now - self._since >= self._refresh:
            self._known, self._since = set(), now  # replaced whole: readers never see it half
        return topic not in self._known

    def add_to(self, pipe: Any, topic: str) -> Any:
        """Register ``topic`` through ``pipe`` (a pipeline, or a client: then it runs now)."""
        # EVAL by name: redis-py's cluster pipeline has no eval(), but routes EVAL by its keys
        return pipe.execute_command(
            "EVAL", _REGISTER, 2, self.set_key, self.new_key, topic, self._maxlen
        )

    def added(self, topic: str) -> None:
        """``topic`` is in the index (the pipeline that registered it succeeded)."""
        known = self._known
        if len(known) >= _KNOWN_MAX:
            known = self._known = set()
        known.add(topic)


class _Lane:
    """One thread reading streams in one ``XREAD BLOCK``: key -> last id delivered.

    Its streams are one group: those of one slot in a Redis Cluster, every stream (the
    notification stream included) with one Redis server.
    """

    def __init__(self, group: int) -> None:
        self.group = group
        self.positions: dict[str, str] = {}
        self.thread: threading.Thread | None = None


class FilterReader:
    """The reader of one filter or pattern subscription: matching topics' streams -> ``sub``.

    :meth:`prepare` (on the subscriber's thread: its errors are the caller's) takes the
    snapshot; :meth:`begin` starts the lanes. ``stop`` and ``thread`` are what the plugin
    sets and joins (the watcher lane's thread, which joins the other lanes as it ends).
    """

    def __init__(
        self,
        *,
        prefix: str,
        matches: Callable[[str], bool],
        stream_of: Callable[[str], str],
        connect: Callable[[float], Client],
        failed: tuple[type[BaseException], ...],
        settings: ClusterSettings,
    ) -> None:
        self._prefix = prefix
        self._matches = matches
        self._stream_of = stream_of
        self._connect = connect
        self._failed = failed
        self._settings = settings
        self._new_key = index_keys(prefix)[1]
        self._lock = threading.Lock()
        self._topics: dict[str, str] = {}
        """Stream key -> topic, for every topic this reader reads."""
        self._lanes: dict[int, _Lane] = {}
        self._group: Callable[[str], int] = lambda key: 0
        self._expected = 1
        self._watcher: _Lane
        """The lane that reads the notification stream (made by :meth:`prepare`)."""
        self._sub: Subscription | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def prepare(self, client: Client) -> None:
        """Read the index and each matching stream's last id: the subscription starts here."""
        from redis.cluster import RedisCluster
        from redis.crc import key_slot

        if isinstance(client, RedisCluster):  # per slot: see the module's text
            self._group = lambda key: int(key_slot(key.encode()))
        notified, members = snapshot(client, self._prefix)
        self._watcher = self._lane(self._new_key)
        self._watcher.positions[self._new_key] = notified
        self._expected = len(members) + 1
        matching = [t for t in members if self._matches(t)]
        keys = [self._stream_of(t) for t in matching]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.xrevrange(key, count=1)
        lasts: Sequence[Any] = pipe.execute() if keys else ()
        for topic, last in zip(matching, lasts, strict=True):
            self._track(topic, _text(last[0][0]) if last else _START)

    def begin(self, sub: Subscription) -> None:
        """Start delivering to ``sub``: the watcher lane, then every other lane."""
        self._watcher.thread = self.thread
        self._sub = sub
        self.thread.name = f"mqkit-cluster-filter-{sub.id}"
        with self._lock:
            lanes = [lane for lane in self._lanes.values() if lane is not self._watcher]
        self.thread.start()
        for lane in lanes:
            self._start(lane)

    def _lane(self, key: str) -> _Lane:
        """The lane of ``key``'s group, made (not started) if there is none; under no lock."""
        group = self._group(key)
        lane = self._lanes.get(group)
        if lane is None:
            lane = self._lanes[group] = _Lane(group)
        return lane

    def _start(self, lane: _Lane) -> None:
        assert self._sub is not None
        lane.thread = threading.Thread(
            target=self._read,
            args=(lane,),
            name=f"mqkit-cluster-filter-{self._sub.id}-{lane.group}",
            daemon=True,
        )
        lane.thread.start()

    def _track(self, topic: str, start: str) -> None:
        """Read ``topic`` from after ``start`` if it matches and is not read yet."""
        if not self._matches(topic):
            return
        key = self._stream_of(topic)
        with self._lock:
            if key in self._topics:
                return
            self._topics[key] = topic
            lane = self._lane(key)
            lane.positions[key] = start
            fresh = lane.thread is None and self._sub is not None
        if fresh:
            self._start(lane)

    # -- the lanes ---------------------------------------------------------------------------

    def _watch(self) -> None:
        try:
            self._read(self._watcher)
        finally:
            with self._lock:
                others = [lane.thread for lane in self._lanes.values()]
            wait = self._settings.read_block + self._settings.socket_timeout + 1
            for thread in others:
                if thread is not None and thread is not self.thread:
                    thread.join(wait)

    def _read(self, lane: _Lane) -> None:
        settings = self._settings
        block_ms = max(1, int(settings.read_block * 1000))
        client = self._connect(settings.read_block)
        backoff = 0.05
        lost = False
        try:
            while not self.stop.is_set():
                try:
                    if lost and lane is self._watcher:
                        self._rescan(client)  # notifications may have been trimmed meanwhile
                    with self._lock:  # keys of one slot (cluster) or all of them (one server)
                        streams = dict(lane.positions)
                    found: Any = client.xread(streams, count=256, block=block_ms)  # type: ignore[arg-type]
                except self._failed as exc:
                    log.warning("cluster filter reader: %s (retrying)", exc)
                    lost = True
                    if self.stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, settings.reconnect_max)
                    continue
                lost, backoff = False, 0.05
                for raw_key, entries in found or ():
                    key = _text(raw_key)
                    if key == self._new_key:
                        self._notified(client, entries)
                    else:
                        self._deliver(lane, key, entries)
        finally:
            client.close()

    def _notified(self, client: Client, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        gap = False
        for entry_id, fields in entries:
            with self._lock:
                self._watcher.positions[self._new_key] = _text(entry_id)
            try:
                topic, number = fields[b"t"].decode(), int(fields[b"n"])
            except (KeyError, ValueError, UnicodeDecodeError):
                log.error("cluster topic index: unreadable notification %r", entry_id)
                continue
            gap = gap or number != self._expected
            self._expected = number + 1
            self._track(topic, _START)
        if gap:
            self._rescan(client)

    def _rescan(self, client: Client) -> None:
        """Read the whole index again: a topic not read yet is read from its first message."""
        notified, members = snapshot(client, self._prefix)
        with self._lock:
            self._watcher.positions[self._new_key] = notified
        self._expected = len(members) + 1
        for topic in members:
            self._track(topic, _START)

    def _deliver(
        self, lane: _Lane, key: str, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> None:
        topic = self._topics[key]
        sub = self._sub
        assert sub is not None
        for _entry_id, fields in entries:
            message = decode(fields, topic)
            if message is not None:
                sub.offer(message)
        if entries:
            with self._lock:
                lane.positions[key] = _text(entries[-1][0])


def decode(fields: dict[bytes, bytes], topic: str) -> Message | None:
    """The message of a stream entry of ``topic``'s stream, or None (logged) if it is not one."""
    try:
        message = decode_message(fields[FIELD])
    except (KeyError, ValueError, TypeError, MQError) as exc:
        log.error("cluster stream of %r holds an unreadable entry: %r", topic, exc)
        return None
    if not isinstance(message, Message) or message.topic != topic:
        log.error("cluster stream of %r holds a message of another topic", topic)
        return None
    return message
