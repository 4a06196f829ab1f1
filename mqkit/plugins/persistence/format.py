"""The store format: file names, the database's tables, the keys, the version, what a record is.

Everything mqkit writes to disk follows the rules here; the persistence store
(:mod:`.store`), the MQTT session store (``mqkit.protocols.mqtt.store``), ``mqkit inspect``
(:mod:`.inspector`) and the cluster's local spool read them from this module, not from copies.

**Files.** A persistence directory (``persistence_path``) holds

==================  ==========================================================================
``mqkit.lock``      the directory lock: an exclusive ``flock`` held by the broker using the
                    directory, the file holding its pid (:data:`LOCK_FILE`)
``store/``          the message store of the ``persistence`` plugin (:data:`STORE_DIR`)
``mqtt/``           the MQTT gateway's sessions and retained messages (:data:`MQTT_DIR`)
``amqp/``           the AMQP gateway's durable exchanges, queues, bindings and persistent
                    messages (:data:`AMQP_DIR`)
==================  ==========================================================================

Each store is a diskcache directory (SQLite in WAL mode, ``synchronous=NORMAL``: a committed
write survives a SIGKILL of the process) opened with :data:`CACHE_SETTINGS`: the database file
is :data:`DATABASE`, its ``Cache`` table holds the records, values stay in the database (no
value files; stores of earlier versions may have some, and they are read and removed as
diskcache does), nothing is evicted.

**Records.** A record is a row of the ``Cache`` table: a key that is the compact JSON text of
an array (a ``str`` key, ``raw = 1``: diskcache would pickle a tuple) and a value that is JSON
text (or ``""``), written by :mod:`.serializer`. The first element of a record key names its
kind in stores of several kinds (:func:`record_key`: ``["q","client",3]``); the message store's
keys are its own (below).

**Version.** :data:`FORMAT_VERSION` is written, with the message store's high-water mark of
sequence numbers, in the table :data:`META_TABLE` (``key TEXT PRIMARY KEY, value INTEGER``) of
each store's database: the message store writes it with its first write (the same
transaction), a store of records when it opens. A store without it was written by an earlier
mqkit (version 1): it is read as it is, and a store of records has its keys rewritten in this
version's format (one transaction) when it opens. A store of a later version is refused:
:class:`~mqkit.PersistenceError` names both versions.

**The message store's entries** (``store/``):

- a message stored alone is one entry keyed ``[seq, topic, id, micros, ack]``: its sequence
  number (its identity in the store), topic, message id, publish time in microseconds since the
  epoch, and ``ack`` 1 for an ack-required message settled per subscription (else 0); its value
  is the message (:func:`~.serializer.message_to_dict`);
- a batch is one entry keyed ``[first seq, count]`` holding ``[[topic, id, micros, message,
  ack], ...]`` (:func:`batch_members`);
- a batch member settled while others are still stored is marked by a tombstone entry
  ``[seq]`` whose value is ``""``;
- version 1 stores may hold keys ``[seq, topic, id, micros]`` and members of four (written
  before the ``ack`` flag): then the message's own ``ack_policy`` says whether it waits for acks.

The index of a store is rebuilt from its keys alone (a batch's entry is read for its members).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Final

import diskcache

from mqkit.core.errors import PersistenceError
from mqkit.core.message import Message
from mqkit.plugins.persistence.serializer import to_json

__all__ = [
    "AMQP_DIR",
    "CACHE_SETTINGS",
    "DATABASE",
    "FORMAT_VERSION",
    "LOCK_FILE",
    "META_TABLE",
    "MQTT_DIR",
    "STORE_DIR",
    "EntryKey",
    "StoreLock",
    "batch_members",
    "key_text",
    "open_cache",
    "parse_entry_key",
    "parse_record_key",
    "read_version",
    "record_key",
    "write_entries",
]

# -- files -----------------------------------------------------------------------------------------

LOCK_FILE: Final = "mqkit.lock"
"""The lock file of a persistence directory (``flock``, holding the owner's pid)."""
STORE_DIR: Final = "store"
"""The sub-directory of the ``persistence`` plugin's message store."""
MQTT_DIR: Final = "mqtt"
"""The sub-directory of the MQTT gateway's session store."""
AMQP_DIR: Final = "amqp"
"""The sub-directory of the AMQP gateway's store (durable topology, persistent messages)."""
DATABASE: Final = "cache.db"
"""The SQLite database of a store (diskcache's name)."""

IN_DATABASE: Final = 1 << 30
"""Values smaller than this stay in SQLite, not in files: a value is written with its row."""
CACHE_SETTINGS: Final[dict[str, Any]] = {
    "eviction_policy": "none",
    "statistics": False,
    "tag_index": False,
    "sqlite_synchronous": 1,
    # Age retention runs from the message store's index: no culling query on every write.
    "cull_limit": 0,
    "disk_min_file_size": IN_DATABASE,
}
"""The diskcache settings every store is opened with."""

# -- version ---------------------------------------------------------------------------------------

FORMAT_VERSION: Final = 2
"""The version of the format this mqkit writes (1: stores written before it was recorded)."""
META_TABLE: Final = "mqkit_meta"
"""The table of a store's own values, apart from its records (``Cache`` holds records only)."""
FORMAT: Final = "format"
"""The key of the format version in :data:`META_TABLE`."""
NEXT_SEQ: Final = "next_seq"
"""The key of the message store's high-water mark of sequence numbers in :data:`META_TABLE`."""
SEQ_BLOCK: Final = 1 << 16
"""The high-water mark moves this far ahead: one small write per ``SEQ_BLOCK`` messages."""
CREATE_META: Final = (
    f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value INTEGER)"
)
"""Make the meta table (with a store's first value in it)."""
SET_META: Final = f"INSERT OR REPLACE INTO {META_TABLE} VALUES (?, ?)"
"""Set a value of the meta table: ``(key, value)``."""
GET_META: Final = f"SELECT value FROM {META_TABLE} WHERE key = ?"
"""Read a value of the meta table: ``(key,)``."""

# -- the Cache table -------------------------------------------------------------------------------

# The rows diskcache writes for a text key (raw = 1) with a text value kept in the database
# (size 0, mode 1: MODE_RAW, no file), no tag, never read yet.
INSERT: Final = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size,"
    " mode, filename, value) VALUES (?, 1, ?, ?, ?, 0, NULL, 0, 1, NULL, ?)"
)
"""A new entry's row: ``(key, store_time, expire_time, access_time, value)``."""
INSERT_TOMBSTONE: Final = (
    "INSERT OR IGNORE INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
    " tag, size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 1, NULL, ?)"
)
"""A tombstone's row, once: ``(key, store_time, access_time, value)``."""
DELETE: Final = "DELETE FROM Cache WHERE key = ? AND raw = 1 AND filename IS NULL"
"""Delete an entry whose value is in the database: ``(key,)``."""
DELETE_ANY: Final = "DELETE FROM Cache WHERE key = ? AND raw = 1"
"""Delete an entry wherever its value is (its file is the caller's to remove): ``(key,)``."""
SELECT_FILE: Final = "SELECT filename FROM Cache WHERE key = ? AND raw = 1"
"""The file of an entry's value (NULL: in the database): ``(key,)``."""
RECYCLE: Final = (
    "UPDATE Cache SET key = ?, store_time = ?, expire_time = ?, access_time = ?,"
    " access_count = 0, tag = NULL, size = 0, mode = 1, filename = NULL, value = ?"
    " WHERE key = ? AND raw = 1 AND filename IS NULL"
)
"""A deleted row made a new entry's, in the same transaction (no file behind it):
``(key, store_time, expire_time, access_time, value, deleted key)``."""
SELECT_ROWS: Final = "SELECT key, raw, expire_time, mode, filename, value FROM Cache ORDER BY rowid"
"""Every row, in the order written (what an inspection reads)."""
MODE_RAW, MODE_BINARY, MODE_TEXT, MODE_PICKLE = 1, 2, 3, 4
"""diskcache's value modes (a row's ``mode``)."""

# -- the message store's keys ----------------------------------------------------------------------

EntryKey = tuple[int, str, str, int, int]
"""A stored message: (sequence, topic, message id, publish time in microseconds, flags).

The sequence number is the stored message's identity; the rest lets the index be rebuilt, and
a stored value be checked, without reading values."""
Identity = tuple[str, str, int]
"""(topic, message id, publish time in microseconds): what a stored value must match."""
PINNED: Final = 1
"""Flag: an ack-required message, settled per subscription, exempt from retention."""
OLD: Final = 2
"""Flag: keyed in the version 1 layout, ``[seq, topic, id, micros]`` (no ack flag)."""
TOMBSTONE: Final = ""
"""The value of a tombstone entry."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(instant: datetime | None) -> int:
    """Microseconds since the epoch, exactly (naive instants are taken as UTC; None: 0)."""
    if instant is None:
        return 0
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return (instant - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime | None:
    """The instant of a key's publish time (None for 0)."""
    return datetime.fromtimestamp(micros / 1_000_000, UTC) if micros else None


def identity_of(message: Message) -> Identity:
    """What a stored message's key says of it."""
    return (message.topic, message.id, to_micros(message.time))


def key_text(key: EntryKey) -> str:
    """The stored text of a message's key (``to_json`` of it, written out: the hot path)."""
    topic, message_id = encode_basestring_ascii(key[1]), encode_basestring_ascii(key[2])
    flags = key[4]
    if flags & OLD:
        return f"[{key[0]},{topic},{message_id},{key[3]}]"
    return f"[{key[0]},{topic},{message_id},{key[3]},{flags & PINNED}]"


def batch_text(first: int, count: int) -> str:
    """The stored text of a batch entry's key."""
    return to_json((first, count))


def tombstone_text(seq: int) -> str:
    """The stored text of a tombstone's key."""
    return to_json((seq,))


def pinned_data(data: object) -> bool:
    """Whether stored message data is of an ack-required message (``needs_ack``, as data)."""
    policy = data.get("ack_policy") if isinstance(data, dict) else None
    return type(policy) is int and policy != 0


def describe_key(key: EntryKey) -> str:
    """A stored message as ``health_check()`` names it."""
    return f"topic {key[1]!r} message {key[2]!r} (#{key[0]})"


def parse_entry_key(text: object) -> tuple[int] | tuple[int, int] | EntryKey | None:
    """What a stored key text stands for; None when it is not one of ours.

    A message ``(seq, topic, id, micros, flags)`` from ``[seq, topic, id, micros, ack]`` (flags
    1 when ``ack`` is 1: settled per subscription) or from the version 1 layout
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
    parsed: tuple[int] | tuple[int, int] | EntryKey
    if (
        len(parts) in (4, 5)
        and type(parts[0]) is int
        and type(parts[1]) is str
        and type(parts[2]) is str
        and type(parts[3]) is int
    ):
        if len(parts) == 4:
            parsed = (parts[0], parts[1], parts[2], parts[3], OLD)
        elif parts[4] in (0, 1) and type(parts[4]) is int:
            parsed = (parts[0], parts[1], parts[2], parts[3], parts[4])
        else:
            return None
        return parsed if key_text(parsed) == text else None
    if len(parts) == 2 and type(parts[0]) is int and type(parts[1]) is int and parts[1] > 1:
        parsed = (parts[0], parts[1])
    elif len(parts) == 1 and type(parts[0]) is int:
        parsed = (parts[0],)
    else:
        return None
    return parsed if to_json(parsed) == text else None


def batch_members(raw: object, first: int, count: int) -> list[tuple[EntryKey, dict[str, object]]]:
    """The members of the batch entry ``[first, count]`` whose stored value is ``raw``.

    Each member comes with its key ``(seq, topic, id, micros, flags)`` and its message data (for
    ``message_from_dict``). Members are ``[topic, id, micros, message, ack]``, or
    ``[topic, id, micros, message]`` in version 1 stores (then the message's own ack policy
    says whether it is settled per subscription). Raises ``ValueError`` when ``raw`` is not
    such a batch.
    """
    if not isinstance(raw, str):
        raise ValueError("stored value is not text")
    items = json.loads(raw)
    if not isinstance(items, list) or len(items) != count:
        raise ValueError("not a batch of the size its key says")
    members: list[tuple[EntryKey, dict[str, object]]] = []
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
        pinned = int(item[4]) if len(item) == 5 else int(pinned_data(data))
        members.append(((first + i, item[0], item[1], item[2], pinned), data))
    return members


# -- records (stores of several kinds) -------------------------------------------------------------

RecordKey = tuple[Any, ...]
"""A record's key: its kind (a string), then its parts (strings and integers)."""


def record_key(key: RecordKey) -> str:
    """The stored text of a record's key: ``("q", "client", 3)`` -> ``["q","client",3]``."""
    return to_json(key)


def parse_record_key(text: object) -> RecordKey | None:
    """The parts of a stored record key (text, or a version 1 pickled tuple); None if not one.

    A record key is an array of strings and integers whose first element, its kind, is a
    string.
    """
    if isinstance(text, str):
        try:
            parts = json.loads(text)
        except ValueError:
            return None
        if not isinstance(parts, list):
            return None
    elif isinstance(text, tuple):
        parts = list(text)
    else:
        return None
    if not parts or type(parts[0]) is not str:
        return None
    if not all(type(part) is str or type(part) is int for part in parts):
        return None
    return tuple(parts)


# -- opening, locking, versions --------------------------------------------------------------------


def open_cache(directory: Path) -> diskcache.Cache:
    """Open (or make) the store in ``directory`` as every mqkit store is opened.

    With :data:`~.format.CACHE_SETTINGS`: diskcache's errors are the caller's to report.
    """
    return diskcache.Cache(str(directory), **CACHE_SETTINGS)


def read_meta(cache: diskcache.Cache, key: str) -> int:
    """The value of ``key`` in the store's meta table (0 when the store has none)."""
    try:
        rows = cache._sql(GET_META, (key,)).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return 0  # a store that never had one (written before it, or never written)
    value = rows[0][0] if rows else 0
    return value if type(value) is int and value > 0 else 0


def write_meta(cache: diskcache.Cache, key: str, value: int) -> None:
    """In a store transaction: set ``key`` of the store's meta table to ``value``."""
    sql = cache._sql
    sql(CREATE_META)
    sql(SET_META, (key, value))


def read_version(cache: diskcache.Cache, where: Path) -> int:
    """The format version of the store in ``where`` (1: written before versions were recorded).

    Raises ``PersistenceError`` for a store of a later version than this mqkit's.
    """
    version = read_meta(cache, FORMAT) or 1
    if version > FORMAT_VERSION:
        raise PersistenceError.because(
            f"the store in {str(where)!r} was written by a later mqkit (store format "
            f"{version}; this version reads formats up to {FORMAT_VERSION})"
        )
    return version


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


def upgrade_records(cache: diskcache.Cache) -> None:
    """Rewrite a version 1 store's record keys (pickled tuples) as text; record the version.

    One transaction: a crash leaves the store as it was, and the next open upgrades it. A value
    kept in a file moves into the database; its file is removed once the transaction committed.
    """
    files: list[str] = []
    with cache.transact():
        sql = cache._sql
        rows = sql("SELECT rowid, key, raw, filename FROM Cache WHERE raw = 0").fetchall()
        for rowid, db_key, raw, filename in rows:
            old = cache._disk.get(db_key, raw)
            key = parse_record_key(old) if isinstance(old, tuple) else None
            if key is None:
                continue
            value = cache.get(old, default=None)
            sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
            if filename is not None:
                files.append(filename)
            if value is not None:
                cache.set(record_key(key), value)
        write_meta(cache, FORMAT, FORMAT_VERSION)
    for name in files:
        cache._disk.remove(name)


def write_entries(
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
                sql(INSERT_TOMBSTONE, (op, now, now, TOMBSTONE))
            elif op is not recycled and not sql(DELETE, (op,)).rowcount:
                _delete_with_file(sql, op, files)
        if reserved:
            write_meta(cache, NEXT_SEQ, reserved)  # the high-water mark, and the version
            write_meta(cache, FORMAT, FORMAT_VERSION)
        if entry is not None:
            expire_time = None if expire is None else now + expire
            row = (entry, now, expire_time, now, text)
            if not recycled or not sql(RECYCLE, (*row, recycled)).rowcount:
                if recycled:
                    _delete_with_file(sql, recycled, files)
                sql(INSERT, row)
        sql("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            sql("ROLLBACK")
        raise
    for name in files:
        cache._disk.remove(name)


def _delete_with_file(sql: Callable[..., sqlite3.Cursor], key: str, files: list[str]) -> None:
    """In a store transaction: delete the row ``key`` whose value is in a file (if any)."""
    for (name,) in sql(SELECT_FILE, (key,)).fetchall():
        sql(DELETE_ANY, (key,))
        if name is not None:
            files.append(name)
