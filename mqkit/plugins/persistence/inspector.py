"""Read a persistence directory without a broker: what ``mqkit inspect PATH`` shows.

:func:`inspect_store` opens the store's SQLite database **read-only** (``mode=ro``) and never
touches the directory lock, so it may look at the directory of a running broker: it then
reports the broker's pid in :attr:`StoreReport.locked_by` and reads what that broker has
committed so far. It reports, per topic, how many messages are stored and the oldest and newest
publish times; the stored ack-required messages (acknowledged ones are removed by the broker, so
every one left is still pending); and the dead letters (the copies the dead letter queue
published, with their original topic and reason). Entries are read with the store format's own
parsers (:func:`~.format.parse_entry_key`, :func:`~.format.batch_members`) and the store's
serializer: messages stored alone, batches (whose members marked by a tombstone were settled
and are not counted) and tombstones.

The records are frozen attrs classes; ``mqkit.core.convert.unstructure(report)`` gives JSON-ready
data (``mqkit inspect --json``). Imports only :mod:`mqkit.core` and the package's library
modules.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from mqkit.core.errors import MQError, PersistenceError
from mqkit.core.message import Message, needs_ack
from mqkit.plugins.persistence.format import (
    DATABASE,
    LOCK_FILE,
    MODE_PICKLE,
    MODE_RAW,
    MODE_TEXT,
    SELECT_ROWS,
    STORE_DIR,
    batch_members,
    from_micros,
    parse_entry_key,
)
from mqkit.plugins.persistence.serializer import message_from_dict, to_json

__all__ = [
    "DeadLetterRecord",
    "PendingAck",
    "StoreReport",
    "TopicReport",
    "inspect_store",
    "lock_holder",
]


@attrs.frozen(kw_only=True)
class TopicReport:
    """What the store holds for one topic."""

    topic: str
    messages: int
    oldest: datetime | None
    """Publish time of the oldest stored message."""
    newest: datetime | None
    """Publish time of the newest stored message."""
    pending_acks: int
    dead_letters: int
    """Stored dead-letter copies (non-zero only for a dead letter topic)."""


@attrs.frozen(kw_only=True)
class PendingAck:
    """A stored ack-required message: published, not yet acknowledged by every subscriber."""

    topic: str
    id: str
    ack_id: str
    attempt: int
    time: datetime | None


@attrs.frozen(kw_only=True)
class DeadLetterRecord:
    """A stored dead-letter copy: the message given up, where it came from and why."""

    topic: str
    """The dead letter topic it was published to."""
    id: str
    original_topic: str
    reason: str
    attempts: int
    time: datetime | None
    """When it was dead-lettered."""


@attrs.frozen(kw_only=True)
class StoreReport:
    """Everything :func:`inspect_store` found in a persistence directory."""

    path: str
    locked_by: int | None
    """The pid of the broker holding the directory now, or None when no broker holds it."""
    total_messages: int
    topics: tuple[TopicReport, ...]
    pending_acks: tuple[PendingAck, ...]
    dead_letters: tuple[DeadLetterRecord, ...]
    unreadable: int = 0
    """Entries that could not be decoded (the broker skips and reports them too)."""
    expired: int = 0
    """Entries past ``persistence_max_age`` that the next broker will remove."""


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain data only (the store's keys are tuples of ints and strings)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(data: bytes) -> Any:
    return _NoGlobals(io.BytesIO(data)).load()


def lock_holder(path: str | os.PathLike[str]) -> int | None:
    """The pid of the process holding ``path``'s directory lock, or None. Never takes the lock.

    Reads the pid the broker wrote into ``mqkit.lock``; on Linux ``/proc/locks`` says whether
    that file is locked right now (a stale pid from a broker that exited is not reported).
    Elsewhere, a live process with that pid counts as the holder.
    """
    lock = Path(path) / LOCK_FILE
    try:
        text = lock.read_text(encoding="ascii", errors="replace").strip()
        info = lock.stat()
    except OSError:
        return None
    pid = int(text) if text.isdigit() else None
    try:
        with open("/proc/locks", encoding="ascii") as file:
            table = file.read().splitlines()
    except OSError:
        table = None
    if table is not None:
        wanted = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
        for line in table:
            fields = line.split()
            if len(fields) < 6 or "FLOCK" not in fields:
                continue
            where = fields[5 if fields[1] != "->" else 6].split(":")
            try:
                device = (int(where[0], 16), int(where[1], 16), int(where[2]))
            except (IndexError, ValueError):
                continue
            if device == wanted:
                holder = fields[4 if fields[1] != "->" else 5]
                return int(holder) if holder.isdigit() else pid
        return None
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _rows(directory: Path) -> Iterator[tuple[Any, ...]]:
    database = directory / STORE_DIR / DATABASE
    if not database.is_file():
        if not directory.is_dir():
            raise PersistenceError.because(f"{str(directory)!r} is not a directory")
        raise PersistenceError.because(
            f"{str(directory)!r} holds no mqkit store (no {STORE_DIR}/{DATABASE})"
        )
    uri = f"{database.resolve().as_uri()}?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise PersistenceError.because(f"cannot open {str(database)!r}: {exc}") from exc
    try:
        cursor = connection.execute(SELECT_ROWS)
        yield from cursor
    except sqlite3.Error as exc:
        raise PersistenceError.because(f"cannot read {str(database)!r}: {exc}") from exc
    finally:
        connection.close()


def _value(directory: Path, mode: int, filename: str | None, value: Any) -> Any:
    if mode == MODE_RAW:
        return value
    if filename is None and mode == MODE_PICKLE:
        return _unpickle(bytes(value))
    if filename is None:
        raise ValueError("value without a file")
    full = directory / STORE_DIR / filename
    if mode == MODE_TEXT:
        return full.read_text(encoding="utf-8")
    data = full.read_bytes()
    return _unpickle(data) if mode == MODE_PICKLE else data


def _key_parts(key: Any, raw: int) -> Any:
    """A stored key's parts: compact JSON text (older stores pickled the tuple)."""
    parts = (json.loads(key) if isinstance(key, str) else key) if raw else _unpickle(bytes(key))
    return to_json(list(parts)) if isinstance(parts, list | tuple) else None


def inspect_store(path: str | os.PathLike[str]) -> StoreReport:
    """Report what the persistence directory ``path`` holds, reading it read-only.

    Raises :class:`~mqkit.PersistenceError` when ``path`` is not an mqkit persistence
    directory or its database cannot be read.
    """
    directory = Path(path).expanduser()
    now = time.time()
    entries: list[tuple[tuple[int, str, str, int, int], Any]] = []  # (key, text or message data)
    batches: list[tuple[int, int, Any]] = []
    tombstones: set[int] = set()
    unreadable = expired = 0
    for key, raw, expire_time, mode, filename, value in _rows(directory):
        try:
            parsed = parse_entry_key(_key_parts(key, raw))
            if parsed is None:
                raise ValueError("not an mqkit key")
            if expire_time is not None and expire_time <= now:
                expired += 1
                continue
            if len(parsed) == 5:
                entries.append((parsed, _value(directory, mode, filename, value)))
            elif len(parsed) == 2:
                batches.append((*parsed, _value(directory, mode, filename, value)))
            else:
                tombstones.add(parsed[0])  # a settled member of a batch
        except (OSError, ValueError, pickle.UnpicklingError, EOFError):
            unreadable += 1
    for first, count, text in batches:
        try:
            members = batch_members(text, first, count)
        except (ValueError, RecursionError):
            unreadable += 1
            continue
        entries += [(key, data) for key, data in members if key[0] not in tombstones]
    entries.sort(key=lambda entry: entry[0][0])

    counts: dict[str, list[Any]] = {}  # topic -> [messages, oldest, newest, pending, dead]
    pending: list[PendingAck] = []
    dead: list[DeadLetterRecord] = []
    for (_, topic, _, micros, _), stored in entries:
        try:
            if isinstance(stored, dict):  # a batch member, parsed with its batch
                data = stored
            elif isinstance(stored, str):
                data = json.loads(stored)
            else:
                raise ValueError("stored value is not text")
            message: Message = message_from_dict(data)
        except (MQError, ValueError, TypeError, KeyError):
            unreadable += 1
            continue
        stamp = message.time or from_micros(micros)
        row = counts.setdefault(topic, [0, None, None, 0, 0])
        row[0] += 1
        if stamp is not None:
            row[1] = stamp if row[1] is None or stamp < row[1] else row[1]
            row[2] = stamp if row[2] is None or stamp > row[2] else row[2]
        if needs_ack(message):
            row[3] += 1
            pending.append(
                PendingAck(
                    topic=topic,
                    id=message.id,
                    ack_id=str(getattr(message, "ack_id", "")),
                    attempt=message.attempt,
                    time=stamp,
                )
            )
        reason = message.meta.get("x-dead-letter-reason")
        if reason is not None:
            row[4] += 1
            attempts = message.meta.get("x-attempts", "")
            dead.append(
                DeadLetterRecord(
                    topic=topic,
                    id=message.id,
                    original_topic=message.meta.get("x-original-topic", ""),
                    reason=reason,
                    attempts=int(attempts) if attempts.isdigit() else 0,
                    time=stamp,
                )
            )
    topics = tuple(
        TopicReport(
            topic=topic,
            messages=row[0],
            oldest=row[1],
            newest=row[2],
            pending_acks=row[3],
            dead_letters=row[4],
        )
        for topic, row in sorted(counts.items())
    )
    return StoreReport(
        path=str(directory.resolve()),
        locked_by=lock_holder(directory),
        total_messages=sum(t.messages for t in topics),
        topics=topics,
        pending_acks=tuple(pending),
        dead_letters=tuple(dead),
        unreadable=unreadable,
        expired=expired,
    )
