"""Per-thread shards: lock-free counting for plugins that count every message.

Each thread that counts gets a shard of its own (only that thread writes it, so counting takes
no lock); readers add the shards up. The ``metrics`` and ``memory`` plugins count this way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["ThreadShards"]

T = TypeVar("T")


class ThreadShards(Generic[T]):
    """One ``T`` per thread, made by ``factory`` on the thread's first ``get()``."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self.local = threading.local()
        """``local.shard`` is the calling thread's shard once :meth:`get` made it: a hot path
        reads it directly (``try: local.shard`` / ``except AttributeError: get()``)."""
        self._lock = threading.Lock()
        self.all: list[T] = []
        """Every thread's shard (of threads alive or gone), to add up: read it, never change it.

        Reading takes no lock: shards are only ever appended (under the lock), and iterating a
        list that grows meanwhile is safe; a shard added during the iteration may be missed. A
        hot path iterates it directly (iterating the ``ThreadShards`` is one call more).
        """

    def get(self) -> T:
        """Return the calling thread's shard (made on its first call)."""
        try:
            shard: T = self.local.shard
        except AttributeError:
            shard = self.local.shard = self._factory()
            with self._lock:
                self.all.append(shard)
        return shard

    def __iter__(self) -> Iterator[T]:
        """Iterate :attr:`all`."""
        return iter(self.all)
