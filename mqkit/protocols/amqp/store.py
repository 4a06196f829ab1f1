"""The AMQP gateway's store: durable exchanges, queues and bindings, and persistent messages.

With ``enable_persistence``, ``<persistence_path>/amqp`` (a
:class:`~mqkit.plugins.persistence.store.RecordStore`) holds, each written as it changes:

========================================================  =====================================
``("x", vhost, exchange)``                                 a durable exchange (JSON: type, flags,
                                                           arguments)
``("q", vhost, queue)``                                    a durable, not exclusive queue (JSON:
                                                           flags, arguments)
``("b", vhost, source, to_exchange, destination, key,     a binding between durable ends
args)``
``("m", vhost, queue, seq)``                               a persistent message (``delivery-mode``
                                                           2) in a durable queue, written before
                                                           it is routed (so before its confirm),
                                                           deleted when it leaves the queue (ack,
                                                           no-ack delivery, drop, purge, delete)
========================================================  =====================================

A stored message carries its number in ``meta["amqp.seq"]``; the next broker on the directory
declares what was stored, then puts each queue's messages back in order.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from mqkit.core.errors import PersistenceError
from mqkit.core.message import Message
from mqkit.plugins.persistence.format import AMQP_DIR
from mqkit.plugins.persistence.serializer import message_from_dict, message_to_dict, to_json
from mqkit.plugins.persistence.store import RecordStore
from mqkit.protocols.amqp.mapping import jsonable

__all__ = ["K_SEQ", "AMQPStore", "Stored"]

log = logging.getLogger("mqkit.amqp")

K_SEQ: Final = "amqp.seq"
"""The ``meta`` key of a stored message's number."""


def _args(arguments: Mapping[str, Any]) -> str:
    return json.dumps(jsonable(dict(arguments)), sort_keys=True, separators=(",", ":"))


class Stored:
    """What a previous run stored, read at start."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[str, dict[str, Any]]] = []
        self.queues: list[tuple[str, dict[str, Any]]] = []
        self.bindings: list[tuple[str, str, bool, str, str, dict[str, Any]]] = []
        self.messages: dict[tuple[str, str], list[tuple[int, Message]]] = {}


class AMQPStore:
    """The gateway's records in ``<persistence_path>/amqp`` (loop thread)."""

    def __init__(self, records: RecordStore) -> None:
        self.records = records
        """The record store."""
        self._seqs: Iterator[int] = itertools.count(1)

    @classmethod
    def open(cls, persistence_path: str) -> AMQPStore:
        """Open (or make) the store; ``PersistenceError`` naming the directory when it cannot."""
        directory = Path(persistence_path).expanduser() / AMQP_DIR
        try:
            return cls(RecordStore.open(directory))
        except PersistenceError:
            raise
        except Exception as exc:
            raise PersistenceError.because(
                f"cannot open the AMQP store in {str(directory)!r}: {exc}"
            ) from exc

    def close(self) -> None:
        """Close the store."""
        self.records.close()

    # -- topology --------------------------------------------------------------------------------

    def exchange(self, vhost: str, name: str, record: dict[str, Any] | None) -> None:
        """Write (``record``) or delete a durable exchange."""
        if record is None:
            self.records.delete(("x", vhost, name))
        else:
            self.records.put(("x", vhost, name), to_json(jsonable(record)))

    def queue(self, vhost: str, name: str, record: dict[str, Any] | None) -> None:
        """Write (``record``) or delete a durable queue (deleting drops its messages too)."""
        if record is not None:
            self.records.put(("q", vhost, name), to_json(jsonable(record)))
            return
        stored = self.records.keys()
        keys = [k for k in stored if k[0] == "m" and len(k) == 4 and k[1:3] == (vhost, name)]
        self.records.delete(("q", vhost, name), *keys)

    def binding(
        self,
        vhost: str,
        source: str,
        to_exchange: bool,
        destination: str,
        routing_key: str,
        arguments: Mapping[str, Any],
        keep: bool,
    ) -> None:
        """Write (``keep``) or delete a binding."""
        key = ("b", vhost, source, int(to_exchange), destination, routing_key, _args(arguments))
        if keep:
            self.records.put(key, "")
        else:
            self.records.delete(key)

    # -- messages --------------------------------------------------------------------------------

    def keep(self, vhost: str, queue: str, message: Message) -> Message:
        """Store a persistent message of a durable queue; return it with its number in meta."""
        seq = next(self._seqs)
        meta = {**message.meta, K_SEQ: str(seq)}
        stamped = _with_meta(message, meta)
        self.records.put(("m", vhost, queue, seq), to_json(message_to_dict(stamped)))
        return stamped

    def settle(self, vhost: str, queue: str, message: Message) -> None:
        """``message`` left ``queue`` for good: forget it."""
        seq = message.meta.get(K_SEQ)
        if seq is not None:
            self.records.delete(("m", vhost, queue, int(seq)))

    def settle_all(self, vhost: str, queue: str, messages: list[Message]) -> None:
        """Forget several messages of ``queue`` in one store transaction."""
        keys = [("m", vhost, queue, int(m.meta[K_SEQ])) for m in messages if K_SEQ in m.meta]
        if keys:
            self.records.delete(*keys)

    # -- loading ---------------------------------------------------------------------------------

    def load(self) -> Stored:
        """Read what is stored (unreadable records are logged and skipped)."""
        found = Stored()
        top = 0
        for key in list(self.records.keys()):
            try:
                kind = key[0]
                if kind == "x" and len(key) == 3:
                    found.exchanges.append((key[1], {"name": key[2], **self._json(key)}))
                elif kind == "q" and len(key) == 3:
                    found.queues.append((key[1], {"name": key[2], **self._json(key)}))
                elif kind == "b" and len(key) == 7:
                    _, vhost, source, to_exchange, destination, routing_key, args = key
                    found.bindings.append(
                        (
                            vhost,
                            source,
                            bool(to_exchange),
                            destination,
                            routing_key,
                            json.loads(args),
                        )
                    )
                elif kind == "m" and len(key) == 4:
                    seq = int(key[3])
                    top = max(top, seq)
                    message = message_from_dict(self._json(key))
                    found.messages.setdefault((key[1], key[2]), []).append((seq, message))
            except Exception as exc:
                log.error("amqp: skipped unreadable stored %r: %s", key, exc)
        for messages in found.messages.values():
            messages.sort(key=lambda item: item[0])
        self._seqs = itertools.count(top + 1)
        return found

    def _json(self, key: tuple[Any, ...]) -> Any:
        raw = self.records.get(key)
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object: {raw!r}")
        return data


def _with_meta(message: Message, meta: dict[str, str]) -> Message:
    import attrs

    return attrs.evolve(message, meta=meta)
