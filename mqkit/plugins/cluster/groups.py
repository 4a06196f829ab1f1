"""Consumer groups of the cluster plugin: competing consumers on a topic's Redis stream.

``subscribe_from_cluster(topic, SubOptions(group="workers"))`` makes a :class:`GroupReader`:
a thread that reads the topic's stream as consumer ``<node id>/<subscription id>`` of the
Redis consumer group ``workers`` (``XGROUP CREATE ... $ MKSTREAM`` when the group is new;
``XREADGROUP``), so each entry goes to one subscription of the group on one node. The reader
first reads its own pending entries (id ``0``: after a reconnect it resumes them), then new
ones (``>``), and about once a second claims entries idle for longer than the ack timeout
(``XAUTOCLAIM``): those of a node that died or stopped, and those given back to the group.

Each entry a reader buffered is *held* until it is settled. The per-node :class:`Settler`
thread sends what settles entries, batched in one pipeline, through one Lua script that acts
only on entries this consumer still owns (``XPENDING``): ``ack`` (``XACK``), ``bump`` (a
redelivery: ``XCLAIM`` to itself, raising the delivery count), ``release`` (back to the
group: ``XCLAIM ... IDLE`` so the next claim takes it), ``dead`` (``XADD`` to the topic's
dead letter stream, then ``XACK``); every third of the ack timeout it ``touch``\\es every held
entry (``XCLAIM ... JUSTID``: idle time 0), so a live node's entries are never claimed by
the others, however long they wait in its buffer.

When a held entry settles:

- an ack-required message (``AckMessage``/``AckTTLMessage``, ack support on) when the consumer
  acks it (the ``ack`` plugin's ``mqkit_ack``); the ``ack`` plugin's redelivery after a nack
  or a missed deadline goes to the same subscription and bumps the entry; its dead letter
  (after ``max_ack_retries`` redeliveries, or ``nack(requeue=False)``) goes to the dead letter
  stream;
- any other message (and every message with ack support off) when it is handed out;
- an entry a subscription drops (backpressure, cancelled) goes back to the group; an expired
  one (``ttl``) goes to the dead letter stream with reason ``expired``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from mqkit.core.errors import MQError
from mqkit.core.message import Message, needs_ack
from mqkit.core.subscription import Subscription
from mqkit.plugins.persistence.serializer import decode_message, encode_message

if TYPE_CHECKING:
    from mqkit.plugins.cluster.connection import Client
    from mqkit.plugins.cluster.plugin import ClusterPlugin

__all__ = ["GroupReader", "Settler", "dead_letter_copy"]

log = logging.getLogger("mqkit.cluster")

FIELD: Final = b"m"
"""The one field of a stream entry: the message's stored JSON."""

UNSUBSCRIBED: Final = "unsubscribed before ack"
"""The ``ack`` plugin's reason for what a cancelled subscription held: back to the group."""

_SETTLING: Final = frozenset({"ack", "dead", "release"})
"""The modes that end holding an entry."""

_RELEASED_IDLE_MS: Final = 10**10
"""The idle time an entry given back to the group gets: the next claim takes it."""

SETTLE: Final = """
local key, dead = KEYS[1], KEYS[2]
local group, me, mode, idle, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local step = 1
if mode == 'dead' then step = 4 end
local done = 0
for i = 6, #ARGV, step do
  local id = ARGV[i]
  local owner = false
  local p = redis.call('XPENDING', key, group, id, id, 1)
  if p[1] then owner = p[1][2] end
  if mode == 'dead' then
    if owner == me or owner == false then
      local fields = {'m', ARGV[i + 1], 'reason', ARGV[i + 2], 'attempts', ARGV[i + 3],
                      'entry', id, 'group', group}
      if maxlen > 0 then
        redis.call('XADD', dead, 'MAXLEN', '~', maxlen, '*', unpack(fields))
      else
        redis.call('XADD', dead, '*', unpack(fields))
      end
      if owner == me then redis.call('XACK', key, group, id) end
      done = done + 1
    end
  elseif owner == me then
    if mode == 'ack' then
      redis.call('XACK', key, group, id)
    elseif mode == 'touch' then
      redis.call('XCLAIM', key, group, me, 0, id, 'JUSTID')
    elseif mode == 'bump' then
      redis.call('XCLAIM', key, group, me, 0, id)
    elseif mode == 'release' then
      redis.call('XCLAIM', key, group, me, 0, id, 'IDLE', idle, 'JUSTID')
    end
    done = done + 1
  end
end
return done
"""
"""Settle entries this consumer owns (``dead``: also entries no consumer owns any more)."""


def dead_letter_copy(message: Message, topic: str, reason: str, attempts: int) -> Message:
    """The dead letter of ``message`` as the ``deadletter`` plugin makes it (a plain message)."""
    meta = dict(message.meta)
    meta.update(
        {
            "x-original-topic": topic,
            "x-dead-letter-reason": reason,
            "x-attempts": str(attempts),
        }
    )
    return Message(message.id, message.data, topic=topic, type=message.type, meta=meta)


@attrs.define(slots=True)
class _Held:
    """One entry a group reader holds: buffered or handed out, not settled."""

    entry: str
    message: Message
    nacked: bool = False


_READ_LINGER = 0.003
"""Seconds a busy group reader waits after a read that found only a few new entries."""
_GATHER = 32
"""A read that finds fewer new entries than this (and than the buffer's room) may wait a little."""
_BUSY_RATE = 2000.0
"""Entries per second from which a reader lingers: below it, each read takes what came."""
_LINGER = 0.005
"""Seconds the settler waits after the first of a few settlings, for more to join them."""
_BATCH = 256
"""Settlings that are sent at once, without waiting for more."""


class GroupReader:
    """One group subscription: its reader thread and the entries it holds."""

    def __init__(
        self,
        plugin: ClusterPlugin,
        key: str,
        dead_key: str,
        topic: str,
        group: str,
        sub: Subscription,
    ) -> None:
        self.plugin = plugin
        self.key = key
        self.dead_key = dead_key
        self.topic = topic
        self.group = group
        self.sub = sub
        self.consumer = f"{plugin.node_id}/{sub.id}"
        """This subscription's consumer name in the group: node id and subscription id."""
        self.lock = threading.Lock()
        self.held: dict[str, _Held] = {}  # entry id -> what is held
        self.by_obj: dict[int, str] = {}  # id() of the buffered or delivered copy -> entry id
        self.by_ack: dict[str, str] = {}  # ack id -> entry id (one per ack id at a time)
        self.waiting: dict[str, deque[tuple[str, Message]]] = {}  # ack id taken: held back
        self.settling: set[str] = set()  # settled here, not yet in Redis: not read again
        self.space = threading.Event()  # a message was handed out: room in the buffer
        self.wants_space = False  # the reader waits (or is about to) for ``space``
        self.claim_now = False  # an entry went back to the group: claim without waiting
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self.run, name=f"mqkit-cluster-group-{sub.id}", daemon=True
        )

    # -- reading ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Read own pending entries, then new ones; claim idle ones; reconnect with backoff."""
        plugin = self.plugin
        settings = plugin.settings
        block_ms = max(1, int(settings.read_block * 1000))
        idle_ms = max(1, int(plugin.claim_idle * 1000))
        client = plugin.client(read_block=settings.read_block)
        resume: str | None = "0"  # own pending entries first
        cursor = "0-0"
        next_claim = 0.0
        last_read = time.monotonic()  # when the last read of new entries returned
        backoff = 0.05
        try:
            while not self.stop.is_set():
                try:
                    room = self.room()
                    if not room:  # a full buffer: read nothing until a consumer takes one
                        self.space.wait(settings.read_block)
                        continue
                    self.wants_space = False
                    if resume is not None:
                        found: Any = client.xreadgroup(
                            self.group, self.consumer, {self.key: resume}, count=room
                        )
                        entries = found[0][1] if found else []
                        if not entries:
                            resume = None
                            continue
                        resume = entries[-1][0].decode()
                        self.take(client, entries, fresh=False)
                    elif self.claim_now or time.monotonic() >= next_claim:
                        self.claim_now = False
                        reply: Any = client.xautoclaim(
                            self.key, self.group, self.consumer, idle_ms, cursor, count=room
                        )
                        cursor = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
                        more = cursor not in ("0-0", "0")
                        next_claim = 0.0 if more else time.monotonic() + plugin.claim_every
                        if not more:
                            cursor = "0-0"
                        self.take(client, reply[1], fresh=False)
                    else:
                        found = client.xreadgroup(
                            self.group,
                            self.consumer,
                            {self.key: ">"},
                            count=room,
                            block=block_ms,
                        )
                        got = 0
                        for _key, entries in found or ():
                            got += len(entries)
                            self.take(client, entries, fresh=True)
                        now = time.monotonic()
                        span, last_read = now - last_read, now
                        if 0 < got < min(room, _GATHER) and got >= span * _BUSY_RATE:
                            # A fast stream read a few at a time: let more gather than read
                            # them one call each (waits <= 3 ms). A slower one is read as it
                            # comes, each message at once.
                            self.stop.wait(_READ_LINGER)
                except plugin.failed as exc:
                    if "NOGROUP" in str(exc):  # the stream was deleted: the group starts over
                        log.warning(
                            "cluster group %r of %r: %s (made again)", self.group, self.topic, exc
                        )
                        try:
                            plugin.create_group(client, self.key, self.group, "0")
                        except plugin.failed as again:
                            log.warning("cluster group %r: %s", self.group, again)
                    else:
                        log.warning("cluster group reader of %r: %s (retrying)", self.topic, exc)
                    resume = "0"  # back: resume from the pending entries
                    if self.stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, settings.reconnect_max)
                    continue
                backoff = 0.05
        finally:
            client.close()

    def room(self) -> int:
        """How many entries to read now: the buffer's free room (at most 256)."""
        self.wants_space = True
        self.space.clear()  # before the look: a take after it sets it again
        sub = self.sub
        return max(0, min(256, sub.queue_cap - sub.queue_len))

    def take(self, client: Client, entries: Sequence[Any], *, fresh: bool) -> None:
        """Hold and buffer the entries read; dead-letter those delivered too often."""
        if not entries:
            return
        counts: dict[str, int] = {}
        if not fresh:
            ids = [e[0].decode() for e in entries]
            rows: Any = client.xpending_range(
                self.key,
                self.group,
                min=ids[0],
                max=ids[-1],
                count=len(ids) + len(self.held) + 16,
                consumername=self.consumer,
            )
            for row in rows:
                counts[row["message_id"].decode()] = int(row["times_delivered"])
        limit = self.plugin.broker.config.max_ack_retries + 1
        gone: list[str] = []
        for raw_id, fields in entries:
            entry = raw_id.decode()
            if not fresh and self.knows(entry):
                continue  # resumed after a reconnect: still held (or settled) here
            message = self.decode(fields)
            if message is None:
                gone.append(entry)
                continue
            count = counts.get(entry, 1)
            if count > limit:  # delivered max_ack_retries + 1 times, never acked
                attempts = count - 1
                self.plugin.settler.put(
                    self,
                    "dead",
                    entry,
                    message,
                    f"ack timeout after {attempts} attempts",
                    attempts,
                )
                continue
            if message.attempt != count:
                message = attrs.evolve(message, attempt=count)
            self.hold(entry, message)
        if gone:  # trimmed or unreadable: nothing to deliver, it leaves the group
            client.xack(self.key, self.group, *gone)

    def knows(self, entry: str) -> bool:
        """Whether ``entry`` is held here (or held back, or settled and not yet sent)."""
        with self.lock:
            if entry in self.held or entry in self.settling:
                return True
            return any(entry == e for queue in self.waiting.values() for e, _ in queue)

    def decode(self, fields: dict[bytes, bytes] | None) -> Message | None:
        """The message of an entry; None (logged) for a trimmed or unreadable one."""
        if not fields:
            return None  # deleted by MAXLEN while pending
        try:
            message = decode_message(fields[FIELD])
        except (KeyError, ValueError, TypeError, MQError) as exc:
            log.error("cluster stream of %r holds an unreadable entry: %r", self.topic, exc)
            return None
        if not isinstance(message, Message) or message.topic != self.topic:
            log.error("cluster stream of %r holds a message of another topic", self.topic)
            return None
        return message

    def hold(self, entry: str, message: Message) -> None:
        """Hold ``entry`` and buffer its message (or hold it back behind its ack id)."""
        ack_id = getattr(message, "ack_id", "") if needs_ack(message) else ""
        with self.lock:
            if ack_id and ack_id in self.by_ack:  # one copy per ack id at a time
                self.waiting.setdefault(ack_id, deque()).append((entry, message))
                return
            self.held[entry] = _Held(entry, message)
            self.by_obj[id(message)] = entry
            if ack_id:
                self.by_ack[ack_id] = entry
        if not self.sub.offer(message):
            self.release(message)  # closed (a policy drop went back through ``dropped``)

    # -- settling (consumer threads, the ack plugin's timer) ---------------------------------------

    def _pop(self, entry: str) -> _Held | None:
        """Under the lock: stop holding ``entry``; its ack id's next copy may come."""
        held = self.held.pop(entry, None)
        if held is None:
            return None
        self.by_obj.pop(id(held.message), None)
        ack_id = getattr(held.message, "ack_id", "")
        if ack_id and self.by_ack.get(ack_id) == entry:
            del self.by_ack[ack_id]
        return held

    def _waiting(self, message: Message) -> tuple[str, Message] | None:
        """Under the lock: the copy held back behind ``message``'s ack id, taken off its queue."""
        ack_id = getattr(message, "ack_id", "")
        queue = self.waiting.get(ack_id) if ack_id else None
        if not queue or ack_id in self.by_ack:
            return None
        waiting = queue.popleft()
        if not queue:
            del self.waiting[ack_id]
        return waiting

    def _settle(self, entry: str | None, mode: str, *extra: Any) -> Message | None:
        if entry is None:
            return None
        with self.lock:
            held = self._pop(entry)
            if held is None:
                return None
            self.settling.add(entry)
            waiting = self._waiting(held.message) if self.waiting else None
        self.plugin.settler.put(self, mode, entry, *extra)
        if waiting is not None:  # its ack id's next copy may come now
            self.hold(*waiting)
        return held.message

    def taken(self, subscription: Subscription, message: Message) -> None:
        """Handed out (a ``Taps.taken``): settled now unless the ``ack`` plugin tracks it."""
        if self.wants_space:
            self.wants_space = False
            self.space.set()
        if needs_ack(message) and self.plugin.broker.has_feature("ack"):
            return
        with self.lock:
            entry = self.by_obj.get(id(message))
        self._settle(entry, "ack")

    def acked(self, message: Message) -> None:
        """The consumer acked an ack-required message: ``XACK``."""
        self._settle(self.by_ack.get(getattr(message, "ack_id", "")), "ack")  # (dict.get: atomic)

    def nacked(self, message: Message) -> None:
        """The consumer nacked: remembered for the dead letter's reason."""
        with self.lock:
            entry = self.by_ack.get(getattr(message, "ack_id", ""))
            held = self.held.get(entry) if entry is not None else None
            if held is not None:
                held.nacked = True

    def redelivered(self, message: Message) -> None:
        """The ``ack`` plugin put ``message`` back in the buffer: bump the entry's count."""
        with self.lock:
            entry = self.by_ack.get(getattr(message, "ack_id", ""))
            held = self.held.get(entry) if entry is not None else None
            if held is None or entry is None:
                return
            self.by_obj.pop(id(held.message), None)
            held.message = message
            self.by_obj[id(message)] = entry
        self.plugin.settler.put(self, "bump", entry)

    def find(self, message: Message) -> str | None:
        """The entry of a buffered or delivered copy, or None."""
        with self.lock:
            entry = self.by_obj.get(id(message))
            if entry is None and needs_ack(message):
                entry = self.by_ack.get(getattr(message, "ack_id", ""))
                held = self.held.get(entry) if entry is not None else None
                if held is None or held.message.attempt != message.attempt:
                    entry = None
            return entry

    def release(self, message: Message) -> None:
        """Give the entry of ``message`` back to the group (the next claim takes it)."""
        self._settle(self.find(message), "release")
        self.plugin.claim_soon(self.key)

    def dead(self, message: Message, reason: str, attempts: int, *, known: bool) -> bool:
        """Dead-letter ``message`` to the stream; ``known``: also when no entry is held."""
        entry = self.find(message)
        if entry is None and not known:
            return False
        if reason == UNSUBSCRIBED:
            self.release(message)
            return True
        if entry is None or self._settle(entry, "dead", message, reason, attempts) is None:
            # no entry held (settled when handed out): the dead letter is written all the same
            self.plugin.settler.put(self, "dead", "0-0", message, reason, attempts)
        return True

    def reason_of(self, message: Message) -> str:
        """Why the broker gave up a held message it could not dead-letter itself."""
        expires = getattr(message, "expires_at", None)
        if expires is not None and expires <= self.plugin.broker.clock.now():
            return "expired"
        with self.lock:
            entry = self.by_obj.get(id(message))
            held = self.held.get(entry) if entry is not None else None
        why = "nacked" if held is not None and held.nacked else "ack timeout"
        return f"{why} after {message.attempt} attempts"

    def entries(self) -> list[str]:
        """Every entry held (buffered, delivered or held back), for the touch."""
        with self.lock:
            return self._entries()

    def _entries(self) -> list[str]:
        ids = list(self.held)
        for queue in self.waiting.values():
            ids.extend(entry for entry, _ in queue)
        return ids

    def sent(self, entries: Sequence[str]) -> None:
        """The settling of ``entries`` reached Redis."""
        with self.lock:
            self.settling.difference_update(entries)

    def release_all(self) -> None:
        """Give every held entry back to the group (the broker closes)."""
        with self.lock:
            ids = self._entries()
            self.held.clear()
            self.by_obj.clear()
            self.by_ack.clear()
            self.waiting.clear()
        for entry in ids:
            self.plugin.settler.put(self, "release", entry)


class Settler:
    """The node's thread that settles held entries in Redis, batched, and touches them."""

    def __init__(self, plugin: ClusterPlugin, readers: Callable[[], list[GroupReader]]) -> None:
        self.plugin = plugin
        self.readers = readers
        self.cond = threading.Condition()
        self.ops: list[tuple[GroupReader, str, tuple[Any, ...]]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name="mqkit-cluster-settler", daemon=True)
        self.thread.start()

    def put(self, reader: GroupReader, mode: str, entry: str, *extra: Any) -> None:
        """Queue one settling of ``entry`` (``extra``: a dead letter's message, reason, count)."""
        with self.cond:
            if self.stopping and not self.thread.is_alive():
                log.warning("cluster: %s of %s after close not sent", mode, entry)
                return
            self.ops.append((reader, mode, (entry, *extra)))
            self.cond.notify()

    def close(self, timeout: float) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout)

    def run(self) -> None:
        """Send what is queued; touch every held entry each third of the ack timeout."""
        plugin = self.plugin
        touch_every = max(plugin.claim_idle / 3, 0.02)
        next_touch = time.monotonic() + touch_every
        backoff = 0.05
        client = plugin.client()
        try:
            while True:
                with self.cond:
                    while not self.ops and not self.stopping:
                        left = next_touch - time.monotonic()
                        if left <= 0:
                            break
                        self.cond.wait(left)
                    linger = 0 < len(self.ops) < _BATCH and not self.stopping
                if linger:  # let a trickle of settlings gather: one script call for many
                    time.sleep(_LINGER)
                with self.cond:
                    ops, self.ops = self.ops, []
                    stopping = self.stopping
                try:
                    if ops:
                        self.send(client, ops)
                        ops = []
                    if time.monotonic() >= next_touch and not stopping:
                        next_touch = time.monotonic() + touch_every
                        self.send(
                            client,
                            [(r, "touch", (e,)) for r in self.readers() for e in r.entries()],
                        )
                except plugin.no_script:  # Redis restarted and lost the script: load it again
                    with self.cond:
                        self.ops[:0] = ops
                    with contextlib.suppress(*plugin.failed):
                        client.script_load(SETTLE)
                    continue
                except plugin.refused as exc:  # a script error (the group is gone): not retried
                    log.error("cluster settler: Redis refused a batch: %s", exc)
                    self.done(ops)
                except plugin.failed as exc:
                    if stopping:
                        log.warning("cluster: %d settling(s) not sent at close: %s", len(ops), exc)
                        return
                    log.warning("cluster settler: %s (retrying)", exc)
                    with self.cond:
                        self.ops[:0] = ops  # in order, before what came meanwhile
                    if self._wait(backoff):
                        continue
                    backoff = min(backoff * 2, plugin.settings.reconnect_max)
                    continue
                backoff = 0.05
                with self.cond:
                    if stopping and not self.ops:
                        return
        finally:
            client.close()

    def _wait(self, seconds: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.stopping, seconds)

    def send(self, client: Client, ops: Sequence[tuple[GroupReader, str, tuple[Any, ...]]]) -> None:
        """Run the script once per run of operations of one reader and mode, pipelined."""
        if not ops:
            return
        maxlen = str(self.plugin.settings.stream_maxlen)
        pipe = client.pipeline(transaction=False)
        i = 0
        while i < len(ops):
            reader, mode, _ = ops[i]
            args: list[Any] = [reader.group, reader.consumer, mode, _RELEASED_IDLE_MS, maxlen]
            j = i
            while j < len(ops) and ops[j][0] is reader and ops[j][1] == mode and j - i < 500:
                entry, *extra = ops[j][2]
                args.append(entry)
                if mode == "dead":
                    message, reason, attempts = extra
                    copy = dead_letter_copy(message, reader.topic, reason, attempts)
                    args += [encode_message(copy), reason, str(attempts)]
                j += 1
            # execute_command: a Redis Cluster pipeline has no evalsha() (it routes by the keys)
            pipe.execute_command(
                "EVALSHA", self.plugin.settle_sha, 2, reader.key, reader.dead_key, *args
            )
            i = j
        pipe.execute()
        self.done(ops)

    @staticmethod
    def done(ops: Sequence[tuple[GroupReader, str, tuple[Any, ...]]]) -> None:
        """The settlings of ``ops`` reached Redis (or were refused): no longer outstanding."""
        for reader, mode, (entry, *_) in ops:
            if mode in _SETTLING:
                reader.sent((entry,))
