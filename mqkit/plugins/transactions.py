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
new one - except after a timeout: a timed-out id is never re-opened implicitly. Its publishes
raise ``TransactionTimeoutError`` until a commit or rollback of the id has reported the timeout,
or for ``transaction_timeout`` (at least a minute) after it; so the timed-out ids remembered are
at most those of one such period. Messages of any kind may be held: priority, TTL and
ack-required ones keep their semantics when delivered.

``broker.transaction()`` holds the :class:`_Tx` its first publish joined (a token): its later
publishes and its commit act on that very transaction or raise how it ended, whatever happens
to the id meanwhile. Holding, committing and the timeout each take the plugin's lock, so a
timeout racing a publish or a commit either comes first (and they raise) or loses entirely.
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
from mqkit.core.plugin import Plugin
from mqkit.core.plugins import PluginInfo
from mqkit.core.shards import ByteShard
from mqkit.core.timers import TimerHandle

__all__ = ["TransactionsPlugin"]

_DEFAULT_TIMEOUT = 30.0
_REMEMBER_ENDED = 1024
_REMEMBER_TIMED_OUT = 60.0  # seconds a timed-out id stays refused, at least

_Ended = tuple[type[TransactionNotFoundError], str]


@attrs.define(slots=True, eq=False)
class _Tx:
    tx_id: str
    messages: list[Message] = attrs.field(factory=list)
    size: int = 0
    timer: TimerHandle | None = None
    ended: _Ended | None = None  # how it ended (the error a later use of it raises)


class TransactionsPlugin(TransactionFeature, Plugin):
    """Holds transactional messages until commit, rollback or timeout."""

    plugin_info = PluginInfo(
        name="transactions",
        description="atomic commit/rollback of held messages",
        flag="enable_transactions",
    )

    def __init__(self, broker: Broker) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, _Tx] = {}
        self._ended: OrderedDict[str, _Ended] = OrderedDict()
        # Timed-out ids a publish must not re-open: id -> (transaction, forget at: monotonic).
        self._timed_out: OrderedDict[str, tuple[_Tx, float]] = OrderedDict()
        # bytes of the held messages: the broker counts them (Feature.held_shard)
        self._held = self.held_shard = ByteShard()
        self._broker: Broker | None = broker  # None once stopped

    @hookimpl
    def mqkit_broker_close(self, broker: Broker) -> None:
        """Roll back every open transaction."""
        with self._lock:
            for tx in self._open.values():
                if tx.timer is not None:
                    tx.timer.cancel()
                self._end(tx, "rolled back when the broker closed")
            self._open.clear()
            self._timed_out.clear()
            self._held.bytes = 0
            self._broker = None

    def add(self, tx_id: str, message: Message, token: object | None = None) -> object:
        """Hold ``message`` in ``tx_id``, beginning it (and its timeout) if needed.

        With ``token`` (what an earlier ``add`` returned), hold it in that transaction only.
        Returns the transaction's token.
        """
        broker = self._live()
        size = estimate_size(message)
        with self._lock:
            tx = self._open.get(tx_id)
            if token is not None and tx is not token:
                raise self._error(tx_id, token)
            if tx is None:
                self._refuse_timed_out(broker, tx_id)
                tx = self._open[tx_id] = _Tx(tx_id)
                self._ended.pop(tx_id, None)
                timeout = broker.config.transaction_timeout or _DEFAULT_TIMEOUT
                tx.timer = broker.timers.call_later(timeout, lambda: self._timeout(tx))
            tx.messages.append(message)
            tx.size += size
            self._held.bytes += size
        return tx

    def commit(self, tx_id: str, token: object | None = None) -> None:
        """Deliver every held message at once; nothing is delivered if storing them fails."""
        broker = self._live()
        tx = self._close(tx_id, "committed", token)
        try:
            broker.dispatch(tx.messages)
        except MQError as exc:
            with self._lock:
                self._end(tx, f"commit failed, nothing delivered: {exc}")
            raise

    def rollback(self, tx_id: str, token: object | None = None) -> None:
        """Discard ``tx_id`` and its messages."""
        self._live()
        self._close(tx_id, "rolled back", token)

    def is_open(self, tx_id: str) -> bool:
        """Whether ``tx_id`` holds messages and has not ended."""
        with self._lock:
            return tx_id in self._open

    def held_bytes(self) -> int:
        """Bytes of the messages open transactions hold."""
        return self._held.bytes

    def open_count(self) -> tuple[int, int]:
        """(open transactions, messages they hold)."""
        with self._lock:
            return len(self._open), sum(len(tx.messages) for tx in self._open.values())

    def timed_out_count(self) -> int:
        """Timed-out ids remembered now (refused by publish until reported or forgotten)."""
        with self._lock:
            broker = self._broker
            if broker is not None:
                self._forget_timed_out(broker.clock.monotonic())
            return len(self._timed_out)

    # -- internals -----------------------------------------------------------------------------

    def _live(self) -> Broker:
        broker = self._broker
        if broker is None:
            raise BrokerClosedError()
        return broker

    def _close(self, tx_id: str, how: str, token: object | None = None) -> _Tx:
        with self._lock:
            tx = self._open.get(tx_id)
            if tx is None or (token is not None and tx is not token):
                # Ending it is how the caller learns of a timeout: the id may begin anew.
                marked = self._timed_out.get(tx_id)
                if marked is not None and (token is None or marked[0] is token):
                    del self._timed_out[tx_id]
                raise self._error(tx_id, token)
            del self._open[tx_id]
            self._held.bytes -= tx.size
            self._end(tx, how)
        if tx.timer is not None:
            tx.timer.cancel()
        return tx

    def _error(self, tx_id: str, token: object | None) -> TransactionNotFoundError:
        """Under the lock: the error for ``tx_id`` (or its transaction ``token``), not open."""
        ended = token.ended if isinstance(token, _Tx) else self._ended.get(tx_id)
        if ended is None:
            return TransactionNotFoundError.because(tx_id)
        error, how_it_ended = ended
        return error.because(f"{tx_id} ({how_it_ended})")

    def _end(
        self, tx: _Tx, how: str, error: type[TransactionNotFoundError] = TransactionNotFoundError
    ) -> None:
        """Under the lock: remember how ``tx`` ended (by id: bounded), what a later end raises."""
        tx.ended = (error, how)
        self._ended[tx.tx_id] = tx.ended
        self._ended.move_to_end(tx.tx_id)
        while len(self._ended) > _REMEMBER_ENDED:
            self._ended.popitem(last=False)

    def _refuse_timed_out(self, broker: Broker, tx_id: str) -> None:
        """Under the lock: raise if ``tx_id`` timed out and must not begin again yet."""
        if not self._timed_out:
            return
        self._forget_timed_out(broker.clock.monotonic())
        marked = self._timed_out.get(tx_id)
        if marked is not None:
            raise self._error(tx_id, marked[0])

    def _forget_timed_out(self, now: float) -> None:
        """Under the lock: forget the timed-out ids whose time is up (oldest first)."""
        timed_out = self._timed_out
        while timed_out:
            tx_id, (_, forget_at) = next(iter(timed_out.items()))
            if forget_at > now:
                return
            del timed_out[tx_id]

    def _timeout(self, tx: _Tx) -> None:
        with self._lock:
            if self._open.get(tx.tx_id) is not tx:
                return
            del self._open[tx.tx_id]
            self._held.bytes -= tx.size
            broker = self._broker
            timeout = (broker.config.transaction_timeout if broker is not None else 0.0) or (
                _DEFAULT_TIMEOUT
            )
            self._end(tx, f"timed out after {timeout:g} s", TransactionTimeoutError)
            if broker is not None:
                now = broker.clock.monotonic()
                self._forget_timed_out(now)
                self._timed_out[tx.tx_id] = (tx, now + max(timeout, _REMEMBER_TIMED_OUT))
                self._timed_out.move_to_end(tx.tx_id)
