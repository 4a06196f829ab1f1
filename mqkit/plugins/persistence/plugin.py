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
- **Payloads** go through the store's serializer (:mod:`.serializer`): plain data, bytes,
  datetimes and registered attrs classes/dataclasses come back as their own types; any other
  payload is refused at publish with ``SerializationError`` (nothing stored or delivered).
- **Exclusive use.** The directory is locked (``flock`` on ``mqkit.lock``, which names the
  holder's pid); a second broker on it fails with ``PersistenceError``. The lock of a killed
  process is released by the OS, so the next broker simply takes it over.
- **Entries.** A message published alone is one entry, a batch one entry of all its members;
  a member settled while others are still stored is marked by a tombstone (:mod:`.format`
  has the layout, :mod:`.store` the store: this module holds the hooks only).
- **Faults.** A corrupted entry (a value that does not decode, or a damaged database page) is
  skipped, counted once and named by ``health_check()``; a store that cannot be opened or
  indexed raises ``PersistenceError`` at ``Broker(...)``; a store that cannot be written (disk
  full, read-only) makes publish raise ``PersistenceError`` at once - nothing is delivered -
  and the broker keeps working for what does not need the disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import diskcache

from mqkit.core.broker import Broker
from mqkit.core.errors import PersistenceError
from mqkit.core.features import PersistenceFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import Message
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.subscription import Subscription
from mqkit.plugins.persistence.store import MessageStore

__all__ = ["PersistencePlugin"]

_COPY_ENDS = frozenset({"drop_oldest", "withheld", "unsubscribed"})
"""``mqkit_drop`` reasons that end a buffered copy (the others: the copy never entered)."""


class PersistencePlugin(PersistenceFeature, Plugin):
    """Stores accepted messages in a diskcache directory and recovers them in publish order."""

    plugin_info = PluginInfo(
        name="persistence",
        description="durable message store with recovery (diskcache)",
        flag="enable_persistence",
        runtime_toggle=False,
    )

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._store: MessageStore | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Lock the directory, open the store, and index what it holds."""
        config = broker.config
        store = MessageStore(
            clock=broker.clock,
            timers=broker.timers,
            max_messages=config.persistence_max_messages,
            max_age=config.persistence_max_age,
            acks=lambda: broker.has_feature("ack"),
        )
        store.open(Path(config.persistence_path).expanduser())
        self._store = store

    @hookimpl
    def mqkit_broker_close(self, broker: Broker) -> None:
        """Write the deferred deletes, close the store and release the directory."""
        if self._store is not None:
            self._store.close()

    # -- storing and settling --------------------------------------------------------------------

    @hookimpl(trylast=True)
    def mqkit_accept(self, broker: Broker, messages: Sequence[Message]) -> None:
        """Store the messages (one entry) before they are delivered: return once committed."""
        store = self._store
        if store is None:
            raise PersistenceError.because("the store is closed")
        store.append(messages)

    @hookimpl
    def mqkit_published(
        self, broker: Broker, messages: Sequence[Message], copies: Sequence[int]
    ) -> None:
        """Count how many copies of each ack-required message were buffered."""
        store = self._store
        if store is not None:
            store.published(messages, copies)

    @hookimpl
    def mqkit_ack(self, broker: Broker, subscription: Subscription, message: Message) -> None:
        """A subscription acknowledged its copy (its delete is written with the next write)."""
        store = self._store
        if store is not None:
            store.settle(message)

    @hookimpl
    def mqkit_drop(
        self, broker: Broker, subscription: Subscription | None, message: Message, reason: str
    ) -> None:
        """A buffered copy that will never be handed out is settled (a refused one never was)."""
        store = self._store
        if store is not None and subscription is not None and reason in _COPY_ENDS:
            store.settle(message)

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
        store = self._store
        if store is not None:
            store.dead_lettered(message, subscription is not None)

    # -- reading ---------------------------------------------------------------------------------

    def recover(self, topic: str, limit: int) -> list[Message]:
        """The oldest ``limit`` stored messages of ``topic`` in publish order (all: ``<= 0``).

        ``topic`` is checked and stripped as ``publish`` does (``InvalidTopicError``).
        """
        return self._live().recover(topic, limit)

    def stored_count(self, topic: str | None = None) -> int:
        """How many messages the index holds (of ``topic``, or in all)."""
        store = self._store
        return 0 if store is None else store.stored_count(topic)

    @property
    def cache(self) -> diskcache.Cache:
        """The open diskcache (for tools and tests)."""
        return self._live().cache

    @hookimpl
    def mqkit_health(self, broker: Broker) -> list[str]:
        """Report corrupted entries (the first few named), failed writes, and unsettled excess.

        The excess: a topic whose unsettled ack-required messages alone are more than
        ``persistence_max_messages``, or one of them older than ``persistence_max_age``.
        """
        store = self._store
        return [] if store is None else store.problems()

    def _live(self) -> MessageStore:
        store = self._store
        if store is None:
            raise PersistenceError.because("the store is closed")
        return store
