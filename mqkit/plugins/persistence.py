"""The ``persistence`` plugin: a durable message store on diskcache (``enable_persistence``).

Every accepted message - through every publish path; transactional ones when they commit - is
written to ``persistence_path`` before it is delivered, and ``publish`` returns only after the
store's transaction committed (SQLite in WAL mode: a process killed at any instant loses no
message whose publish returned). A batch is one store transaction.

- **Order and recovery.** Each message gets a sequence number; ``recover_messages(topic,
  limit)`` returns the oldest ``limit`` stored messages of a topic in publish order, and
  ``replay_messages`` re-delivers them without storing them twice.
- **What stays.** An ack-required message stays stored until every subscription it reached
  acknowledged it (after a restart, one ack settles it); a dead-lettered message is removed.
  Other messages stay until retention removes them: at most ``persistence_max_messages`` per
  topic and none older than ``persistence_max_age`` - enforced from an in-memory index, without
  scanning the store.
- **Payloads** go through mqkit's one converter (:mod:`mqkit.core.convert`): plain data,
  bytes, datetimes and registered attrs classes/dataclasses come back as their own types; any
  other payload is refused at publish with ``SerializationError`` (nothing stored or delivered).
- **Exclusive use.** The directory is locked (``flock`` on ``mqkit.lock``, which names the
  holder's pid); a second broker on it fails with ``PersistenceError``. The lock of a killed
  process is released by the OS, so the next broker simply takes it over.
- **Faults.** A corrupted entry is skipped, counted and reported by ``health_check()``; a store
  that cannot be written (disk full, read-only) makes publish raise ``PersistenceError`` -
  nothing is delivered - and the broker keeps working for what does not need the disk.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import diskcache

from mqkit.core.broker import Broker
from mqkit.core.convert import message_from_dict, message_to_dict
from mqkit.core.errors import MQError, PersistenceError, SerializationError
from mqkit.core.features import PersistenceFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import AckPolicy, Message
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import Subscription

__all__ = ["LOCK_FILE", "PersistencePlugin", "StoreLock"]

LOCK_FILE = "mqkit.lock"
_STORE_DIR = "store"
# (sequence, topic, message id, publish time in microseconds): unique, ordered, and enough to
# recognise a stored message again (a replayed or redelivered copy) without reading values.
_Key = tuple[int, str, str, int]


class StoreLock:
    """An exclusive ``flock`` on ``<directory>/mqkit.lock`` holding the owner's pid."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``PersistenceError`` naming the directory and the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
    if instant is None:
        return 0
    return int(instant.timestamp() * 1_000_000)


def _needs_ack(message: Message) -> bool:
    policy = getattr(message, "ack_policy", None)
    return policy is not None and policy != AckPolicy.NONE


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
        # topic -> (key, stored at) in publish order; entries whose identity is no longer in
        # _by_identity were settled (deleted) and are skipped and trimmed lazily.
        self._index: dict[str, deque[tuple[_Key, float]]] = {}
        self._live_count: dict[str, int] = {}
        self._by_identity: dict[tuple[str, str, int], _Key] = {}
        self._outstanding: dict[_Key, int] = {}  # ack-required: deliveries still unsettled
        self._corrupted = 0
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
        try:
            cache = diskcache.Cache(
                str(directory / _STORE_DIR),
                eviction_policy="none",
                statistics=False,
                tag_index=False,
                sqlite_synchronous=1,
            )
        except (OSError, sqlite3.Error) as exc:
            store_lock.release()
            raise PersistenceError.because(
                f"cannot open the store in {str(directory)!r}: {exc}"
            ) from exc
        self._store_lock, self._cache, self._broker = store_lock, cache, broker
        self._load_index(broker)

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

    def _load_index(self, broker: Broker) -> None:
        cache = self._live()
        cache.expire(retry=True)  # drop what outlived persistence_max_age while we were down
        keys: list[_Key] = []
        for key in cache.iterkeys():
            if self._is_key(key):
                keys.append(key)
            else:
                self._corrupted += 1
        keys.sort()
        now = broker.clock.monotonic()
        for key in keys:
            self._remember(key, now)
            if self._seq <= key[0]:
                self._seq = key[0] + 1
        with self._lock:
            for topic in list(self._index):
                self._enforce(broker, topic)

    @staticmethod
    def _is_key(key: object) -> bool:
        return (
            isinstance(key, tuple)
            and len(key) == 4
            and isinstance(key[0], int)
            and isinstance(key[1], str)
            and isinstance(key[2], str)
            and isinstance(key[3], int)
        )

    def _remember(self, key: _Key, stored_at: float) -> None:
        self._index.setdefault(key[1], deque()).append((key, stored_at))
        self._by_identity[(key[1], key[2], key[3])] = key
        self._live_count[key[1]] = self._live_count.get(key[1], 0) + 1

    def _is_live(self, key: _Key) -> bool:
        return self._by_identity.get((key[1], key[2], key[3])) == key

    def _forget(self, key: _Key) -> bool:
        """Under the lock: mark ``key`` settled; False if it already was."""
        if not self._is_live(key):
            return False
        del self._by_identity[(key[1], key[2], key[3])]
        self._outstanding.pop(key, None)
        self._live_count[key[1]] -= 1
        return True

    # -- storing ---------------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def mqkit_accept(self, broker: Broker, messages: Sequence[Message]) -> None:
        """Store the messages (one store transaction) before they are delivered."""
        encoded: list[tuple[Message, str]] = []
        for message in messages:
            if (message.topic, message.id, _micros(message.time)) in self._by_identity:
                continue  # a replayed message: stored already
            try:
                text = json.dumps(message_to_dict(message), separators=(",", ":"))
            except SerializationError:
                raise
            except (TypeError, ValueError) as exc:
                raise SerializationError.because(
                    f"message {message.id!r} cannot be stored: {exc}"
                ) from exc
            encoded.append((message, text))
        if not encoded:
            return
        expire = broker.config.persistence_max_age
        with self._lock:
            cache = self._live()
            first = self._seq
            keys = [(first + i, m.topic, m.id, _micros(m.time)) for i, (m, _) in enumerate(encoded)]
            try:
                if len(encoded) == 1:
                    cache.set(keys[0], encoded[0][1], expire=expire, retry=True)
                else:
                    with cache.transact(retry=True):
                        for key, (_, text) in zip(keys, encoded, strict=True):
                            cache.set(key, text, expire=expire, retry=True)
            except (OSError, sqlite3.Error) as exc:
                self._write_errors += 1
                self._last_write_error = str(exc)
                raise PersistenceError.because(f"cannot store message(s): {exc}") from exc
            self._seq = first + len(encoded)
            now = broker.clock.monotonic()
            for key in keys:
                self._remember(key, now)
            for topic in {m.topic for m, _ in encoded}:
                self._enforce(broker, topic)

    @hookimpl
    def mqkit_published(self, messages: Sequence[Message], copies: Sequence[int]) -> None:
        """Note how many deliveries an ack-required message waits for."""
        for message, n in zip(messages, copies, strict=True):
            if n > 0 and _needs_ack(message):
                key = self._by_identity.get((message.topic, message.id, _micros(message.time)))
                if key is not None:
                    with self._lock:
                        self._outstanding[key] = self._outstanding.get(key, 0) + n

    # -- settling --------------------------------------------------------------------------------

    @hookimpl
    def mqkit_ack(self, message: Message) -> None:
        """An acknowledged delivery: remove the message once every delivery is settled."""
        self._settle(message)

    @hookimpl
    def mqkit_drop(self, subscription: Subscription | None, message: Message) -> None:
        """A delivery that will never happen is settled too."""
        if subscription is not None and _needs_ack(message):
            self._settle(message)

    @hookimpl
    def mqkit_dead_letter(self, message: Message) -> None:
        """A dead-lettered message leaves the store."""
        key = self._by_identity.get((message.topic, message.id, _micros(message.time)))
        if key is not None:
            self._delete(key)

    def _settle(self, message: Message) -> None:
        key = self._by_identity.get((message.topic, message.id, _micros(message.time)))
        if key is None:
            return
        with self._lock:
            left = self._outstanding.get(key, 1) - 1
            if left > 0:
                self._outstanding[key] = left
                return
        self._delete(key)

    def _delete(self, key: _Key) -> None:
        with self._lock:
            if not self._forget(key):
                return
            self._trim(key[1])
            cache = self._cache
        if cache is not None:
            try:
                cache.delete(key, retry=True)
            except (OSError, sqlite3.Error) as exc:
                with self._lock:
                    self._write_errors += 1
                    self._last_write_error = str(exc)

    # -- retention -------------------------------------------------------------------------------

    def _trim(self, topic: str) -> None:
        """Under the lock: pop settled entries off the front of a topic's index."""
        entries = self._index.get(topic)
        while entries and not self._is_live(entries[0][0]):
            entries.popleft()
        if not entries:
            self._index.pop(topic, None)
            self._live_count.pop(topic, None)

    def _enforce(self, broker: Broker, topic: str) -> None:
        """Under the lock: drop a topic's oldest entries past the count and age bounds.

        Costs O(entries removed): the index is in publish order, so the oldest are in front.
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
        cache = self._cache
        if doomed and cache is not None:
            try:
                with cache.transact(retry=True):
                    for key in doomed:
                        cache.delete(key, retry=True)
            except (OSError, sqlite3.Error) as exc:
                self._write_errors += 1
                self._last_write_error = str(exc)

    # -- reading ---------------------------------------------------------------------------------

    def recover(self, topic: str, limit: int) -> list[Message]:
        """The oldest ``limit`` stored messages of ``topic`` in publish order (all: ``<= 0``)."""
        with self._lock:
            cache = self._live()
            keys = [key for key, _ in self._index.get(topic, ()) if self._is_live(key)]
        messages: list[Message] = []
        for key in keys:
            if 0 < limit <= len(messages):
                break
            try:
                raw = cache.get(key, default=None, retry=True)
            except (OSError, sqlite3.Error) as exc:
                raise PersistenceError.because(f"cannot read the store: {exc}") from exc
            if raw is None:
                continue  # expired by age meanwhile
            try:
                if not isinstance(raw, str):
                    raise SerializationError.because("stored value is not text")
                message = message_from_dict(json.loads(raw))
            except (MQError, ValueError, TypeError, KeyError):
                with self._lock:
                    self._corrupted += 1
                continue
            messages.append(message)
        return messages

    def stored_count(self, topic: str | None = None) -> int:
        """How many messages the index holds (of ``topic``, or in all)."""
        with self._lock:
            if topic is not None:
                return self._live_count.get(topic, 0)
            return sum(self._live_count.values())

    @property
    def cache(self) -> diskcache.Cache:
        """The open diskcache (for tools and tests)."""
        return self._live()

    @hookimpl
    def mqkit_health(self) -> list[str]:
        """Report skipped corrupted entries and failed writes."""
        problems = []
        if self._corrupted:
            problems.append(f"persistence skipped {self._corrupted} corrupted entr(y/ies)")
        if self._write_errors:
            problems.append(
                f"persistence failed {self._write_errors} write(s); last: {self._last_write_error}"
            )
        return problems

    def _live(self) -> diskcache.Cache:
        cache = self._cache
        if cache is None:
            raise PersistenceError.because("the store is closed")
        return cache
