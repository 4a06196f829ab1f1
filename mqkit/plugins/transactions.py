"""The ``transactions`` plugin (``enable_transactions``): atomic publishing of many messages.

``publish_with_transaction(topic, msg, tx_id)`` begins ``tx_id`` with its first message and holds
each message - checked at once (topic, message, memory: a refused message is not held) - until:

- ``commit_transaction``: every held message is handed to the broker in one
  :meth:`~mqkit.Broker.dispatch` - stored together (persistence), then delivered together, in
  publish order, each to its own topic; if storing fails nothing is delivered;
- ``rollback_transaction``, or ``transaction_timeout`` seconds after the first message: the
  messages are discarded.

Any of the three ends the transaction: a later commit or rollback of the same id raises
``TransactionNotFoundError`` (whose text says how it ended, when that is still known; after a
timeout it is the subclass ``TransactionTimeoutError``), and a later publish with the id begins a
new one. Messages of any kind may be held: priority, TTL and
ack-required ones keep their semantics when delivered.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import attrs

from mqkit.core.broker import Broker
from mqkit.core.errors import (
    BrokerClosedError,
    MQError,
    TransactionNotFoundError,
    TransactionTimeoutError,
)
from mqkit.core.features import TransactionFeature
from mqkit.core.hookspecs import hookimpl
from mqkit.core.message import Message, estimate_size
from mqkit.core.plugins import PluginInfo
from mqkit.core.timers import TimerHandle

__all__ = ["TransactionsPlugin"]

_DEFAULT_TIMEOUT = 30.0
_REMEMBER_ENDED = 1024


@attrs.define(slots=True, eq=False)
class _Tx:
    tx_id: str
    messages: list[Message] = attrs.field(factory=list)
    size: int = 0
    timer: TimerHandle | None = None


class TransactionsPlugin(TransactionFeature):
    """Holds transactional messages until commit, rollback or timeout."""

    plugin_info = PluginInfo(
        name="transactions",
        description="atomic commit/rollback of held messages",
        flag="enable_transactions",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, _Tx] = {}
        self._ended: OrderedDict[str, tuple[type[TransactionNotFoundError], str]] = OrderedDict()
        self._bytes = 0
        self._broker: Broker | None = None

    @hookimpl
    def mqkit_broker_start(self, broker: Broker) -> None:
        """Remember the broker."""
        self._broker = broker

    @hookimpl
    def mqkit_broker_close(self) -> None:
        """Roll back every open transaction."""
        with self._lock:
            for tx in self._open.values():
                if tx.timer is not None:
                    tx.timer.cancel()
                self._end(tx.tx_id, "rolled back when the broker closed")
            self._open.clear()
            self._bytes = 0
            self._broker = None

    def add(self, tx_id: str, message: Message) -> None:
        """Hold ``message`` in ``tx_id``, beginning it (and its timeout) if needed."""
        broker = self._live()
        size = estimate_size(message)
        with self._lock:
            tx = self._open.get(tx_id)
            if tx is None:
                tx = self._open[tx_id] = _Tx(tx_id)
                self._ended.pop(tx_id, None)
                timeout = broker.config.transaction_timeout or _DEFAULT_TIMEOUT
                tx.timer = broker.timers.call_later(timeout, lambda: self._timeout(tx))
            tx.messages.append(message)
            tx.size += size
            self._bytes += size

    def commit(self, tx_id: str) -> None:
        """Deliver every held message at once; nothing is delivered if storing them fails."""
        broker = self._live()
        tx = self._close(tx_id, "committed")
        try:
            broker.dispatch(tx.messages)
        except MQError as exc:
            with self._lock:
                self._end(tx_id, f"commit failed, nothing delivered: {exc}")
            raise

    def rollback(self, tx_id: str) -> None:
        """Discard ``tx_id`` and its messages."""
        self._live()
        self._close(tx_id, "rolled back")

    def is_open(self, tx_id: str) -> bool:
        """Whether ``tx_id`` holds messages and has not ended."""
        with self._lock:
            return tx_id in self._open

    def held_bytes(self) -> int:
        """Bytes of the messages open transactions hold."""
        return self._bytes

    def open_count(self) -> tuple[int, int]:
        """(open transactions, messages they hold)."""
        with self._lock:
            return len(self._open), sum(len(tx.messages) for tx in self._open.values())

    # -- internals -----------------------------------------------------------------------------

    def _live(self) -> Broker:
        broker = self._broker
        if broker is None:
            raise BrokerClosedError()
        return broker

    def _close(self, tx_id: str, how: str) -> _Tx:
        with self._lock:
            tx = self._open.pop(tx_id, None)
            if tx is None:
                ended = self._ended.get(tx_id)
                if ended is None:
                    raise TransactionNotFoundError.because(tx_id)
                error, how_it_ended = ended
                raise error.because(f"{tx_id} ({how_it_ended})")
            self._bytes -= tx.size
            self._end(tx_id, how)
        if tx.timer is not None:
            tx.timer.cancel()
        return tx

    def _end(
        self, tx_id: str, how: str, error: type[TransactionNotFoundError] = TransactionNotFoundError
    ) -> None:
        """Under the lock: remember how ``tx_id`` ended (bounded) and what a later end raises."""
        self._ended[tx_id] = (error, how)
        self._ended.move_to_end(tx_id)
        while len(self._ended) > _REMEMBER_ENDED:
            self._ended.popitem(last=False)

    def _timeout(self, tx: _Tx) -> None:
        with self._lock:
            if self._open.get(tx.tx_id) is not tx:
                return
            del self._open[tx.tx_id]
            self._bytes -= tx.size
            broker = self._broker
            timeout = broker.config.transaction_timeout if broker is not None else 0.0
            self._end(
                tx.tx_id,
                f"timed out after {timeout or _DEFAULT_TIMEOUT:g} s",
                TransactionTimeoutError,
            )
