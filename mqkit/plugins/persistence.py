"""The ``persistence`` plugin: a durable message store on diskcache (``enable_persistence``).

Every accepted message - through every publish path; transactional ones when they commit - is
written to ``persistence_path`` before it is delivered, and ``publish`` returns only after the
store's transaction committed (SQLite in WAL mode: a process killed at any instant loses no
message whose publish returned). A batch (``publish_batch``, a committed transaction) is one
store entry, written in one store transaction: storing it costs one write, not one per message.

- **Group commit.** Concurrent calls share a store transaction: the first to arrive leads and
  writes everything queued by then (several calls' messages as one batch entry), the others
  wait for the commit holding theirs. A failed commit fails every call in it and stores none
  of them; a message that cannot be encoded fails its own call before it joins one.
- **Deferred deletes.** A settled or retired entry leaves the index at once; its delete joins
  the next store write, else a timer writes it ``_FLUSH_DELAY`` later, or ``_FLUSH_AT`` waiting
  deletes are written at once, or ``close()`` writes them. A crash can bring back a message
  whose delete was not written yet (at least once); none leaves the disk before it settled.

- **Order and recovery.** Each stored message gets its own sequence number, its identity in the
  store: two publishes are two stored messages, whatever their ids and however close in time.
  The numbers only grow, across restarts too (the store keeps a high-water mark, written once
  per ``_SEQ_BLOCK`` numbers). ``recover_messages(topic, limit)`` returns the oldest ``limit``
  stored messages of a topic in publish order, and ``replay_messages`` re-delivers them without
  storing them twice: a recovered message carries its number
  (:func:`~mqkit.core.message.store_seq`), and so does every copy the broker delivers
  (redeliveries included), while a publish is always a new message.
- **What stays.** An ack-required message (with ack support on) stays stored until every
  subscription that buffered a copy of it has settled that copy: acknowledged it, or given it up
  (dead-lettered after ``nack(requeue=False)`` or its retries, expired, dropped from its buffer,
  or removed or held unacknowledged when the subscription was cancelled). A copy a full buffer
  refused never counts. After a restart nothing was delivered yet: the copies of a replay count.
  Such a message is exempt from retention; when a topic holds more of them than
  ``persistence_max_messages``, or one older than ``persistence_max_age``, ``health_check()``
  says so. Other messages stay until retention removes them: at most
  ``persistence_max_messages`` per topic (the unsettled ones count) and none older than
  ``persistence_max_age`` - enforced from an in-memory index, without scanning the store, on
  every store and before every recovery.
- **Payloads** go through mqkit's one converter (:mod:`mqkit.core.convert`): plain data,
  bytes, datetimes and registered attrs classes/dataclasses come back as their own types; any
  other payload is refused at publish with ``SerializationError`` (nothing stored or delivered).
- **Exclusive use.** The directory is locked (``flock`` on ``mqkit.lock``, which names the
  holder's pid); a second broker on it fails with ``PersistenceError``. The lock of a killed
  process is released by the OS, so the next broker simply takes it over.
- **Entries.** A message published alone is one entry, keyed ``[seq, topic, id, micros, ack]``
  (``ack`` 1 for a message settled per subscription, else 0; the index is rebuilt from the keys
  alone). A batch is one entry keyed ``[first seq, count]`` holding
  ``[[topic, id, micros, message, ack], ...]``; a member settled while others are still stored
  is marked by a tombstone entry ``[seq]``, and the entry and its tombstones go when the last
  member is settled. A restart reads batch entries to index their members. Stores written
  before the ``ack`` flag (keys ``[seq, topic, id, micros]``, members of four) are read as they
  are: such an entry's message is read at start to tell whether it waits for acks.
- **Faults.** A corrupted entry (a value that does not decode, or a damaged database page) is
  skipped, counted once and named by ``health_check()``; a store that cannot be opened or
  indexed raises ``PersistenceError`` at ``Broker(...)``; a store that cannot be written (disk
  full, read-only) makes publish raise ``PersistenceError`` at once - nothing is delivered -
  and the broker keeps working for what does not need the disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii
from pathlib import Path

import diskcache

from mqkit.core.broker import Broker
from mqkit.core.convert import check_fields, message_from_dict, message_to_dict, stored_json
from mqkit.core.convert import to_json as _to_json
from mqkit.core.errors import MQError, PersistenceError, SerializationError
from mqkit.core.features import PersistenceFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import Message, has_field, set_store_seq, store_seq
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import Subscription
from mqkit.core.timers import TimerHandle
from mqkit.core.topics import normalize_topic

__all__ = ["LOCK_FILE", "PersistencePlugin", "StoreLock", "batch_members", "parse_entry_key"]

LOCK_FILE = "mqkit.lock"
_STORE_DIR = "store"
# (sequence, topic, message id, publish time in microseconds, flags): the sequence number is the
# stored message's identity; the rest lets the index be rebuilt, and a stored value be checked,
# without reading values. In the store the key is its compact JSON text (a str key: diskcache
# would pickle a tuple), ``[seq, topic, id, micros, ack]``.
_Key = tuple[int, str, str, int, int]
_Identity = tuple[str, str, int]  # (topic, message id, publish time in microseconds)
_PINNED = 1  # flag: an ack-required message, settled per subscription, exempt from retention
_OLD = 2  # flag: keyed in the previous format, [seq, topic, id, micros] (no ack flag)
_TOMBSTONE = ""  # the value of a tombstone entry
# The high-water mark of sequence numbers: a table of its own in the store's database (the
# Cache table holds messages only). Written in the transaction of the entry that first uses a
# number at or past it, moved _SEQ_BLOCK numbers ahead: one small write per _SEQ_BLOCK messages.
_META_TABLE = "mqkit_meta"
_NEXT_SEQ = "next_seq"
_SEQ_BLOCK = 1 << 16
# What a diskcache call raises when the store fails. ``diskcache.Timeout`` is raised when a
# write transaction cannot begin (locked, read-only): its ``__context__`` holds the cause.
_STORE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_IN_DATABASE = 1 << 30  # diskcache keeps values smaller than this in SQLite, not in files
# The rows diskcache writes for a text key (raw = 1) with a text value kept in the database
# (size 0, mode 1: MODE_RAW, no file), no tag, never read yet.
_INSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size,"
    " mode, filename, value) VALUES (?, 1, ?, ?, ?, 0, NULL, 0, 1, NULL, ?)"
)
_INSERT_TOMBSTONE = (
    "INSERT OR IGNORE INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
    " tag, size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 1, NULL, ?)"
)
_DELETE = "DELETE FROM Cache WHERE key = ? AND raw = 1 AND filename IS NULL"
_DELETE_ANY = "DELETE FROM Cache WHERE key = ? AND raw = 1"
_SELECT_FILE = "SELECT filename FROM Cache WHERE key = ? AND raw = 1"
# A deleted row made the row of a new entry, in the same transaction (no file behind it).
_RECYCLE = (
    "UPDATE Cache SET key = ?, store_time = ?, expire_time = ?, access_time = ?,"
    " access_count = 0, tag = NULL, size = 0, mode = 1, filename = NULL, value = ?"
    " WHERE key = ? AND raw = 1 AND filename IS NULL"
)
_NAMED_CORRUPTIONS = 3  # how many corrupted entries health_check() names


class StoreLock:
    """An exclusive ``flock`` on ``<directory>/mqkit.lock`` holding the owner's pid."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``PersistenceError`` naming the directory and the holder."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PersistenceError.because(f"cannot open {str(self.path)!r}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise PersistenceError.because(
                    f"persistence directory {str(self.path.parent)!r} is in use by another "
                    f"broker (pid {holder})"
                ) from None
            raise PersistenceError.because(f"cannot lock {str(self.path)!r}: {exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _micros(instant: datetime | None) -> int:
    """Microseconds since the epoch, exactly (naive instants are taken as UTC)."""
    if instant is None:
        return 0
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return (instant - _EPOCH) // _MICROSECOND


def _identity(message: Message) -> _Identity:
    return (message.topic, message.id, _micros(message.time))


def _key_text(key: _Key) -> str:
    """``_to_json`` of the stored key, written out: the key of every message stored alone."""
    topic, message_id = encode_basestring_ascii(key[1]), encode_basestring_ascii(key[2])
    flags = key[4]
    if flags & _OLD:
        return f"[{key[0]},{topic},{message_id},{key[3]}]"
    return f"[{key[0]},{topic},{message_id},{key[3]},{flags & _PINNED}]"


def _pinned_data(data: object) -> bool:
    """Whether stored message data is of an ack-required message (``needs_ack``, as data)."""
    policy = data.get("ack_policy") if isinstance(data, dict) else None
    return type(policy) is int and policy != 0


def parse_entry_key(text: object) -> tuple[int] | tuple[int, int] | _Key | None:
    """What a stored key text stands for; None when it is not one of ours.

    A message ``(seq, topic, id, micros, flags)`` from ``[seq, topic, id, micros, ack]`` (flags
    1 when ``ack`` is 1: settled per subscription) or from the previous format
    ``[seq, topic, id, micros]`` (flags 2: whether it waits for acks is in its value); a batch
    ``(first, count)`` from ``[first, count]``; a tombstone ``(seq,)`` from ``[seq]``.
    """
    if not isinstance(text, str):
        return None
    try:
        parts = json.loads(text)
    except ValueError:
        return None
    if not isinstance(parts, list):
        return None
    parsed: tuple[int] | tuple[int, int] | _Key
    if (
        len(parts) in (4, 5)
        and type(parts[0]) is int
        and type(parts[1]) is str
        and type(parts[2]) is str
        and type(parts[3]) is int
    ):
        if len(parts) == 4:
            parsed = (parts[0], parts[1], parts[2], parts[3], _OLD)
        elif parts[4] in (0, 1) and type(parts[4]) is int:
            parsed = (parts[0], parts[1], parts[2], parts[3], parts[4])
        else:
            return None
        return parsed if _key_text(parsed) == text else None
    if len(parts) == 2 and type(parts[0]) is int and type(parts[1]) is int and parts[1] > 1:
        parsed = (parts[0], parts[1])
    elif len(parts) == 1 and type(parts[0]) is int:
        parsed = (parts[0],)
    else:
        return None
    return parsed if _to_json(parsed) == text else None


def _describe(key: _Key) -> str:
    return f"topic {key[1]!r} message {key[2]!r} (#{key[0]})"


def _store_error(exc: BaseException) -> str:
    """The text of a failed store call (the SQLite error behind a ``diskcache.Timeout``)."""
    if isinstance(exc, diskcache.Timeout):
        cause = exc.__context__
        if isinstance(cause, sqlite3.Error):
            return str(cause)
        return "timed out waiting for the store"
    if isinstance(exc, OSError | sqlite3.Error):
        return str(exc)
    return repr(exc)


def _is_corruption(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_CORRUPT


class _Batch:
    """A stored batch entry: which of its members are settled, which have tombstones."""

    __slots__ = ("count", "first", "live", "tombstoned")

    def __init__(self, first: int, count: int, live: int) -> None:
        self.first = first
        self.count = count
        self.live = live  # members not settled yet
        self.tombstoned: list[int] = []  # the sequence numbers of its tombstone entries

    @property
    def text(self) -> str:
        return _to_json((self.first, self.count))


class _Pin:
    """A stored ack-required message: how many copies were buffered and settled.

    It is settled - and leaves the store - once no publish or replay of it is being routed
    (``routing``), at least one copy was buffered, and as many copies were settled. A copy may
    be settled before its routing ends (a fast consumer, a concurrent eviction): it counts all
    the same, so the order of the hooks does not matter.
    """

    __slots__ = ("copies", "key", "routing", "settled", "stored_at")

    def __init__(self, key: _Key, stored_at: float, routing: int) -> None:
        self.key = key
        self.stored_at = stored_at
        self.routing = routing  # publishes or replays of it between accept and published
        self.copies = 0  # copies that entered a subscription's buffer
        self.settled = 0  # copies that ended (acknowledged or given up)

    @property
    def done(self) -> bool:
        return self.routing <= 0 and 0 < self.copies <= self.settled


def batch_members(raw: object, first: int, count: int) -> list[tuple[_Key, dict[str, object]]]:
    """The members of the batch entry ``[first, count]`` whose stored value is ``raw``.

    Each member comes with its key ``(seq, topic, id, micros, flags)`` and its message data (for
    ``message_from_dict``). Members are ``[topic, id, micros, message, ack]``, or
    ``[topic, id, micros, message]`` in stores of the previous format (then the message's own
    ack policy says whether it is settled per subscription). Raises ``ValueError`` when ``raw``
    is not such a batch.
    """
    if not isinstance(raw, str):
        raise ValueError("stored value is not text")
    items = json.loads(raw)
    if not isinstance(items, list) or len(items) != count:
        raise ValueError("not a batch of the size its key says")
    members: list[tuple[_Key, dict[str, object]]] = []
    for i, item in enumerate(items):
        if not (
            isinstance(item, list)
            and len(item) in (4, 5)
            and type(item[0]) is str
            and type(item[1]) is str
            and type(item[2]) is int
            and isinstance(item[3], dict)
            and (len(item) == 4 or item[4] in (0, 1))
        ):
            raise ValueError(f"member {i} is malformed")
        data = item[3]
        pinned = int(item[4]) if len(item) == 5 else int(_pinned_data(data))
        members.append(((first + i, item[0], item[1], item[2], pinned), data))
    return members


_COPY_ENDS = frozenset({"drop_oldest", "withheld", "unsubscribed"})
"""``mqkit_drop`` reasons that end a buffered copy (the others: the copy never entered)."""
_FLUSH_DELAY = 0.01
"""Seconds a deferred delete (of a settled message) waits at most for a store write to join."""
_GROUP_WAIT = 0.001
"""Seconds a group commit's leader waits at most for the previous group's publishers to return."""
_FLUSH_AT = 256
"""Deferred deletes that make the thread deferring the last one write them all at once."""


class _Job:
    """One call's store write waiting for its group commit (no messages: a flush).

    ``text`` is the value of the call's own entry: a message's JSON, or a batch's
    ``[[topic, id, micros, message, ack], ...]``. ``wake`` is held until the leader releases
    it: the job is ``done`` (``error`` says how), or its thread leads the next group.
    """

    __slots__ = ("done", "error", "expire", "identities", "messages", "replayed", "text", "wake")

    def __init__(
        self,
        messages: Sequence[Message],
        identities: list[tuple[str, str, int, int]],
        text: str,
        expire: float | None,
        replayed: list[_Pin],
    ) -> None:
        self.messages = messages
        self.identities = identities
        self.text = text
        self.expire = expire
        self.replayed = replayed
        self.done = False
        self.error: PersistenceError | None = None
        self.wake: threading.Lock | None = None

    def members(self) -> str:
        """The job's batch members, ``[topic, id, micros, message, ack]``, comma-separated."""
        if len(self.identities) > 1:
            return self.text[1:-1]  # a batch's text: its members in brackets
        topic, message_id, micros, pinned = self.identities[0]
        return (
            f"[{encode_basestring_ascii(topic)},{encode_basestring_ascii(message_id)},"
            f"{micros},{self.text},{pinned}]"
        )


class PersistencePlugin(PersistenceFeature):
    """Stores accepted messages in a diskcache directory and recovers them in publish order."""

    plugin_info = PluginInfo(
        name="persistence",
        description="durable message store with recovery (diskcache)",
        flag="enable_persistence",
        runtime_toggle=False,
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Group commit: the calls waiting for a store write, the thread committing one
        # (``_leading``), and the settled entries' deletes waiting to join a write.
        self._queue: list[_Job] = []
        self._leading = False
        self._group = 0  # calls that stored messages in the last group commit
        self._want = 0  # while the leader waits for them: that many calls queued
        self._arrived = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)  # leading ended (close waits for it)
        self._closing = False
        self._deferred: list[tuple[str, bool]] = []  # (entry text, True: set a tombstone)
        self._deferred_at = 0.0  # when the oldest of them was deferred (monotonic)
        self._flush_timer: TimerHandle | None = None
        self._cache: diskcache.Cache | None = None
        self._store_lock: StoreLock | None = None
        self._seq = 0  # the next sequence number
        self._reserved = 0  # the high-water mark the store holds: numbers below it may be used
        self._keys: dict[int, _Key] = {}  # sequence number -> key, of every stored message
        # topic -> (key, stored at) of the messages retention may remove, in publish order;
        # entries no longer in _keys were settled (deleted) and are skipped and trimmed lazily.
        self._index: dict[str, deque[tuple[_Key, float]]] = {}
        # The ack-required ones, settled per subscription: by topic (in publish order) and all.
        self._pinned: dict[str, dict[int, _Pin]] = {}
        self._pins: dict[int, _Pin] = {}
        self._live_count: dict[str, int] = {}  # topic -> stored messages (pinned included)
        self._batches: dict[int, _Batch] = {}  # sequence number of a live member -> its entry
        self._ack_classes: dict[type, int] = {}  # message class -> _PINNED if it has ack_policy
        self._corrupted: dict[str, None] = {}  # descriptions, in the order they were found
        self._write_errors = 0
        self._last_write_error = ""
        self._broker: Broker | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Lock the directory, open the store, and index what it holds."""
        config = broker.config
        directory = Path(config.persistence_path).expanduser()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PersistenceError.because(
                f"cannot create persistence directory {str(directory)!r}: {exc}"
            ) from exc
        store_lock = StoreLock(directory)
        store_lock.acquire()
        cache: diskcache.Cache | None = None
        try:
            cache = diskcache.Cache(
                str(directory / _STORE_DIR),
                eviction_policy="none",
                statistics=False,
                tag_index=False,
                sqlite_synchronous=1,
                # Age retention runs from the index (_expired): no culling query on every write.
                cull_limit=0,
                # Batches stay in the database, written in the same transaction as their row.
                disk_min_file_size=_IN_DATABASE,
            )
            self._load_index(broker, cache)
        except Exception as exc:  # diskcache fails in many ways on a damaged database
            if cache is not None:
                cache.close()
            store_lock.release()
            raise PersistenceError.because(
                f"cannot open the store in {str(directory)!r}: {_store_error(exc)}"
            ) from exc
        self._store_lock, self._cache, self._broker = store_lock, cache, broker
        self._closing = False

    @hookimpl
    def mqkit_broker_close(self) -> None:
        """Write the deferred deletes, close the store and release the directory."""
        if self._cache is not None:
            self._flush()
        with self._lock:
            self._closing = True
            self._idle.wait_for(lambda: not self._leading)
            cache, self._cache = self._cache, None
            self._broker = None
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            self._deferred.clear()
        if cache is not None:
            cache.close()
        if self._store_lock is not None:
            self._store_lock.release()
            self._store_lock = None

    def _load_index(self, broker: Broker, cache: diskcache.Cache) -> None:
        cache.expire()  # drop what outlived persistence_max_age while we were down
        keys: list[_Key] = []
        old: list[_Key] = []  # keyed in the previous format: the value says if it waits for acks
        batches: list[_Batch] = []
        tombstones: set[int] = set()
        listed = 0
        for text in cache.iterkeys():
            listed += 1
            parsed = parse_entry_key(text)
            if parsed is None:
                self._corrupted[f"key {text!r:.60}"] = None
            elif len(parsed) == 5:
                (old if parsed[4] & _OLD else keys).append(parsed)
            elif len(parsed) == 2:
                batches.append(_Batch(parsed[0], parsed[1], 0))
            else:
                tombstones.add(parsed[0])
        counted = len(cache)  # kept by triggers, apart from the key index: damage shows here
        if counted != listed:
            self._corrupted[f"the store counts {counted} entries but its index lists {listed}"] = (
                None
            )
        for key in old:
            try:
                raw = cache.get(_key_text(key), default=None)
                pinned = isinstance(raw, str) and _pinned_data(json.loads(raw))
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise
                pinned = False  # recover() finds the damage and reports it
            except Exception:  # a damaged row or value: as above
                pinned = False
            keys.append((*key[:4], _OLD | (_PINNED if pinned else 0)))
        doomed_texts: list[str] = []
        used_tombstones: set[int] = set()
        for batch in batches:
            seqs = range(batch.first, batch.first + batch.count)
            batch.tombstoned = [seq for seq in seqs if seq in tombstones]
            used_tombstones.update(batch.tombstoned)
            try:
                raw = cache.get(batch.text, default=None)
                members = batch_members(raw, batch.first, batch.count)
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise
                members = None
            except Exception:  # a damaged row or value
                members = None
            if members is None:
                last = batch.first + batch.count - 1
                self._corrupted[f"batch #{batch.first}..#{last}"] = None
                continue
            for key, _ in members:
                if key[0] not in tombstones:
                    keys.append(key)
                    self._batches[key[0]] = batch
                    batch.live += 1
            if batch.live == 0:  # every member settled; the entry outlived them
                doomed_texts.append(batch.text)
                doomed_texts += [_to_json((seq,)) for seq in batch.tombstoned]
        doomed_texts += [_to_json((seq,)) for seq in tombstones - used_tombstones]
        keys.sort()
        # Ages count from each message's publish time (a restart does not make them younger).
        mono, wall = broker.clock.monotonic(), broker.clock.time()
        for key in keys:
            self._remember((key,), mono - max(0.0, wall - key[3] / 1_000_000), 0)
        used = [key[0] for key in keys[-1:]] + [b.first + b.count - 1 for b in batches]
        self._reserved = self._read_reserved(cache)
        # New entries never reuse a number the store holds or a broker before this one used.
        self._seq = max([self._reserved, *(seq + 1 for seq in used + list(tombstones))])
        with self._lock:
            doomed: list[_Key] = []
            for topic in list(self._index):
                doomed += self._expired(broker, topic)
            ops = self._delete_ops(doomed, doomed_texts)
        if ops:
            try:
                self._write(cache, ops)
            except _STORE_ERRORS as exc:
                self._write_failed(exc)

    @staticmethod
    def _read_reserved(cache: diskcache.Cache) -> int:
        """The high-water mark of sequence numbers the store holds (0: none yet)."""
        try:
            rows = cache._sql(
                f"SELECT value FROM {_META_TABLE} WHERE key = ?", (_NEXT_SEQ,)
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return 0  # a store that never had a mark (written before it, or never written)
        value = rows[0][0] if rows else 0
        return value if type(value) is int and value > 0 else 0

    @staticmethod
    def _write_reserved(cache: diskcache.Cache, value: int) -> None:
        """In a store transaction: move the high-water mark to ``value``."""
        sql = cache._sql
        sql(f"CREATE TABLE IF NOT EXISTS {_META_TABLE} (key TEXT PRIMARY KEY, value INTEGER)")
        sql(f"INSERT OR REPLACE INTO {_META_TABLE} VALUES (?, ?)", (_NEXT_SEQ, value))

    def _remember(self, keys: Iterable[_Key], stored_at: float, routing: int) -> None:
        """Under the lock (or before start): index stored keys (one loop: a batch's hot path).

        A pinned (ack-required) message starts with ``routing`` publishes under way.
        """
        index, all_keys, counts = self._index, self._keys, self._live_count
        for key in keys:
            seq, topic = key[0], key[1]
            all_keys[seq] = key
            if key[4] & _PINNED:
                pin = self._pins[seq] = _Pin(key, stored_at, routing)
                pinned = self._pinned.get(topic)
                if pinned is None:
                    pinned = self._pinned[topic] = {}
                pinned[seq] = pin
            else:
                entries = index.get(topic)  # not setdefault: it would build a deque every time
                if entries is None:
                    entries = index[topic] = deque()
                entries.append((key, stored_at))
            counts[topic] = counts.get(topic, 0) + 1

    def _forget(self, key: _Key) -> bool:
        """Under the lock: mark ``key`` settled; False if it already was."""
        seq, topic = key[0], key[1]
        if self._keys.pop(seq, None) is None:
            return False
        if key[4] & _PINNED:
            del self._pins[seq]
            pinned = self._pinned[topic]
            del pinned[seq]
            if not pinned:
                del self._pinned[topic]
        left = self._live_count[topic] - 1
        if left:
            self._live_count[topic] = left
        else:
            del self._live_count[topic]
        return True

    # -- storing ---------------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def mqkit_accept(self, broker: Broker, messages: Sequence[Message]) -> None:
        """Store the messages (one entry) before they are delivered: return once committed.

        Concurrent calls share a store transaction (group commit, :meth:`_commit`). A message
        that carries the number of a stored message is that message replayed: it is not stored
        again (a pinned one counts one more routing under way).
        """
        known = self._keys
        replayed: list[_Pin] = []
        fresh: Sequence[Message] = messages
        for message in messages:
            if message._seq in known:  # store_seq(), read directly: -1 is never a key
                fresh, replayed = self._replays(messages)
                if not fresh:
                    self._route(replayed)
                    return
                break
        # Without ack support nothing can settle a copy: then no message is pinned.
        classes = self._ack_classes
        identities: list[tuple[str, str, int, int]] = []
        pinned_any = 0
        for message in fresh:
            cls = message.__class__
            pinned = classes.get(cls)
            if pinned is None:
                pinned = classes[cls] = _PINNED if has_field(cls, "ack_policy") else 0
            if pinned:
                policy: int = message.ack_policy  # type: ignore[attr-defined]
                if policy == 0 or not broker.has_feature("ack"):
                    pinned = 0
            pinned_any |= pinned
            identities.append((message.topic, message.id, _micros(message.time), pinned))
        # Age retention does not apply to a message that waits for acks: no expiry on disk.
        expire = None if pinned_any else broker.config.persistence_max_age
        one = len(fresh) == 1
        text = self._encode(fresh[0]) if one else self._encode_batch(fresh, identities)
        self._commit(_Job(fresh, identities, text, expire, replayed))

    # -- group commit ----------------------------------------------------------------------------

    def _commit(self, job: _Job) -> None:
        """Write ``job`` in a group commit; return once its group committed, or raise its error.

        The first call to arrive leads: it writes in one store transaction everything queued
        by then - the calls' entries, as one entry when there are several, and the deferred
        deletes - then wakes the calls of its group and hands over to the first call queued
        meanwhile. A failed write fails every call of its group, with the error, and stores
        none of them.
        """
        with self._lock:
            cache = self._cache
            if cache is None:
                raise PersistenceError.because("the store is closed")
            if not self._leading and not self._queue and self._group < 2:
                # Alone (no commit under way, none waited for): lead at once with this job.
                self._leading = True
                self._group = 1
                ops, self._deferred = self._deferred, []
                alone = (cache, self._broker, ops, self._seq)
            else:
                alone = None
                self._queue.append(job)
                if self._want and len(self._queue) >= self._want:
                    self._arrived.notify()
                if self._leading:
                    wake = job.wake = threading.Lock()
                    wake.acquire()
                else:
                    self._leading = True
                    wake = None
        if alone is not None:
            self._lead([job], *alone)
        elif wake is not None:
            wake.acquire()  # released by the leader: done, or this thread leads the next group
            if not job.done:
                self._lead()
        else:
            self._lead()
        if job.error is not None:
            raise job.error

    def _lead(
        self,
        taken: list[_Job] | None = None,
        cache: diskcache.Cache | None = None,
        broker: Broker | None = None,
        ops: list[tuple[str, bool]] | None = None,
        first: int = 0,
    ) -> None:
        """In the thread that leads: commit the queued jobs and the deferred deletes together.

        ``taken``: the jobs, already taken under the lock with the rest (a call alone).
        """
        jobs: list[_Job] = []
        successor: _Job | None = None
        try:
            if taken is not None and ops is not None:
                jobs = taken
            else:
                with self._lock:
                    want = self._group
                    if want > 1 and 0 < len(self._queue) < want:
                        # The last group had several calls: their threads, just woken, are on
                        # their way back (the GIL lets one run at a time). One commit for all
                        # of them costs less than one each: wait for them, briefly.
                        self._want = want
                        self._arrived.wait(_GROUP_WAIT)
                        self._want = 0
                    jobs, self._queue = self._queue, []
                    self._group = sum(1 for job in jobs if job.identities)
                    ops, self._deferred = self._deferred, []
                    cache, broker = self._cache, self._broker
                    first = self._seq
            error = self._store(cache, broker, jobs, ops, first)
            with self._lock:
                self._committed(broker, jobs, first, error)
                if self._queue:
                    successor = self._queue[0]
                else:
                    self._end_leading()
        except BaseException as exc:  # a fault of this code: fail the group, never hang it
            with self._lock:
                for job in jobs:
                    if not job.done:
                        job.done = True
                        job.error = PersistenceError.because(f"cannot store message(s): {exc!r}")
                if self._queue:
                    successor = self._queue[0]
                else:
                    self._end_leading()
            raise
        finally:
            for job in jobs:
                if job.wake is not None:
                    job.wake.release()
            if successor is not None and successor.wake is not None:
                successor.wake.release()

    def _end_leading(self) -> None:
        """Under the lock: nobody leads now; deletes left over wait for the flush timer."""
        self._leading = False
        if self._closing:
            self._idle.notify_all()
        if self._deferred and self._flush_timer is None and self._broker is not None:
            self._flush_timer = self._broker.timers.call_later(_FLUSH_DELAY, self._flush_due)

    def _store(
        self,
        cache: diskcache.Cache | None,
        broker: Broker | None,
        jobs: list[_Job],
        ops: list[tuple[str, bool]],
        first: int,
    ) -> BaseException | None:
        """Write a group: its entry and ``ops`` in one store transaction; the error, if any."""
        if cache is None or broker is None:
            return PersistenceError.because("the store is closed")
        entry: str | None = None
        text = ""
        expire: float | None = None
        reserved = 0
        if len(jobs) == 1:  # no group
            stored = jobs if jobs[0].identities else []
        else:
            stored = [job for job in jobs if job.identities]  # not the flushes
        count = sum(len(job.identities) for job in stored)
        if count:
            if count == 1:
                entry = _key_text((first, *stored[0].identities[0]))
            else:
                entry = _to_json((first, count))
            if len(stored) == 1:
                text, expire = stored[0].text, stored[0].expire
            else:  # one batch entry: the members of every call, in the order they came
                text = "[" + ",".join([job.members() for job in stored]) + "]"
                expire = None if any(job.expire is None for job in stored) else stored[0].expire
            if first + count > self._reserved:  # past the high-water mark: move it ahead
                reserved = first + count + _SEQ_BLOCK
        elif not ops:
            return None  # a flush with nothing to write
        try:
            self._write(cache, ops, entry, text, expire, reserved)
        except _STORE_ERRORS as exc:
            return exc
        if reserved:
            self._reserved = reserved
        return None

    def _write(
        self,
        cache: diskcache.Cache,
        ops: list[tuple[str, bool]],
        entry: str | None = None,
        text: str = "",
        expire: float | None = None,
        reserved: int = 0,
    ) -> None:
        """Write ``ops`` (deletes and tombstones), the high-water mark and an entry: one commit.

        On this thread's connection to diskcache's database, in a transaction of its own
        (``BEGIN IMMEDIATE``, as ``Cache.transact``), the rows ``Cache.set`` and
        ``Cache.delete`` write for a text key and a text value kept in the database
        (``MODE_RAW``), without their lookup of an existing row: an entry's key is new (its
        sequence number was never used), and a tombstone is written once (``OR IGNORE``: the
        same row again is no harm). When an entry is written with a delete, the deleted row
        becomes the entry's (one ``UPDATE`` instead of a ``DELETE`` and an ``INSERT``: the same
        rows in the end, half the work). A row whose value is in a file (stores of earlier
        versions) is deleted and its file removed after the commit, as ``Cache.delete`` does.
        Any failure rolls the whole transaction back.
        """
        sql = cache._sql
        files: list[str] = []
        recycled = ""
        if entry is not None:
            for op, tombstone in ops:
                if not tombstone:
                    recycled = op
                    break
        sql("BEGIN IMMEDIATE")
        try:
            now = time.time()
            for op, tombstone in ops:
                if tombstone:
                    sql(_INSERT_TOMBSTONE, (op, now, now, _TOMBSTONE))
                elif op is not recycled and not sql(_DELETE, (op,)).rowcount:
                    self._delete_with_file(sql, op, files)
            if reserved:
                self._write_reserved(cache, reserved)
            if entry is not None:
                expire_time = None if expire is None else now + expire
                row = (entry, now, expire_time, now, text)
                if not recycled or not sql(_RECYCLE, (*row, recycled)).rowcount:
                    if recycled:
                        self._delete_with_file(sql, recycled, files)
                    sql(_INSERT, row)
            sql("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                sql("ROLLBACK")
            raise
        for name in files:
            cache._disk.remove(name)

    @staticmethod
    def _delete_with_file(sql: Callable[..., sqlite3.Cursor], key: str, files: list[str]) -> None:
        """In a store transaction: delete the row ``key`` whose value is in a file (if any)."""
        for (name,) in sql(_SELECT_FILE, (key,)).fetchall():
            sql(_DELETE_ANY, (key,))
            if name is not None:
                files.append(name)

    def _committed(
        self, broker: Broker | None, jobs: list[_Job], first: int, error: BaseException | None
    ) -> None:
        """Under the lock: index a committed group (or fail its jobs); mark its jobs done."""
        if error is not None:
            if isinstance(error, PersistenceError):
                text = error.message
            else:
                text = PersistenceError.because(
                    f"cannot store message(s): {self._write_failed(error)}"
                ).message
            for job in jobs:
                job.done = True
                if job.identities:
                    job.error = PersistenceError(text)
                    job.error.__cause__ = error
            return
        assert broker is not None
        now = broker.clock.monotonic()
        if len(jobs) == 1 and len(jobs[0].identities) == 1:  # a message alone (no group)
            job = jobs[0]
            job.done = True
            key = (first, *job.identities[0])
            self._seq = first + 1
            for pin in job.replayed:
                pin.routing += 1
            self._remember((key,), now, 1)
            set_store_seq(job.messages[0], first)
            expired = self._expired(broker, key[1])
            if expired:
                self._defer(self._delete_ops(expired))
            return
        count = sum(len(job.identities) for job in jobs)
        self._seq = first + count
        batch = _Batch(first, count, count) if count > 1 else None
        seq = first
        topics: set[str] = set()
        for job in jobs:
            job.done = True
            if not job.identities:
                continue
            keys = [(seq + i, *identity) for i, identity in enumerate(job.identities)]
            for pin in job.replayed:
                pin.routing += 1
            self._remember(keys, now, 1)
            for i, message in enumerate(job.messages):
                set_store_seq(message, seq + i)
            if batch is not None:
                for key in keys:
                    self._batches[key[0]] = batch
            topics.update(identity[0] for identity in job.identities)
            seq += len(keys)
        doomed: list[_Key] = []
        for topic in topics:
            doomed += self._expired(broker, topic)
        if doomed:
            self._defer(self._delete_ops(doomed))

    def _flush(self) -> None:
        """Write the deferred deletes now (joining a group commit under way, if any)."""
        self._commit(_Job((), [], "", None, []))

    def _flush_due(self) -> None:
        """The flush timer: write the deferred deletes that waited ``_FLUSH_DELAY``.

        Deletes deferred since the timer was armed (writes took the earlier ones) wait on: the
        timer is armed again for the oldest of them. While writes come often, they take every
        delete along and the timer never writes (nor competes with them for the store).
        """
        with self._lock:
            self._flush_timer = None
            broker = self._broker
            if self._leading or not self._deferred or broker is None:
                return  # a group commit under way takes them, or re-arms the timer
            wait = self._deferred_at + _FLUSH_DELAY - broker.clock.monotonic()
            if wait > 1e-9:  # (float rounding: a deadline met to the nanosecond is met)
                self._flush_timer = broker.timers.call_later(wait, self._flush_due)
                return
            self._leading = True
        self._lead()

    def _defer(self, ops: list[tuple[str, bool]]) -> bool:
        """Under the lock: deletes join the next store write; True: write them now (too many)."""
        if not ops or self._cache is None:
            return False
        deferred = self._deferred
        if not deferred and self._broker is not None:
            self._deferred_at = self._broker.clock.monotonic()
        deferred += ops
        if not self._leading and self._flush_timer is None and self._broker is not None:
            self._flush_timer = self._broker.timers.call_later(_FLUSH_DELAY, self._flush_due)
        return len(deferred) >= _FLUSH_AT

    def _replays(self, messages: Sequence[Message]) -> tuple[Sequence[Message], list[_Pin]]:
        """Tell replays of stored messages from new ones: (to store, pins of the replays).

        A message carrying a stored number whose key does not match it is stored anew.
        """
        fresh: list[Message] = []
        pins: list[_Pin] = []
        with self._lock:
            for message in messages:
                key = self._keys.get(store_seq(message))
                if key is None or key[1:4] != _identity(message):
                    fresh.append(message)
                else:
                    pin = self._pins.get(key[0])
                    if pin is not None:
                        pins.append(pin)
        return fresh, pins

    def _route(self, pins: list[_Pin]) -> None:
        """Pinned messages are being replayed: one more routing each, until published."""
        if pins:
            with self._lock:
                for pin in pins:
                    pin.routing += 1

    def _encode_batch(
        self, members: Sequence[Message], identities: list[tuple[str, str, int, int]]
    ) -> str:
        try:
            fast = check_fields(members)
            value = [
                (topic, message_id, micros, message_to_dict(m), pinned)
                for m, (topic, message_id, micros, pinned) in zip(members, identities, strict=True)
            ]
            return stored_json(value, fast=fast)
        except (TypeError, ValueError, AttributeError, RecursionError, SerializationError):
            for message in members:
                self._encode(message)  # raises SerializationError naming the message
            raise

    @staticmethod
    def _encode(message: Message) -> str:
        try:
            fast = check_fields((message,))
            return stored_json(message_to_dict(message), fast=fast)
        except SerializationError:
            raise
        except (TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise SerializationError.because(
                f"message {message.id!r} cannot be stored: {exc}"
            ) from exc

    @hookimpl
    def mqkit_published(
        self, broker: Broker, messages: Sequence[Message], copies: Sequence[int]
    ) -> None:
        """Count how many copies of each ack-required message were buffered."""
        pins = self._pins
        if not pins:
            return
        flush = False
        for i, message in enumerate(messages):
            pin = pins.get(store_seq(message))
            if pin is not None:
                with self._lock:
                    pin.routing -= 1
                    pin.copies += copies[i]
                    if pin.done and self._pins.get(pin.key[0]) is pin:
                        flush |= self._remove((pin.key,))
        if flush:
            self._flush()

    # -- settling --------------------------------------------------------------------------------

    @hookimpl
    def mqkit_ack(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """A subscription acknowledged its copy (its delete is written with the next write)."""
        self._settle(message)

    @hookimpl
    def mqkit_drop(
        self, broker: Broker, subscription: Subscription | None, message: Message, reason: str
    ) -> None:
        """A buffered copy that will never be handed out is settled (a refused one never was)."""
        if subscription is not None and reason in _COPY_ENDS:
            self._settle(message)

    @hookimpl
    def mqkit_dead_letter(
        self,
        broker: Broker,
        topic: str,
        message: Message,
        reason: str,
        subscription: Subscription | None,
    ) -> None:
        """A delivered copy given up is settled; any other dead-lettered message leaves."""
        seq = store_seq(message)
        if seq in self._pins:
            if subscription is not None:
                self._settle(message)
            return  # a buffered copy (its drop settled it), or not a copy of a subscription
        with self._lock:
            key = self._keys.get(seq)
            flush = (
                key is not None
                and not key[4] & _PINNED
                and key[1:3] == (message.topic, message.id)
                and self._remove((key,))
            )
        if flush:
            self._flush()

    def _settle(self, message: Message) -> None:
        """One copy of a pinned message ended; remove the message with its last copy.

        While a publish of the message is still being routed, the number of copies is not
        known yet: then the router removes the message once routing ends, if this was its last
        copy. The delete is deferred (:meth:`_defer`): a crash before it is written brings the
        message back (at least once), never loses one.
        """
        pin = self._pins.get(store_seq(message))
        if pin is None:
            return
        with self._lock:
            if self._pins.get(pin.key[0]) is not pin:
                return  # removed meanwhile
            pin.settled += 1
            flush = pin.done and self._remove((pin.key,))
        if flush:
            self._flush()

    def _remove(self, keys: Iterable[_Key]) -> bool:
        """Under the lock: settle ``keys``; their deletes are deferred (True: flush them now)."""
        doomed = [key for key in keys if self._forget(key)]
        for topic in {key[1] for key in doomed if not key[4] & _PINNED}:
            self._trim(topic)  # (a pinned key is not in the index: nothing to trim)
        return self._defer(self._delete_ops(doomed))

    def _delete_ops(self, keys: list[_Key], texts: Sequence[str] = ()) -> list[tuple[str, bool]]:
        """Under the lock: the store writes that take settled keys (and entries ``texts``) out.

        Each is ``(entry text, tombstone)``: a message stored alone is deleted; a batch member
        gets a tombstone, unless it was the batch's last: then the batch and its tombstones go.
        """
        batches = self._batches
        if len(keys) == 1 and not texts and keys[0][0] not in batches:  # one stored alone
            return [(_key_text(keys[0]), False)]
        ops = [(text, False) for text in texts]
        touched: dict[int, tuple[_Batch, list[int]]] = {}
        for key in keys:
            batch = batches.pop(key[0], None)
            if batch is None:
                ops.append((_key_text(key), False))
            else:
                batch.live -= 1
                touched.setdefault(batch.first, (batch, []))[1].append(key[0])
        for batch, settled in touched.values():
            if batch.live == 0:
                ops.append((batch.text, False))
                ops += [(_to_json((seq,)), False) for seq in batch.tombstoned]
                batch.tombstoned = []
            else:
                ops += [(_to_json((seq,)), True) for seq in settled]
                batch.tombstoned += settled
        return ops

    def _write_failed(self, exc: BaseException) -> str:
        """Under the lock: count a failed write; return its text."""
        detail = _store_error(exc)
        self._write_errors += 1
        self._last_write_error = detail
        return detail

    # -- retention -------------------------------------------------------------------------------

    def _trim(self, topic: str) -> None:
        """Under the lock: pop settled entries off the front of a topic's index."""
        entries = self._index.get(topic)
        keys = self._keys
        while entries and entries[0][0][0] not in keys:
            entries.popleft()
        if entries is not None and not entries:
            del self._index[topic]

    def _expired(self, broker: Broker, topic: str) -> list[_Key]:
        """Under the lock: settle a topic's oldest entries past the count and age bounds.

        Returns the keys to delete from the store. Costs O(entries removed): the index is in
        publish order, so the oldest are in front. Pinned (ack-required) messages are not in
        it: they count towards ``persistence_max_messages`` but are never removed here.
        """
        config = broker.config
        cutoff = broker.clock.monotonic() - config.persistence_max_age
        limit = config.persistence_max_messages
        counts = self._live_count
        doomed: list[_Key] = []
        self._trim(topic)
        entries = self._index.get(topic)
        while entries and (counts.get(topic, 0) > limit or entries[0][1] < cutoff):
            key, _ = entries.popleft()
            if self._forget(key):
                doomed.append(key)
            self._trim(topic)
            entries = self._index.get(topic)
        return doomed

    # -- reading ---------------------------------------------------------------------------------

    def recover(self, topic: str, limit: int) -> list[Message]:
        """The oldest ``limit`` stored messages of ``topic`` in publish order (all: ``<= 0``).

        ``topic`` is checked and stripped as ``publish`` does (``InvalidTopicError``).
        """
        topic = normalize_topic(topic)
        flush = False
        with self._lock:
            cache = self._live_cache()
            if self._broker is not None:
                flush = self._defer(self._delete_ops(self._expired(self._broker, topic)))
            batches, live = self._batches, self._keys
            plain = [key for key, _ in self._index.get(topic, ()) if key[0] in live]
            pinned = [pin.key for pin in self._pinned.get(topic, {}).values()]
            keys = [(key, batches.get(key[0])) for key in heapq.merge(plain, pinned)]
        if flush:
            self._flush()
        messages: list[Message] = []
        read: dict[int, dict[_Key, object] | None] = {}  # batches read by this call
        for key, batch in keys:
            if 0 < limit <= len(messages):
                break
            if batch is None:
                raw = self._read(cache, _key_text(key), key)
                if raw is None:
                    continue  # damaged, or expired by age meanwhile
                try:
                    if not isinstance(raw, str):
                        raise SerializationError.because("stored value is not text")
                    data: object = json.loads(raw)
                except (MQError, ValueError, RecursionError):
                    self._note_corrupted(key)
                    continue
            else:
                if batch.first not in read:
                    raw = self._read(cache, batch.text, key)
                    try:
                        read[batch.first] = (
                            None
                            if raw is None
                            else dict(batch_members(raw, batch.first, batch.count))
                        )
                    except (ValueError, RecursionError):
                        read[batch.first] = None
                        self._note_corrupted(key)
                members = read[batch.first]
                if members is None:
                    continue
                data = members.get(key)
                if data is None:
                    self._note_corrupted(key)  # the entry holds another message here
                    continue
            try:
                message = message_from_dict(data)  # type: ignore[arg-type]
                if _identity(message) != (key[1], key[2], key[3]):
                    raise SerializationError.because("the stored message does not match its key")
            except (MQError, ValueError, TypeError, KeyError, RecursionError):
                self._note_corrupted(key)
                continue
            set_store_seq(message, key[0])  # a replay of it is known as this stored message
            messages.append(message)
        return messages

    def _read(self, cache: diskcache.Cache, text: str, key: _Key) -> object:
        """The stored value of entry ``text``; None when it is gone or damaged (noted)."""
        try:
            return cache.get(text, default=None)
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise PersistenceError.because(f"cannot read the store: {exc}") from exc
        except _STORE_ERRORS as exc:
            raise PersistenceError.because(f"cannot read the store: {_store_error(exc)}") from exc
        except Exception:  # a damaged row (diskcache cannot unpickle or fetch it): noted below
            pass
        self._note_corrupted(key)
        return None

    def _note_corrupted(self, key: _Key) -> None:
        with self._lock:
            self._corrupted[_describe(key)] = None

    def stored_count(self, topic: str | None = None) -> int:
        """How many messages the index holds (of ``topic``, or in all)."""
        with self._lock:
            if topic is not None:
                return self._live_count.get(topic, 0)
            return sum(self._live_count.values())

    @property
    def cache(self) -> diskcache.Cache:
        """The open diskcache (for tools and tests)."""
        return self._live_cache()

    @hookimpl
    def mqkit_health(self, broker: Broker) -> list[str]:
        """Report corrupted entries (the first few named), failed writes, and unsettled excess.

        The excess: a topic whose unsettled ack-required messages alone are more than
        ``persistence_max_messages``, or one of them older than ``persistence_max_age``.
        """
        problems = []
        config = broker.config
        limit, max_age = config.persistence_max_messages, config.persistence_max_age
        cutoff = broker.clock.monotonic() - max_age
        with self._lock:
            corrupted = list(self._corrupted)
            write_errors, last = self._write_errors, self._last_write_error
            pinned = [
                (topic, len(pins), next(iter(pins.values())).stored_at)
                for topic, pins in sorted(self._pinned.items())
            ]
        for topic, count, oldest in pinned:
            if count > limit:
                problems.append(
                    f"persistence holds {count} unsettled ack-required messages of topic "
                    f"{topic!r}, more than persistence_max_messages ({limit}): retention keeps "
                    "them until every subscription that received them settles them"
                )
            if oldest < cutoff:
                problems.append(
                    f"persistence holds an unsettled ack-required message of topic {topic!r} "
                    f"older than persistence_max_age ({max_age:g} s): retention keeps it until "
                    "every subscription that received it settles it"
                )
        if corrupted:
            named = "; ".join(corrupted[:_NAMED_CORRUPTIONS])
            more = len(corrupted) - _NAMED_CORRUPTIONS
            if more > 0:
                named += f"; and {more} more"
            entries = "entry" if len(corrupted) == 1 else "entries"
            problems.append(f"persistence skipped {len(corrupted)} corrupted {entries}: {named}")
        if write_errors:
            problems.append(f"persistence failed {write_errors} write(s); last: {last}")
        return problems

    def _live_cache(self) -> diskcache.Cache:
        cache = self._cache
        if cache is None:
            raise PersistenceError.because("the store is closed")
        return cache
