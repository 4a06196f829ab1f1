"""The ``persistence`` plugin: a durable message store on diskcache (``enable_persistence``).

Every accepted message - through every publish path; transactional ones when they commit - is
written to ``persistence_path`` before it is delivered, and ``publish`` returns only after the
store's transaction committed (SQLite in WAL mode: a process killed at any instant loses no
message whose publish returned). A batch (``publish_batch``, a committed transaction) is one
store entry, written in one store transaction: storing it costs one write, not one per message.

- **Order and recovery.** Each message gets a sequence number; ``recover_messages(topic,
  limit)`` returns the oldest ``limit`` stored messages of a topic in publish order, and
  ``replay_messages`` re-delivers them without storing them twice. A stored message is
  known by its topic, id and publish time: a message arriving with all three equal to a stored
  one's is that message replayed, and is not stored again.
- **What stays.** An ack-required message stays stored until every subscription it reached
  acknowledged it (after a restart, one ack settles it); a dead-lettered message is removed.
  Other messages stay until retention removes them: at most ``persistence_max_messages`` per
  topic and none older than ``persistence_max_age`` - enforced from an in-memory index, without
  scanning the store, on every store and before every recovery.
- **Payloads** go through mqkit's one converter (:mod:`mqkit.core.convert`): plain data,
  bytes, datetimes and registered attrs classes/dataclasses come back as their own types; any
  other payload is refused at publish with ``SerializationError`` (nothing stored or delivered).
- **Exclusive use.** The directory is locked (``flock`` on ``mqkit.lock``, which names the
  holder's pid); a second broker on it fails with ``PersistenceError``. The lock of a killed
  process is released by the OS, so the next broker simply takes it over.
- **Entries.** A message published alone is one entry, keyed ``[seq, topic, id, micros]``
  (the index is rebuilt from the keys alone). A batch is one entry keyed ``[first seq, count]``
  holding ``[[topic, id, micros, message], ...]``; a member settled while others are still
  stored is marked by a tombstone entry ``[seq]``, and the entry and its tombstones go when the
  last member is settled. A restart reads batch entries to index their members.
- **Faults.** A corrupted entry (a value that does not decode, or a damaged database page) is
  skipped, counted once and named by ``health_check()``; a store that cannot be opened or
  indexed raises ``PersistenceError`` at ``Broker(...)``; a store that cannot be written (disk
  full, read-only) makes publish raise ``PersistenceError`` at once - nothing is delivered -
  and the broker keeps working for what does not need the disk.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable, Sequence
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
from mqkit.core.message import Message, needs_ack
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import Subscription
from mqkit.core.topics import normalize_topic

__all__ = ["LOCK_FILE", "PersistencePlugin", "StoreLock", "batch_members", "parse_entry_key"]

LOCK_FILE = "mqkit.lock"
_STORE_DIR = "store"
# (sequence, topic, message id, publish time in microseconds): unique, ordered, and enough to
# recognise a stored message again (a replayed or redelivered copy) without reading values.
# In the store the key is its compact JSON text (a str key: diskcache would pickle a tuple).
_Key = tuple[int, str, str, int]
_Identity = tuple[str, str, int]  # (topic, message id, publish time in microseconds)
_TOMBSTONE = ""  # the value of a tombstone entry
# What a diskcache call raises when the store fails. ``diskcache.Timeout`` is raised when a
# write transaction cannot begin (locked, read-only): its ``__context__`` holds the cause.
_STORE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_IN_DATABASE = 1 << 30  # diskcache keeps values smaller than this in SQLite, not in files
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
    """``_to_json(key)``, written out: the key of every message stored alone."""
    return (
        f"[{key[0]},{encode_basestring_ascii(key[1])},{encode_basestring_ascii(key[2])},{key[3]}]"
    )


def parse_entry_key(text: object) -> tuple[int] | tuple[int, int] | _Key | None:
    """What a stored key text stands for; None when it is not one of ours.

    A message ``[seq, topic, id, micros]``, a batch ``[first, count]`` or a tombstone ``[seq]``.
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
        len(parts) == 4
        and type(parts[0]) is int
        and type(parts[1]) is str
        and type(parts[2]) is str
        and type(parts[3]) is int
    ):
        parsed = (parts[0], parts[1], parts[2], parts[3])
    elif len(parts) == 2 and type(parts[0]) is int and type(parts[1]) is int and parts[1] > 1:
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


def batch_members(raw: object, first: int, count: int) -> list[tuple[_Key, dict[str, object]]]:
    """The members of the batch entry ``[first, count]`` whose stored value is ``raw``.

    Each member comes with its key ``(seq, topic, id, micros)`` and its message data (for
    ``message_from_dict``). Raises ``ValueError`` when ``raw`` is not such a batch.
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
            and len(item) == 4
            and type(item[0]) is str
            and type(item[1]) is str
            and type(item[2]) is int
            and isinstance(item[3], dict)
        ):
            raise ValueError(f"member {i} is malformed")
        members.append(((first + i, item[0], item[1], item[2]), item[3]))
    return members


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
        self._cache: diskcache.Cache | None = None
        self._store_lock: StoreLock | None = None
        self._seq = 0
        # topic -> (key, stored at) in publish order; entries no longer in _live were settled
        # (deleted) and are skipped and trimmed lazily.
        self._index: dict[str, deque[tuple[_Key, float]]] = {}
        self._live: set[_Key] = set()
        self._live_count: dict[str, int] = {}
        # Usually one key per identity; a batch that repeats an id stores each message.
        # Tuples, not lists: the garbage collector stops tracking a tuple of plain values, so
        # a large index costs its collections little (a list per message made them walk it).
        self._by_identity: dict[_Identity, tuple[_Key, ...]] = {}
        self._outstanding: dict[_Identity, int] = {}  # ack-required: deliveries unsettled
        self._batches: dict[int, _Batch] = {}  # sequence number of a live member -> its entry
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

    @hookimpl
    def mqkit_broker_close(self) -> None:
        """Close the store and release the directory."""
        with self._lock:
            cache, self._cache = self._cache, None
            self._broker = None
        if cache is not None:
            cache.close()
        if self._store_lock is not None:
            self._store_lock.release()
            self._store_lock = None

    def _load_index(self, broker: Broker, cache: diskcache.Cache) -> None:
        cache.expire()  # drop what outlived persistence_max_age while we were down
        keys: list[_Key] = []
        batches: list[_Batch] = []
        tombstones: set[int] = set()
        listed = 0
        for text in cache.iterkeys():
            listed += 1
            parsed = parse_entry_key(text)
            if parsed is None:
                self._corrupted[f"key {text!r:.60}"] = None
            elif len(parsed) == 4:
                keys.append(parsed)
            elif len(parsed) == 2:
                batches.append(_Batch(parsed[0], parsed[1], 0))
            else:
                tombstones.add(parsed[0])
        counted = len(cache)  # kept by triggers, apart from the key index: damage shows here
        if counted != listed:
            self._corrupted[f"the store counts {counted} entries but its index lists {listed}"] = (
                None
            )
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
        self._remember(keys, broker.clock.monotonic())
        used = [key[0] for key in keys[-1:]] + [b.first + b.count - 1 for b in batches]
        if used or tombstones:  # new entries never reuse a sequence number the store holds
            self._seq = max(used + list(tombstones)) + 1
        with self._lock:
            doomed: list[_Key] = []
            for topic in list(self._index):
                doomed += self._expired(broker, topic)
            self._delete_stored(cache, doomed, doomed_texts)

    def _remember(self, keys: Iterable[_Key], stored_at: float) -> None:
        """Under the lock (or before start): index stored keys (one loop: a batch's hot path)."""
        index, live, by_identity, counts = (
            self._index,
            self._live,
            self._by_identity,
            self._live_count,
        )
        for key in keys:
            topic = key[1]
            entries = index.get(topic)  # not setdefault: it would build a deque every time
            if entries is None:
                entries = index[topic] = deque()
            entries.append((key, stored_at))
            live.add(key)
            identity = (topic, key[2], key[3])
            same = by_identity.get(identity)
            by_identity[identity] = (key,) if same is None else (*same, key)
            counts[topic] = counts.get(topic, 0) + 1

    def _forget(self, key: _Key) -> bool:
        """Under the lock: mark ``key`` settled; False if it already was."""
        if key not in self._live:
            return False
        self._live.discard(key)
        identity = (key[1], key[2], key[3])
        rest = tuple(k for k in self._by_identity[identity] if k != key)
        if rest:
            self._by_identity[identity] = rest
        else:
            del self._by_identity[identity]
            self._outstanding.pop(identity, None)
        self._live_count[key[1]] -= 1
        return True

    # -- storing ---------------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def mqkit_accept(self, broker: Broker, messages: Sequence[Message]) -> None:
        """Store the messages (one entry, one store transaction) before they are delivered."""
        known = self._by_identity
        fresh: list[tuple[Message, _Identity]] = []
        for message in messages:
            identity = (message.topic, message.id, _micros(message.time))
            if identity not in known:  # else a replayed message: stored already
                fresh.append((message, identity))
        if not fresh:
            return
        expire = broker.config.persistence_max_age
        text = self._encode(fresh[0][0]) if len(fresh) == 1 else self._encode_batch(fresh)
        with self._lock:
            cache = self._live_cache()
            first = self._seq
            keys = [(first + i, *identity) for i, (_, identity) in enumerate(fresh)]
            batch = None if len(keys) == 1 else _Batch(first, len(keys), len(keys))
            try:
                entry = _key_text(keys[0]) if batch is None else batch.text
                cache.set(entry, text, expire=expire)
            except _STORE_ERRORS as exc:
                detail = self._write_failed(exc)
                raise PersistenceError.because(f"cannot store message(s): {detail}") from exc
            self._seq = first + len(keys)
            self._remember(keys, broker.clock.monotonic())
            if batch is not None:
                for key in keys:
                    self._batches[key[0]] = batch
            doomed: list[_Key] = []
            for topic in {key[1] for key in keys}:
                doomed += self._expired(broker, topic)
            self._delete_stored(cache, doomed)

    def _encode_batch(self, members: list[tuple[Message, _Identity]]) -> str:
        try:
            fast = check_fields([m for m, _ in members])
            value = [(*identity, message_to_dict(m)) for m, identity in members]
            return stored_json(value, fast=fast)
        except (TypeError, ValueError, AttributeError, RecursionError, SerializationError):
            for message, _ in members:
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
        """Note how many deliveries an ack-required message waits for."""
        for message, n in zip(messages, copies, strict=True):
            if n > 0 and needs_ack(message):
                identity = _identity(message)
                with self._lock:
                    if identity in self._by_identity:
                        self._outstanding[identity] = self._outstanding.get(identity, 0) + n

    # -- settling --------------------------------------------------------------------------------

    @hookimpl
    def mqkit_ack(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """An acknowledged delivery: remove the message once every delivery is settled."""
        self._settle(message)

    @hookimpl
    def mqkit_drop(
        self, broker: Broker, subscription: Subscription | None, message: Message, reason: str
    ) -> None:
        """A delivery that will never happen is settled too."""
        if subscription is not None and needs_ack(message):
            self._settle(message)

    @hookimpl
    def mqkit_dead_letter(self, broker: Broker, topic: str, message: Message, reason: str) -> None:
        """A dead-lettered message leaves the store."""
        with self._lock:
            keys = self._by_identity.get(_identity(message))
            if keys:
                self._remove(list(keys))

    def _settle(self, message: Message) -> None:
        identity = _identity(message)
        with self._lock:
            keys = self._by_identity.get(identity)
            if not keys:
                return
            left = self._outstanding.get(identity, 1) - 1
            if left > 0:
                self._outstanding[identity] = left
                return
            self._remove(list(keys))

    def _remove(self, keys: Iterable[_Key]) -> None:
        """Under the lock: settle ``keys`` and delete them from the store."""
        doomed = [key for key in keys if self._forget(key)]
        for topic in {key[1] for key in doomed}:
            self._trim(topic)
        if self._cache is not None:
            self._delete_stored(self._cache, doomed)

    def _delete_stored(
        self, cache: diskcache.Cache, keys: list[_Key], texts: Sequence[str] = ()
    ) -> None:
        """Under the lock: take settled keys (and entries ``texts``) out of the store.

        One store transaction. A message stored alone is deleted; a batch member gets a
        tombstone, unless it was the batch's last: then the batch and its tombstones go.
        """
        deletes = list(texts)
        touched: dict[int, tuple[_Batch, list[int]]] = {}
        batches = self._batches
        for key in keys:
            batch = batches.pop(key[0], None)
            if batch is None:
                deletes.append(_key_text(key))
            else:
                batch.live -= 1
                touched.setdefault(batch.first, (batch, []))[1].append(key[0])
        tombstones: list[str] = []
        for batch, settled in touched.values():
            if batch.live == 0:
                deletes.append(batch.text)
                deletes += [_to_json((seq,)) for seq in batch.tombstoned]
                batch.tombstoned = []
            else:
                tombstones += [_to_json((seq,)) for seq in settled]
                batch.tombstoned += settled
        if not deletes and not tombstones:
            return
        try:
            if len(deletes) + len(tombstones) == 1:
                if deletes:
                    cache.delete(deletes[0])
                else:
                    cache.set(tombstones[0], _TOMBSTONE)
            else:
                with cache.transact():
                    for text in deletes:
                        cache.delete(text)
                    for text in tombstones:
                        cache.set(text, _TOMBSTONE)
        except _STORE_ERRORS as exc:
            self._write_failed(exc)

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
        while entries and entries[0][0] not in self._live:
            entries.popleft()
        if not entries:
            self._index.pop(topic, None)
            self._live_count.pop(topic, None)

    def _expired(self, broker: Broker, topic: str) -> list[_Key]:
        """Under the lock: settle a topic's oldest entries past the count and age bounds.

        Returns the keys to delete from the store. Costs O(entries removed): the index is in
        publish order, so the oldest are in front.
        """
        config = broker.config
        cutoff = broker.clock.monotonic() - config.persistence_max_age
        doomed: list[_Key] = []
        self._trim(topic)
        entries = self._index.get(topic)
        while entries and (
            self._live_count.get(topic, 0) > config.persistence_max_messages
            or entries[0][1] < cutoff
        ):
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
        with self._lock:
            cache = self._live_cache()
            if self._broker is not None:
                self._delete_stored(cache, self._expired(self._broker, topic))
            batches = self._batches
            keys = [
                (key, batches.get(key[0]))
                for key, _ in self._index.get(topic, ())
                if key in self._live
            ]
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
    def mqkit_health(self) -> list[str]:
        """Report skipped corrupted entries (naming the first few) and failed writes."""
        problems = []
        with self._lock:
            corrupted = list(self._corrupted)
            write_errors, last = self._write_errors, self._last_write_error
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
