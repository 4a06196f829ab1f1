"""Per-thread shards: lock-free counting for plugins that count every message.

Each thread that counts gets a shard of its own (only that thread writes it, so counting takes
no lock); readers add the shards up. The ``metrics`` and ``memory`` plugins count this way.

Threads come and go (``mqkit serve`` handles each HTTP request in a thread of its own): when a
thread ends, its shard is folded into :attr:`ThreadShards.retired`, one shard that holds what
every finished thread counted, and is dropped. So the shards to add up are the live threads'
plus one, however many threads have counted.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["ByteCounter", "ByteShard", "ThreadShards"]

T = TypeVar("T")


class _Owner:
    """Kept in the thread's slot of the ``threading.local``: it dies with the thread.

    Its finaliser runs when the thread ends (or when the ``ThreadShards`` is gone, and then
    does nothing): after the thread's last write to its shard.
    """

    __slots__ = ("__weakref__", "_key", "_shards")

    def __init__(self, shards: ThreadShards[T], key: int) -> None:
        self._shards = weakref.ref(shards)
        self._key = key

    def __del__(self) -> None:
        shards = self._shards()
        if shards is not None:
            shards._retire(self._key)


class ThreadShards(Generic[T]):
    """One ``T`` per live thread, made by ``factory`` on the thread's first ``get()``.

    ``fold(total, shard)`` adds a finished thread's ``shard`` into ``total`` (the
    :attr:`retired` shard); it runs under :attr:`lock`, after the thread's last write.
    """

    def __init__(self, factory: Callable[[], T], fold: Callable[[T, T], None]) -> None:
        self._factory = factory
        self._fold = fold
        self.local = threading.local()
        """``local.shard`` is the calling thread's shard once :meth:`get` made it: a hot path
        reads it directly (``try: local.shard`` / ``except AttributeError: get()``)."""
        self.lock = threading.RLock()
        """Held while a shard is added or folded: a reader that must not see a fold half done
        (a shard counted both in :attr:`retired` and on its own) adds up under it. Reentrant, so
        that a fold can never wait for its own thread."""
        self._keys = itertools.count()
        self._live: dict[int, T] = {}
        self.retired: T = factory()
        """What every finished thread counted (written only under :attr:`lock`)."""
        self.all: list[T] = [self.retired]
        """:attr:`retired` and every live thread's shard, to add up: read it, never change it.

        Reading takes no lock: the list is replaced, never changed in place, so iterating the
        list read once is safe. A hot path iterates it directly; see :attr:`folds` for a sum
        that must be exact.
        """
        self.folds = 0
        """Odd while a finished thread's shard is being folded, and raised by 2 per fold: a
        lock-free reader reads it before and after adding up, and adds up again under
        :attr:`lock` if it changed (or was odd)."""

    def get(self) -> T:
        """Return the calling thread's shard (made on its first call)."""
        try:
            shard: T = self.local.shard
        except AttributeError:
            shard = self._factory()
            key = next(self._keys)
            with self.lock:
                self._live[key] = shard
                self.all = [*self.all, shard]
            self.local.shard = shard
            self.local.owner = _Owner(self, key)
        return shard

    def _retire(self, key: int) -> None:
        """Fold the shard of a thread that ended into :attr:`retired` and drop it."""
        with self.lock:
            shard = self._live.pop(key, None)
            if shard is None:
                return
            self.folds += 1
            try:
                self._fold(self.retired, shard)
                self.all = [s for s in self.all if s is not shard]
            finally:
                self.folds += 1

    def __len__(self) -> int:
        """How many shards there are to add up: the live threads' and :attr:`retired`."""
        return len(self.all)

    def __iter__(self) -> Iterator[T]:
        """Iterate :attr:`all`."""
        return iter(self.all)


class ByteShard:
    """A share of a byte count: one thread's share of a :class:`ByteCounter` (plugin API).

    A feature that holds messages outside the buffers may keep the bytes it holds in one of
    its own (``shard.bytes``, changed under the feature's lock): see ``Feature.held_shard``.
    """

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


def _fold_bytes(total: ByteShard, shard: ByteShard) -> None:
    total.bytes += shard.bytes


class ByteCounter(ThreadShards[ByteShard]):
    """A count of bytes in per-thread shards: :meth:`add` takes no lock, :meth:`total` adds up.

    The broker counts the bytes it holds this way (``Broker.counted_bytes``): metered
    subscription buffers add to the acting thread's shard (a hot path adds to
    ``local.shard.bytes`` itself), and features that hold messages keep a shard of their own,
    :meth:`attach`-ed.
    """

    def __init__(self) -> None:
        super().__init__(ByteShard, _fold_bytes)

    def attach(self, shard: ByteShard) -> None:
        """Add ``shard`` to what :meth:`total` adds up: a count its owner keeps (plugin API).

        Its owner changes ``shard.bytes`` itself (under its own lock); it is never folded.
        """
        with self.lock:
            if not any(s is shard for s in self.all):
                self.all = [*self.all, shard]

    def detach(self, shard: ByteShard) -> None:
        """Stop adding up ``shard`` (nothing happens if it is not attached)."""
        with self.lock:
            self.all = [s for s in self.all if s is not shard]

    def add(self, n: int) -> None:
        """Add ``n`` (negative: take away) to the calling thread's share."""
        try:
            self.local.shard.bytes += n
        except AttributeError:
            self.get().bytes += n

    def total(self) -> int:
        """The shares added up, never below 0.

        One thread's share may be negative: a copy can leave its buffer in another thread
        than the one it entered in.
        """
        folds = self.folds
        total = 0
        for shard in self.all:
            total += shard.bytes
        if folds != self.folds or folds & 1:  # a thread's share was folded meanwhile
            with self.lock:
                total = sum(shard.bytes for shard in self.all)
        return total if total > 0 else 0
