"""The message store on diskcache: group commit, deferred deletes, index, retention, recovery.

:class:`MessageStore` is what the ``persistence`` plugin (:mod:`.plugin`) drives from its hooks,
and what any other part of mqkit that must keep messages on disk uses directly (the cluster's
local spool); :class:`RecordStore` keeps records of several kinds (the MQTT session store).
Both follow :mod:`.format` and write through :mod:`.serializer`; this module imports only
:mod:`mqkit.core` and those two (never a hook or another plugin).

- **Group commit.** Concurrent calls share a store transaction: the first to arrive leads and
  writes everything queued by then (several calls' messages as one batch entry), the others
  wait for the commit holding theirs. A failed commit fails every call in it and stores none
  of them; a message that cannot be encoded fails its own call before it joins one.
- **Deferred deletes.** A settled or retired entry leaves the index at once; its delete joins
  the next store write, else a timer writes it ``_FLUSH_DELAY`` later, or ``_FLUSH_AT`` waiting
  deletes are written at once, or ``close()`` writes them. A crash can bring back a message
  whose delete was not written yet (at least once); none leaves the disk before it settled.
- **Sequence numbers.** Each stored message gets its own number, its identity in the store;
  they only grow, across restarts too (the high-water mark in the store's meta table, written
  once per ``SEQ_BLOCK`` numbers, in the transaction of the entry that first passes it).
"""

from __future__ import annotations

import heapq
import json
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Self

import diskcache

from mqkit.core.errors import MQError, PersistenceError, SerializationError
from mqkit.core.message import Message, has_field, set_store_seq, store_seq
from mqkit.core.timers import Clock, TimerHandle, TimerService
from mqkit.core.topics import normalize_topic
from mqkit.plugins.persistence.format import (
    FORMAT_VERSION,
    NEXT_SEQ,
    OLD,
    PINNED,
    SEQ_BLOCK,
    STORE_DIR,
    EntryKey,
    RecordKey,
    StoreLock,
    batch_members,
    batch_text,
    describe_key,
    identity_of,
    key_text,
    open_cache,
    parse_entry_key,
    parse_record_key,
    pinned_data,
    read_meta,
    read_version,
    record_key,
    to_micros,
    tombstone_text,
    upgrade_records,
    write_entries,
)
from mqkit.plugins.persistence.serializer import (
    check_fields,
    encode_message,
    message_from_dict,
    message_to_dict,
    stored_json,
    to_json,
)

__all__ = ["MessageStore", "RecordStore"]

# What a diskcache call raises when the store fails. ``diskcache.Timeout`` is raised when a
# write transaction cannot begin (locked, read-only): its ``__context__`` holds the cause.
_STORE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
_NAMED_CORRUPTIONS = 3  # how many corrupted entries health_check() names


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
        return batch_text(self.first, self.count)


class _Pin:
    """A stored ack-required message: how many copies were buffered and settled.

    It is settled - and leaves the store - once no publish or replay of it is being routed
    (``routing``), at least one copy was buffered, and as many copies were settled. A copy may
    be settled before its routing ends (a fast consumer, a concurrent eviction): it counts all
    the same, so the order of the hooks does not matter.
    """

    __slots__ = ("copies", "key", "routing", "settled", "stored_at")

    def __init__(self, key: EntryKey, stored_at: float, routing: int) -> None:
        self.key = key
        self.stored_at = stored_at
        self.routing = routing  # publishes or replays of it between accept and published
        self.copies = 0  # copies that entered a subscription's buffer
        self.settled = 0  # copies that ended (acknowledged or given up)

    @property
    def done(self) -> bool:
        return self.routing <= 0 and 0 < self.copies <= self.settled


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


class MessageStore:
    """Messages on disk in a persistence directory, recovered per topic in publish order.

    ``open(directory)`` locks the directory (:class:`StoreLock`), opens ``<directory>/store``
    and indexes what it holds; :meth:`append` stores messages (returning once committed);
    :meth:`published`, :meth:`settle` and :meth:`dead_lettered` say what became of them;
    :meth:`recover` reads them back; :meth:`close` writes the deferred deletes and releases
    the directory. Retention keeps at most ``max_messages`` per topic and none older than
    ``max_age`` seconds (the ack-required ones apart: they stay until settled). ``acks`` says
    whether copies are settled per subscription now (ack support on): without it no message
    waits for acks. ``clock`` and ``timers`` are the broker's.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        timers: TimerService,
        max_messages: int,
        max_age: float,
        acks: Callable[[], bool],
    ) -> None:
        self._clock = clock
        self._timers = timers
        self._max_messages = max_messages
        self._max_age = max_age
        self._acks = acks
        self._open = False  # between open() and close()
        self._versioned = False  # the store holds this version's FORMAT_VERSION
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
        self._keys: dict[int, EntryKey] = {}  # sequence number -> key, of every stored message
        # topic -> (key, stored at) of the messages retention may remove, in publish order;
        # entries no longer in _keys were settled (deleted) and are skipped and trimmed lazily.
        self._index: dict[str, deque[tuple[EntryKey, float]]] = {}
        # The ack-required ones, settled per subscription: by topic (in publish order) and all.
        self._pinned: dict[str, dict[int, _Pin]] = {}
        self._pins: dict[int, _Pin] = {}
        self._live_count: dict[str, int] = {}  # topic -> stored messages (pinned included)
        self._batches: dict[int, _Batch] = {}  # sequence number of a live member -> its entry
        self._ack_classes: dict[type, int] = {}  # message class -> PINNED if it has ack_policy
        self._corrupted: dict[str, None] = {}  # descriptions, in the order they were found
        self._write_errors = 0
        self._last_write_error = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self, directory: Path) -> None:
        """Lock ``directory``, open the store in it, and index what it holds.

        Raises ``PersistenceError`` when the directory cannot be made or is in use, or the
        store cannot be opened or indexed (or was written by a later mqkit).
        """
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
            cache = open_cache(directory / STORE_DIR)
            self._versioned = read_version(cache, directory / STORE_DIR) == FORMAT_VERSION
            self._load_index(cache)
        except PersistenceError:
            if cache is not None:
                cache.close()
            store_lock.release()
            raise
        except Exception as exc:  # diskcache fails in many ways on a damaged database
            if cache is not None:
                cache.close()
            store_lock.release()
            raise PersistenceError.because(
                f"cannot open the store in {str(directory)!r}: {_store_error(exc)}"
            ) from exc
        self._store_lock, self._cache = store_lock, cache
        self._open = True
        self._closing = False

    def close(self) -> None:
        """Write the deferred deletes, close the store and release the directory."""
        if self._cache is not None:
            self._flush()
        with self._lock:
            self._closing = True
            self._idle.wait_for(lambda: not self._leading)
            cache, self._cache = self._cache, None
            self._open = False
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            self._deferred.clear()
        if cache is not None:
            cache.close()
        if self._store_lock is not None:
            self._store_lock.release()
            self._store_lock = None

    def _load_index(self, cache: diskcache.Cache) -> None:
        cache.expire()  # drop what outlived persistence_max_age while we were down
        keys: list[EntryKey] = []
        old: list[EntryKey] = []  # keyed in version 1's layout: the value says if it waits for acks
        batches: list[_Batch] = []
        tombstones: set[int] = set()
        listed = 0
        for text in cache.iterkeys():
            listed += 1
            parsed = parse_entry_key(text)
            if parsed is None:
                self._corrupted[f"key {text!r:.60}"] = None
            elif len(parsed) == 5:
                (old if parsed[4] & OLD else keys).append(parsed)
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
                raw = cache.get(key_text(key), default=None)
                pinned = isinstance(raw, str) and pinned_data(json.loads(raw))
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise
                pinned = False  # recover() finds the damage and reports it
            except Exception:  # a damaged row or value: as above
                pinned = False
            keys.append((*key[:4], OLD | (PINNED if pinned else 0)))
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
                doomed_texts += [tombstone_text(seq) for seq in batch.tombstoned]
        doomed_texts += [tombstone_text(seq) for seq in tombstones - used_tombstones]
        keys.sort()
        # Ages count from each message's publish time (a restart does not make them younger).
        mono, wall = self._clock.monotonic(), self._clock.time()
        for key in keys:
            self._remember((key,), mono - max(0.0, wall - key[3] / 1_000_000), 0)
        used = [key[0] for key in keys[-1:]] + [b.first + b.count - 1 for b in batches]
        self._reserved = read_meta(cache, NEXT_SEQ)  # the high-water mark (0: none yet)
        # New entries never reuse a number the store holds or a broker before this one used.
        self._seq = max([self._reserved, *(seq + 1 for seq in used + list(tombstones))])
        with self._lock:
            doomed: list[EntryKey] = []
            for topic in list(self._index):
                doomed += self._expired(topic)
            ops = self._delete_ops(doomed, doomed_texts)
        if ops:
            try:
                write_entries(cache, ops)
            except _STORE_ERRORS as exc:
                self._write_failed(exc)

    def _remember(self, keys: Iterable[EntryKey], stored_at: float, routing: int) -> None:
        """Under the lock (or before start): index stored keys (one loop: a batch's hot path).

        A pinned (ack-required) message starts with ``routing`` publishes under way.
        """
        index, all_keys, counts = self._index, self._keys, self._live_count
        for key in keys:
            seq, topic = key[0], key[1]
            all_keys[seq] = key
            if key[4] & PINNED:
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

    def _forget(self, key: EntryKey) -> bool:
        """Under the lock: mark ``key`` settled; False if it already was."""
        seq, topic = key[0], key[1]
        if self._keys.pop(seq, None) is None:
            return False
        if key[4] & PINNED:
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

    def append(self, messages: Sequence[Message]) -> None:
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
                pinned = classes[cls] = PINNED if has_field(cls, "ack_policy") else 0
            if pinned:
                policy: int = message.ack_policy  # type: ignore[attr-defined]
                if policy == 0 or not self._acks():
                    pinned = 0
            pinned_any |= pinned
            identities.append((message.topic, message.id, to_micros(message.time), pinned))
        # Age retention does not apply to a message that waits for acks: no expiry on disk.
        expire = None if pinned_any else self._max_age
        one = len(fresh) == 1
        text = encode_message(fresh[0]) if one else self._encode_batch(fresh, identities)
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
                alone = (cache, ops, self._seq)
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
                    cache = self._cache
                    first = self._seq
            error = self._store(cache, jobs, ops, first)
            with self._lock:
                self._committed(jobs, first, error)
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
        if self._deferred and self._flush_timer is None and self._open:
            self._flush_timer = self._timers.call_later(_FLUSH_DELAY, self._flush_due)

    def _store(
        self,
        cache: diskcache.Cache | None,
        jobs: list[_Job],
        ops: list[tuple[str, bool]],
        first: int,
    ) -> BaseException | None:
        """Write a group: its entry and ``ops`` in one store transaction; the error, if any."""
        if cache is None or not self._open:
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
                entry = key_text((first, *stored[0].identities[0]))
            else:
                entry = to_json((first, count))
            if len(stored) == 1:
                text, expire = stored[0].text, stored[0].expire
            else:  # one batch entry: the members of every call, in the order they came
                text = "[" + ",".join([job.members() for job in stored]) + "]"
                expire = None if any(job.expire is None for job in stored) else stored[0].expire
            if first + count > self._reserved:  # past the high-water mark: move it ahead
                reserved = first + count + SEQ_BLOCK
            elif not self._versioned:  # the store's first write by this version: record it
                reserved = self._reserved
        elif not ops:
            return None  # a flush with nothing to write
        try:
            write_entries(cache, ops, entry, text, expire, reserved)
        except _STORE_ERRORS as exc:
            return exc
        if reserved:
            self._reserved = reserved
            self._versioned = True
        return None

    def _committed(self, jobs: list[_Job], first: int, error: BaseException | None) -> None:
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
        now = self._clock.monotonic()
        if len(jobs) == 1 and len(jobs[0].identities) == 1:  # a message alone (no group)
            job = jobs[0]
            job.done = True
            key = (first, *job.identities[0])
            self._seq = first + 1
            for pin in job.replayed:
                pin.routing += 1
            self._remember((key,), now, 1)
            set_store_seq(job.messages[0], first)
            expired = self._expired(key[1])
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
        doomed: list[EntryKey] = []
        for topic in topics:
            doomed += self._expired(topic)
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
            if self._leading or not self._deferred or not self._open:
                return  # a group commit under way takes them, or re-arms the timer
            wait = self._deferred_at + _FLUSH_DELAY - self._clock.monotonic()
            if wait > 1e-9:  # (float rounding: a deadline met to the nanosecond is met)
                self._flush_timer = self._timers.call_later(wait, self._flush_due)
                return
            self._leading = True
        self._lead()

    def _defer(self, ops: list[tuple[str, bool]]) -> bool:
        """Under the lock: deletes join the next store write; True: write them now (too many)."""
        if not ops or self._cache is None:
            return False
        deferred = self._deferred
        if not deferred and self._open:
            self._deferred_at = self._clock.monotonic()
        deferred += ops
        if not self._leading and self._flush_timer is None and self._open:
            self._flush_timer = self._timers.call_later(_FLUSH_DELAY, self._flush_due)
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
                if key is None or key[1:4] != identity_of(message):
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
                encode_message(message)  # raises SerializationError naming the message
            raise

    def published(self, messages: Sequence[Message], copies: Sequence[int]) -> None:
        """``messages`` were routed: count how many copies of each ack-required one were buffered.

        ``copies[i]`` is how many subscriptions buffered a copy of ``messages[i]``.
        """
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

    def dead_lettered(self, message: Message, copy: bool) -> None:
        """``message`` was dead-lettered: settle it (a copy given up) or remove it.

        A subscription's copy (``copy``) of an ack-required message given up is settled; any
        other dead-lettered message that is not ack-required leaves the store.
        """
        seq = store_seq(message)
        if seq in self._pins:
            if copy:
                self.settle(message)
            return  # a buffered copy (its drop settled it), or not a copy of a subscription
        with self._lock:
            key = self._keys.get(seq)
            flush = (
                key is not None
                and not key[4] & PINNED
                and key[1:3] == (message.topic, message.id)
                and self._remove((key,))
            )
        if flush:
            self._flush()

    def settle(self, message: Message) -> None:
        """One copy of a pinned message ended; remove the message with its last copy.

        A copy ends when it is acknowledged, given up, or dropped from its buffer; for a
        message that is not pinned (ack-required) this does nothing.

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

    def _remove(self, keys: Iterable[EntryKey]) -> bool:
        """Under the lock: settle ``keys``; their deletes are deferred (True: flush them now)."""
        doomed = [key for key in keys if self._forget(key)]
        for topic in {key[1] for key in doomed if not key[4] & PINNED}:
            self._trim(topic)  # (a pinned key is not in the index: nothing to trim)
        return self._defer(self._delete_ops(doomed))

    def _delete_ops(
        self, keys: list[EntryKey], texts: Sequence[str] = ()
    ) -> list[tuple[str, bool]]:
        """Under the lock: the store writes that take settled keys (and entries ``texts``) out.

        Each is ``(entry text, tombstone)``: a message stored alone is deleted; a batch member
        gets a tombstone, unless it was the batch's last: then the batch and its tombstones go.
        """
        batches = self._batches
        if len(keys) == 1 and not texts and keys[0][0] not in batches:  # one stored alone
            return [(key_text(keys[0]), False)]
        ops = [(text, False) for text in texts]
        touched: dict[int, tuple[_Batch, list[int]]] = {}
        for key in keys:
            batch = batches.pop(key[0], None)
            if batch is None:
                ops.append((key_text(key), False))
            else:
                batch.live -= 1
                touched.setdefault(batch.first, (batch, []))[1].append(key[0])
        for batch, settled in touched.values():
            if batch.live == 0:
                ops.append((batch.text, False))
                ops += [(tombstone_text(seq), False) for seq in batch.tombstoned]
                batch.tombstoned = []
            else:
                ops += [(tombstone_text(seq), True) for seq in settled]
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

    def _expired(self, topic: str) -> list[EntryKey]:
        """Under the lock: settle a topic's oldest entries past the count and age bounds.

        Returns the keys to delete from the store. Costs O(entries removed): the index is in
        publish order, so the oldest are in front. Pinned (ack-required) messages are not in
        it: they count towards ``persistence_max_messages`` but are never removed here.
        """
        cutoff = self._clock.monotonic() - self._max_age
        limit = self._max_messages
        counts = self._live_count
        doomed: list[EntryKey] = []
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
            if self._open:
                flush = self._defer(self._delete_ops(self._expired(topic)))
            batches, live = self._batches, self._keys
            plain = [key for key, _ in self._index.get(topic, ()) if key[0] in live]
            pinned = [pin.key for pin in self._pinned.get(topic, {}).values()]
            keys = [(key, batches.get(key[0])) for key in heapq.merge(plain, pinned)]
        if flush:
            self._flush()
        messages: list[Message] = []
        read: dict[int, dict[EntryKey, object] | None] = {}  # batches read by this call
        for key, batch in keys:
            if 0 < limit <= len(messages):
                break
            if batch is None:
                raw = self._read(cache, key_text(key), key)
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
                if identity_of(message) != (key[1], key[2], key[3]):
                    raise SerializationError.because("the stored message does not match its key")
            except (MQError, ValueError, TypeError, KeyError, RecursionError):
                self._note_corrupted(key)
                continue
            set_store_seq(message, key[0])  # a replay of it is known as this stored message
            messages.append(message)
        return messages

    def _read(self, cache: diskcache.Cache, text: str, key: EntryKey) -> object:
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

    def _note_corrupted(self, key: EntryKey) -> None:
        with self._lock:
            self._corrupted[describe_key(key)] = None

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

    def problems(self) -> list[str]:
        """Corrupted entries (the first few named), failed writes, and unsettled excess.

        The excess: a topic whose unsettled ack-required messages alone are more than
        ``persistence_max_messages``, or one of them older than ``persistence_max_age``.
        """
        problems = []
        limit, max_age = self._max_messages, self._max_age
        cutoff = self._clock.monotonic() - max_age
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


class RecordStore:
    """Records of several kinds in one store directory, each written as it changes (thread-safe).

    A key is a tuple whose first element names the record's kind (:data:`~.format.RecordKey`:
    ``("s", client_id)``, ``("q", client_id, seq)``), stored as its :func:`~.format.record_key`
    text; a value is JSON text (:mod:`.serializer`) or ``""``. Every call is one store
    transaction, durable once it returns. :meth:`put` and :meth:`delete` never raise: a failure
    is counted in :attr:`failures` and handed to :meth:`failed` (the caller keeps what it could
    not write in memory); :meth:`set` and :meth:`remove` raise for callers that handle it.
    """

    def __init__(self, cache: diskcache.Cache) -> None:
        self.cache = cache
        """The open ``diskcache.Cache``."""
        self.failures = 0
        """Writes that failed since the store was opened."""
        self.last_failure = ""
        """The text of the last failed write."""
        self._lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path) -> Self:
        """Open (or make) the store in ``directory``, in this version's format.

        A store written before versions were recorded has its records' keys (pickled tuples
        then) rewritten as text, in one transaction. Raises ``PersistenceError`` for a store of
        a later version; diskcache's and SQLite's errors otherwise (the caller names the store).
        """
        cache = open_cache(directory)
        try:
            if read_version(cache, directory) < FORMAT_VERSION:
                upgrade_records(cache)
        except BaseException:
            cache.close()
            raise
        return cls(cache)

    def close(self) -> None:
        """Close the store."""
        self.cache.close()

    def keys(self) -> Iterator[RecordKey]:
        """The keys of the records stored (what is not a record key is skipped)."""
        for text in self.cache.iterkeys():
            key = parse_record_key(text)
            if key is not None:
                yield key

    def get(self, key: RecordKey) -> Any:
        """The stored value of ``key`` (None when there is none)."""
        return self.cache.get(record_key(key), default=None, retry=True)

    def set(self, key: RecordKey, value: str) -> None:
        """Write ``key``; the store's error is raised."""
        self.cache.set(record_key(key), value, retry=True)

    def remove(self, key: RecordKey) -> None:
        """Delete ``key``; the store's error is raised."""
        self.cache.delete(record_key(key), retry=True)

    def put(self, key: RecordKey, value: str) -> None:
        """Write ``key`` (a failure is counted, never raised)."""
        try:
            self.cache.set(record_key(key), value)
        except Exception as exc:
            self.failed(f"cannot store {key!r}: {_why(exc)}")

    def delete(self, *keys: RecordKey) -> None:
        """Delete ``keys``, in one store transaction (a failure is counted, never raised)."""
        cache = self.cache
        try:
            if len(keys) == 1:
                cache.delete(record_key(keys[0]))
            else:
                with cache.transact():
                    for key in keys:
                        cache.delete(record_key(key))
        except Exception as exc:
            self.failed(f"cannot delete {keys[0]!r}: {_why(exc)}")

    def failed(self, text: str) -> bool:
        """Count a failed write; True when its text differs from the last one's."""
        with self._lock:
            self.failures += 1
            new = text != self.last_failure
            self.last_failure = text
        return new


def _why(exc: BaseException) -> str:
    """The text of a failed store call: the SQLite error behind a ``diskcache.Timeout``."""
    cause = exc.__context__
    if not str(exc) and isinstance(cause, sqlite3.Error):
        return str(cause)
    return str(exc) or repr(exc)
