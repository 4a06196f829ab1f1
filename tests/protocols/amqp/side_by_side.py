"""Side-by-side AMQP scenarios: one pika (blocking) script, run against RabbitMQ and mqkit.

Each scenario takes a server's AMQP URL, drives it as a RabbitMQ user would and returns what
the client saw as plain data (:data:`Record`: a list of ``(step, value)`` pairs) - reply codes
of channel and connection closes with the code word their text starts with (``NOT_FOUND``),
redelivered flags, message order, ``basic.return``, confirms, get-empty, message counts.
Nothing in a record depends on the server's identity (no consumer tags, generated queue names
or timestamps), so two servers that behave alike give equal records.

``test_side_by_side.py`` compares mqkit's record with RabbitMQ's, and RabbitMQ's with the
record written down in :data:`EXPECTED` (seen from Debian's RabbitMQ 3.10.8).

Every wait is bounded (:data:`TIMEOUT`) and ends on an event the client receives; nothing
sleeps. A scenario uses its own queue and exchange names (``sbs.<scenario>.*``) and deletes
them when it ends.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import (
    AMQPConnectionError,
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    NackError,
    UnroutableError,
)
from pika.spec import Basic, BasicProperties

__all__ = ["EXPECTED", "SCENARIOS", "TIMEOUT", "Record", "run_scenario"]

TIMEOUT = 10.0
"""The longest any wait for the server lasts."""

Record = list[tuple[str, Any]]
"""What a client saw, step by step: ``(step, value)`` pairs of plain data."""


def text_code(reply_text: str) -> str:
    """The code word a reply text starts with (``NOT_FOUND - no queue 'q'`` -> ``NOT_FOUND``)."""
    return reply_text.split(" ", 1)[0]


def closed(exc: ChannelClosedByBroker | ConnectionClosedByBroker) -> tuple[Any, ...]:
    """What a close tells the client: its reply code and the code word of its text."""
    return ("closed", exc.reply_code, text_code(exc.reply_text))


def headers_without_time(headers: dict[str, Any] | None) -> dict[str, Any]:
    """A message's headers as plain data, without the ``time`` of each ``x-death`` entry.

    pika gives field-table strings as ``bytes`` or ``str`` (its decoder's choice): both come
    out as ``str``.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k != "time"}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)  # pika's own int subclass for long integers
        return value

    return {k: plain(v) for k, v in (headers or {}).items()}


class Session:
    """The connections and channels of one scenario against one server, and its record."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.record: Record = []
        self.connections: list[BlockingConnection] = []
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()

    def note(self, step: str, value: Any) -> None:
        """Add ``(step, value)`` to the record."""
        self.record.append((step, value))

    def q(self, suffix: str = "q") -> str:
        """A queue name of this scenario (deleted at the end)."""
        name = f"sbs.{self.name}.{suffix}"
        self.queues.add(name)
        return name

    def x(self, suffix: str = "x") -> str:
        """An exchange name of this scenario (deleted at the end)."""
        name = f"sbs.{self.name}.{suffix}"
        self.exchanges.add(name)
        return name

    def connect(self, url: str | None = None) -> BlockingConnection:
        """A new connection (closed at the end)."""
        params = pika.URLParameters(url or self.url)
        params.socket_timeout = TIMEOUT
        params.blocked_connection_timeout = TIMEOUT
        conn = BlockingConnection(params)
        self.connections.append(conn)
        return conn

    def channel(self, conn: BlockingConnection | None = None) -> BlockingChannel:
        """A new channel on ``conn`` (default: the scenario's first connection)."""
        if conn is None:
            conn = self.connections[0] if self.connections else self.connect()
        return conn.channel()

    @contextmanager
    def expect_close(self, step: str) -> Iterator[None]:
        """Run the block; record how the server closed the channel (or ``"open"``)."""
        try:
            yield
        except ChannelClosedByBroker as exc:
            self.note(step, closed(exc))
        else:
            self.note(step, "open")

    def cleanup(self) -> None:
        """Delete the scenario's queues and exchanges; close every connection."""
        with suppress(AMQPConnectionError, OSError):
            conn = self.connect()
            for name in sorted(self.queues):
                ch = conn.channel()
                with suppress(ChannelClosedByBroker):
                    ch.queue_delete(name)
                if ch.is_open:
                    ch.close()
            for name in sorted(self.exchanges):
                ch = conn.channel()
                with suppress(ChannelClosedByBroker):
                    ch.exchange_delete(name)
                if ch.is_open:
                    ch.close()
        for conn in self.connections:
            with suppress(Exception):
                if conn.is_open:
                    conn.close()


def wait_until(conn: BlockingConnection, done: Callable[[], bool], what: str) -> None:
    """Process the connection's events until ``done()``; AssertionError after TIMEOUT s."""
    end = time.monotonic() + TIMEOUT
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {TIMEOUT} s")
        conn.process_data_events(time_limit=0.05)


def get_bodies(ch: BlockingChannel, queue: str) -> list[str]:
    """Every message ``basic.get`` takes from ``queue`` (auto-ack), in order."""
    bodies = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body.decode())


def count(ch: BlockingChannel, queue: str) -> int:
    """The queue's ready messages, by a passive declare."""
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def consume_n(
    conn: BlockingConnection, ch: BlockingChannel, queue: str, n: int
) -> list[tuple[Basic.Deliver, BasicProperties, bytes]]:
    """Consume ``n`` messages from ``queue`` (auto-ack); each wait bounded by TIMEOUT."""
    got: list[tuple[Basic.Deliver, BasicProperties, bytes]] = []
    tag = ch.basic_consume(queue, lambda _c, m, p, b: got.append((m, p, b)), auto_ack=True)
    wait_until(conn, lambda: len(got) >= n, f"{n} messages from {queue}")
    ch.basic_cancel(tag)
    return got


# -- the scenarios -----------------------------------------------------------------------------


def s_passive_declare_missing_queue(s: Session) -> None:
    ch = s.channel()
    q = s.q()
    with s.expect_close("passive declare of a missing queue"):
        ch.queue_declare(q, passive=True)
    ch = s.channel()
    ok = ch.queue_declare(q)
    s.note("declare-ok", (ok.method.queue == q, ok.method.message_count, ok.method.consumer_count))
    ok = ch.queue_declare(q, passive=True)
    s.note("passive declare-ok", (ok.method.message_count, ok.method.consumer_count))
    with s.expect_close("passive declare of a missing exchange"):
        ch.exchange_declare(s.x(), passive=True)


def s_redeclare_with_other_arguments(s: Session) -> None:
    ch = s.channel()
    q = s.q()
    ch.queue_declare(q, arguments={"x-max-length": 10})
    ch.queue_declare(q, arguments={"x-max-length": 10})
    s.note("same arguments again", "ok")
    with s.expect_close("other x-max-length"):
        ch.queue_declare(q, arguments={"x-max-length": 20})
    ch = s.channel()
    with s.expect_close("other durable flag"):
        ch.queue_declare(q, durable=True, arguments={"x-max-length": 10})
    ch = s.channel()
    x = s.x()
    ch.exchange_declare(x, "direct")
    with s.expect_close("exchange redeclared with another type"):
        ch.exchange_declare(x, "fanout")
    ch = s.channel()
    with s.expect_close("exchange declared with the reserved prefix amq."):
        ch.exchange_declare("amq.sbs-reserved", "direct")


def s_exclusive_queue_from_another_connection(s: Session) -> None:
    owner = s.channel(s.connect())
    q = s.q()
    owner.queue_declare(q, exclusive=True)
    other = s.connect()
    with s.expect_close("passive declare from another connection"):
        s.channel(other).queue_declare(q, passive=True)
    with s.expect_close("consume from another connection"):
        s.channel(other).basic_consume(q, lambda *_: None)
    with s.expect_close("delete from another connection"):
        s.channel(other).queue_delete(q)
    s.note("owner still counts", count(owner, q))


def s_publish_to_missing_exchange(s: Session) -> None:
    ch = s.channel()
    with s.expect_close("publish to a missing exchange"):
        ch.basic_publish(s.x("missing"), "k", b"m")
        ch.queue_declare("", exclusive=True)  # a round trip: the close arrives before its ok
    ch = s.channel()
    ch.confirm_delivery()
    with s.expect_close("the same with confirms"):
        ch.basic_publish(s.x("missing"), "k", b"m")


def s_mandatory_unroutable_returns(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    returned: list[tuple[Any, ...]] = []
    ch.add_on_return_callback(
        lambda _c, m, _p, b: returned.append(
            (m.reply_code, text_code(m.reply_text), m.exchange, m.routing_key, b.decode())
        )
    )
    ch.basic_publish("amq.direct", "sbs.nobody", b"lost", mandatory=True)
    ch.basic_publish("amq.direct", "sbs.nobody", b"dropped", mandatory=False)
    wait_until(conn, lambda: bool(returned), "basic.return")
    ch.queue_declare("", exclusive=True)  # a round trip: a second return would be here by now
    s.note("returns without confirms", returned)
    ch = s.channel(conn)
    ch.confirm_delivery()
    try:
        ch.basic_publish("amq.direct", "sbs.nobody", b"lost", mandatory=True)
    except UnroutableError as exc:
        s.note(
            "with confirms",
            [(m.method.reply_code, text_code(m.method.reply_text)) for m in exc.messages],
        )
    else:
        s.note("with confirms", "no return")
    q = s.q()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"routed", mandatory=True)
    s.note("routed mandatory publish", count(ch, q))


def s_default_exchange_routing(s: Session) -> None:
    ch = s.channel()
    q = s.q()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", s.q("nobody"), b"to nobody")
    ch.basic_publish("", q, b"two")
    s.note("bodies", get_bodies(ch, q))
    with s.expect_close("bind to the default exchange"):
        ch.queue_bind(q, "", "other")


def _routing(s: Session, kind: str, bindings: dict[str, list[Any]], keys: list[Any]) -> None:
    """Declare an exchange of ``kind``; bind a queue per entry; publish; note what each got.

    A binding is a routing key, or ``(key, arguments)``; a key is a routing key, or
    ``(key, headers)``.
    """
    ch = s.channel()
    x = s.x()
    ch.exchange_declare(x, kind)
    for suffix, binds in bindings.items():
        q = s.q(suffix)
        ch.queue_declare(q)
        for bind in binds:
            key, args = bind if isinstance(bind, tuple) else (bind, None)
            ch.queue_bind(q, x, key, arguments=args)
    ch.confirm_delivery()
    for i, key in enumerate(keys):
        rk, headers = key if isinstance(key, tuple) else (key, None)
        ch.basic_publish(x, rk, f"{i}", pika.BasicProperties(headers=headers))
    for suffix in bindings:
        s.note(suffix, get_bodies(ch, s.q(suffix)))


def s_direct_routing(s: Session) -> None:
    _routing(s, "direct", {"qa": ["a"], "qab": ["a", "b"], "qc": ["c"]}, ["a", "b", "c", "d", "A"])


def s_fanout_routing(s: Session) -> None:
    _routing(s, "fanout", {"q1": ["ignored"], "q2": [""]}, ["x", "", "y.z"])


def s_topic_routing(s: Session) -> None:
    _routing(
        s,
        "topic",
        {
            "star": ["a.*"],
            "hash": ["a.#"],
            "all": ["#"],
            "starb": ["*.b"],
            "mid": ["a.*.c"],
            "tail": ["#.c"],
            "exact": ["a.b"],
            "twostar": ["*.*"],
        },
        ["a", "a.b", "a.b.c", "x.b", "a.x.y.c", "", "c", "a..c", "b.a"],
    )


def s_headers_routing(s: Session) -> None:
    _routing(
        s,
        "headers",
        {
            "all": [("", {"x-match": "all", "k1": "v1", "k2": "v2"})],
            "any": [("", {"x-match": "any", "k1": "v1", "k2": "v2"})],
            "default": [("", {"k1": "v1"})],
            "empty": [("", {"x-match": "all"})],
        },
        [
            ("", {"k1": "v1", "k2": "v2"}),
            ("", {"k1": "v1"}),
            ("", {"k2": "v2", "k3": "v3"}),
            ("", {"k1": "other"}),
            ("", {}),
            ("anything", {"k1": "v1", "k2": "v2", "extra": 1}),
        ],
    )


def s_prefetch_and_ack_order(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    q = s.q()
    ch.queue_declare(q)
    for i in range(5):
        ch.basic_publish("", q, f"m{i}")
    ch.basic_qos(prefetch_count=2)
    got: list[tuple[str, int, bool]] = []
    ch.basic_consume(
        q, lambda _c, m, _p, b: got.append((b.decode(), m.delivery_tag, m.redelivered))
    )
    wait_until(conn, lambda: len(got) >= 2, "two deliveries")
    other = s.channel(conn)
    s.note("ready while 2 are unacked", count(other, q))
    s.note("first two", list(got))
    ch.basic_ack(got[0][1])
    wait_until(conn, lambda: len(got) >= 3, "a third delivery after one ack")
    ch.basic_ack(got[2][1], multiple=True)
    wait_until(conn, lambda: len(got) >= 5, "the last two")
    ch.basic_ack(got[4][1], multiple=True)
    s.note("all, in order", got)
    s.note("ready at the end", count(other, q))


def s_nack_requeue_redelivered(s: Session) -> None:
    ch = s.channel()
    q = s.q()
    ch.queue_declare(q)
    for body in ("a", "b", "c"):
        ch.basic_publish("", q, body)
    seen = []
    for _ in range(3):
        m, _p, b = ch.basic_get(q)
        seen.append((b.decode(), m.redelivered))
    ch.basic_nack(2, multiple=True, requeue=True)  # a and b back, c still held
    ch.basic_reject(3, requeue=True)
    again = []
    while True:
        m, _p, b = ch.basic_get(q)
        if m is None:
            break
        again.append((b.decode(), m.redelivered))
        ch.basic_ack(m.delivery_tag)
    s.note("first gets", seen)
    s.note("after nack and reject with requeue", again)
    with s.expect_close("ack of an unknown delivery tag"):
        ch.basic_ack(99)
        ch.queue_declare("", exclusive=True)


def s_reject_to_dead_letter_exchange(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    dlx, dlq, q = s.x("dlx"), s.q("dead"), s.q()
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"bad", pika.BasicProperties(headers={"app": "h"}))
    m, _p, _b = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    got = consume_n(conn, ch, dlq, 1)
    deliver, props, body = got[0]
    s.note("dead letter", (body.decode(), deliver.exchange, deliver.routing_key))
    s.note("headers", headers_without_time(props.headers))
    ch.basic_publish("", q, b"nacked")
    m, _p, _b = ch.basic_get(q)
    ch.basic_nack(m.delivery_tag, requeue=False)
    deliver, props, body = consume_n(conn, ch, dlq, 1)[0]
    s.note(
        "nacked dead letter", (body.decode(), headers_without_time(props.headers).get("x-death"))
    )
    s.note("left in the queue", count(ch, q))


def s_message_ttl_expiry(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    dlx, dlq, q = s.x("dlx"), s.q("expired"), s.q()
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(
        q,
        arguments={
            "x-message-ttl": 50,
            "x-dead-letter-exchange": dlx,
            "x-dead-letter-routing-key": "rk",
        },
    )
    ch.basic_publish("", q, b"short-lived")
    deliver, props, body = consume_n(conn, ch, dlq, 1)[0]
    s.note("expired", (body.decode(), deliver.routing_key))
    s.note("x-death", headers_without_time(props.headers).get("x-death"))
    s.note("left in the queue", count(ch, q))
    q2 = s.q("per-message")
    ch.queue_declare(q2, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q2, b"expiration", pika.BasicProperties(expiration="30"))
    deliver, props, body = consume_n(conn, ch, dlq, 1)[0]
    death = headers_without_time(props.headers).get("x-death")
    s.note("per-message expiration", (body.decode(), props.expiration, death))


def s_max_length_drop_head(s: Session) -> None:
    ch = s.channel()
    q = s.q()
    ch.queue_declare(q, arguments={"x-max-length": 2})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, f"m{i}")
    s.note("count", count(ch, q))
    s.note("kept", get_bodies(ch, q))


def s_max_length_reject_publish(s: Session) -> None:
    ch = s.channel()
    q = s.q()
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    outcomes = []
    for i in range(4):
        try:
            ch.basic_publish("", q, f"m{i}")
        except NackError:
            outcomes.append("nack")
        else:
            outcomes.append("ack")
    s.note("confirms", outcomes)
    s.note("kept", get_bodies(ch, q))
    ch.basic_publish("", q, b"room again")
    s.note("after draining", count(ch, q))


def _confirmed(ch: BlockingChannel, queue: str, body: str) -> str:
    """Publish ``body`` to ``queue`` on a confirm channel: ``"ack"`` or ``"nack"``."""
    try:
        ch.basic_publish("", queue, body)
    except NackError:
        return "nack"
    return "ack"


def s_max_length_bytes(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    dlx, dlq = s.x("dlx"), s.q("dead")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.confirm_delivery()
    bodies = [f"{name}:".ljust(size, ".") for name, size in
              [("a", 40), ("b", 40), ("c", 40), ("big", 150)]]  # fmt: skip
    # the dead letters each mode makes (RabbitMQ's record): waited for, then recorded
    dead = {"drop-head": 4, "reject-publish": 0, "reject-publish-dlx": 2}
    for mode, n in dead.items():
        q = s.q(mode)
        args = {"x-max-length-bytes": 100, "x-overflow": mode, "x-dead-letter-exchange": dlx}
        ch.queue_declare(q, arguments=args)
        s.note(f"{mode}: confirms", [_confirmed(ch, q, body) for body in bodies[:3]])
        s.note(f"{mode}: count", count(ch, q))
        s.note(f"{mode}: 150 bytes alone", _confirmed(ch, q, bodies[3]))
        s.note(f"{mode}: kept", [b.split(":")[0] for b in get_bodies(ch, q)])
        letters = consume_n(conn, ch, dlq, n) if n else []
        s.note(
            f"{mode}: dead letters",
            [
                (b.decode().split(":")[0], headers_without_time(p.headers)["x-death"][0]["reason"])
                for _m, p, b in letters
            ],
        )
    both = s.q("both")
    ch.queue_declare(both, arguments={"x-max-length": 2, "x-max-length-bytes": 100})
    for body in bodies[:3]:
        ch.basic_publish("", both, body[:10])
    s.note("both bounds: x-max-length", [b.split(":")[0] for b in get_bodies(ch, both)])
    for body in bodies[:3]:
        ch.basic_publish("", both, body)
    s.note("both bounds: x-max-length-bytes", [b.split(":")[0] for b in get_bodies(ch, both)])
    zero = s.q("zero")
    ch.queue_declare(zero, arguments={"x-max-length-bytes": 0})
    ch.basic_publish("", zero, b"")
    ch.basic_publish("", zero, b"x")
    s.note("x-max-length-bytes 0", count(ch, zero))
    with s.expect_close("same x-max-length-bytes again"):
        ch.queue_declare(both, arguments={"x-max-length": 2, "x-max-length-bytes": 100})
    with s.expect_close("other x-max-length-bytes"):
        ch.queue_declare(both, arguments={"x-max-length": 2, "x-max-length-bytes": 101})
    for value in (-1, "100", True):
        ch = s.channel(conn)
        with s.expect_close(f"x-max-length-bytes {value!r}"):
            ch.queue_declare(s.q("bad"), arguments={"x-max-length-bytes": value})


def s_max_priority_ordering(s: Session) -> None:
    ch = s.channel()
    q = s.q()
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    ch.confirm_delivery()
    for body, priority in [("p1", 1), ("p5a", 5), ("none", None), ("p3", 3), ("p9", 9),
                           ("p0", 0), ("p5b", 5)]:  # fmt: skip
        ch.basic_publish("", q, body, pika.BasicProperties(priority=priority))
    s.note("order", get_bodies(ch, q))


def s_publisher_confirms(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    q = s.q()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"routed")
    ch.basic_publish("", s.q("nobody"), b"unrouted but confirmed")
    ch.basic_publish("amq.fanout", "", b"to an exchange without bindings")
    s.note("published with confirms", count(ch, q))
    for i in range(50):
        ch.basic_publish("", q, f"n{i}")
    s.note("50 more, each confirmed", count(ch, q))
    with s.expect_close("tx.select on a confirm channel"):
        ch.tx_select()


def s_tx_commit_rollback(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    q = s.q()
    ch.queue_declare(q)
    ch.tx_select()
    ch.basic_publish("", q, b"rolled back")
    ch.tx_rollback()
    s.note("after rollback", count(ch, q))
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", q, b"two")
    s.note("before commit", count(s.channel(conn), q))
    ch.tx_commit()
    m, _p, b = ch.basic_get(q)
    s.note("after commit", (b.decode(), m.message_count))
    ch.basic_ack(m.delivery_tag)
    ch.tx_rollback()  # the ack is undone: "one" stays unacked on this channel
    ch.tx_commit()
    ch.close()
    ch = s.channel(conn)
    again = []
    while True:
        m, _p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            break
        again.append((b.decode(), m.redelivered))
    s.note("after the channel closed", again)
    with s.expect_close("confirm.select on a transactional channel"):
        tx = s.channel(conn)
        tx.tx_select()
        tx.confirm_delivery()


def s_basic_get_and_get_empty(s: Session) -> None:
    ch = s.channel()
    q = s.q()
    ch.queue_declare(q)
    s.note("empty", ch.basic_get(q) == (None, None, None))
    ch.confirm_delivery()
    props = pika.BasicProperties(
        content_type="text/plain",
        headers={"h": "v", "n": 7},
        delivery_mode=2,
        priority=3,
        correlation_id="c1",
        reply_to="r",
        message_id="id1",
        timestamp=1700000000,
        type="t",
        app_id="app",
        content_encoding="utf-8",
    )
    ch.basic_publish("", q, b"first", props)
    ch.basic_publish("", q, b"second")
    m, p, b = ch.basic_get(q, auto_ack=True)
    s.note(
        "first",
        (b.decode(), m.message_count, m.redelivered, m.exchange, m.routing_key),
    )
    s.note(
        "properties",
        (p.content_type, headers_without_time(p.headers), p.delivery_mode, p.priority,
         p.correlation_id, p.reply_to, p.message_id, p.timestamp, p.type, p.app_id,
         p.content_encoding),
    )  # fmt: skip
    m, p, b = ch.basic_get(q, auto_ack=True)
    s.note("second", (b.decode(), m.message_count, p.content_type, p.headers))
    s.note("empty again", ch.basic_get(q) == (None, None, None))
    with s.expect_close("get from a missing queue"):
        ch.basic_get(s.q("missing"))


def s_purge_counts(s: Session) -> None:
    ch = s.channel()
    q = s.q()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, f"m{i}")
    s.note("purged", ch.queue_purge(q).method.message_count)
    s.note("purged again", ch.queue_purge(q).method.message_count)
    ch.basic_publish("", q, b"kept unacked")
    ch.basic_publish("", q, b"ready")
    m, _p, _b = ch.basic_get(q)
    s.note("purge leaves unacked", ch.queue_purge(q).method.message_count)
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, _p, b = ch.basic_get(q, auto_ack=True)
    s.note("requeued after purge", (b.decode(), m.redelivered, m.message_count))


def s_delete_if_unused_if_empty(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    q = s.q()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m")
    with s.expect_close("delete if-empty of a queue with a message"):
        ch.queue_delete(q, if_empty=True)
    ch = s.channel(conn)
    ch.basic_consume(q, lambda *_: None, auto_ack=False)
    other = s.channel(conn)
    with s.expect_close("delete if-unused of a queue with a consumer"):
        other.queue_delete(q, if_unused=True)
    s.note("deleted", s.channel(conn).queue_delete(q).method.message_count)
    with s.expect_close("passive declare after the delete"):
        s.channel(conn).queue_declare(q, passive=True)
    ch = s.channel(conn)
    x = s.x()
    ch.exchange_declare(x, "direct")
    ch.queue_declare(s.q("bound"))
    ch.queue_bind(s.q("bound"), x, "k")
    with s.expect_close("exchange delete if-unused with a binding"):
        ch.exchange_delete(x, if_unused=True)
    ch = s.channel(conn)
    ch.queue_unbind(s.q("bound"), x, "k")
    ch.exchange_delete(x, if_unused=True)
    with s.expect_close("passive exchange declare after the delete"):
        ch.exchange_declare(x, passive=True)
    ch = s.channel(conn)
    s.note("delete of a missing queue", ch.queue_delete(s.q("never")).method.message_count)


def s_exchange_to_exchange_binding(s: Session) -> None:
    ch = s.channel()
    src, dst, q = s.x("src"), s.x("dst"), s.q()
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "fanout")
    ch.queue_declare(q)
    ch.queue_bind(q, dst)
    ch.exchange_bind(dst, src, "a.#")
    ch.confirm_delivery()
    for key in ("a.b", "b", "a", "c.a"):
        ch.basic_publish(src, key, key)
    s.note("through the binding", get_bodies(ch, q))
    ch.exchange_unbind(dst, src, "a.#")
    ch.basic_publish(src, "a.z", b"after unbind")
    s.note("after unbind", get_bodies(ch, q))
    with s.expect_close("bind to a missing source"):
        ch.exchange_bind(dst, s.x("missing"), "k")


def s_consumer_cancel_on_queue_delete(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    q = s.q()
    ch.queue_declare(q)
    cancelled: list[str] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *_: None, consumer_tag="sbs-consumer")
    s.note("consumer tag kept", tag == "sbs-consumer")
    s.channel(s.connect()).queue_delete(q)
    wait_until(conn, lambda: bool(cancelled), "basic.cancel from the server")
    s.note("cancelled", cancelled)
    s.note("channel still open", ch.is_open)
    with s.expect_close("consume from a missing queue"):
        ch.basic_consume(s.q("missing"), lambda *_: None)


def s_auto_delete_and_exclusive_lifetimes(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    q = s.q()
    ch.queue_declare(q, auto_delete=True)
    tag = ch.basic_consume(q, lambda *_: None)
    watcher = s.channel(s.connect())
    s.note("consumers", watcher.queue_declare(q, passive=True).method.consumer_count)
    ch.basic_cancel(tag)
    with s.expect_close("auto-delete queue after its last consumer left"):
        watcher.queue_declare(q, passive=True)
    excl = s.q("exclusive")
    s.channel(conn).queue_declare(excl, exclusive=True)
    conn.close()
    with s.expect_close("exclusive queue after its connection closed"):
        s.channel(s.connect()).queue_declare(excl, passive=True)
    gen = s.channel(s.connect()).queue_declare("", exclusive=True).method.queue
    s.note("server-named queue prefix", gen.startswith("amq.gen-"))


def s_recover_redelivers(s: Session) -> None:
    conn = s.connect()
    ch = s.channel(conn)
    q = s.q()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    got: list[tuple[str, bool]] = []
    ch.basic_consume(q, lambda _c, m, _p, b: got.append((b.decode(), m.redelivered)))
    wait_until(conn, lambda: len(got) >= 2, "two deliveries")
    ch.basic_recover(requeue=True)
    wait_until(conn, lambda: len(got) >= 4, "the two again after basic.recover")
    s.note("deliveries", got)


def s_connection_errors(s: Session) -> None:
    base = s.url.rsplit("/", 1)[0]
    for step, url in [
        ("missing virtual host", base + "/sbs-no-such-vhost"),
        ("wrong password", base.replace("guest:guest@", "guest:wrong@") + "/%2F"),
    ]:
        try:
            s.connect(url)
        except ConnectionClosedByBroker as exc:
            s.note(step, closed(exc))
        except AMQPConnectionError as exc:  # pika wraps a close during the handshake
            found = re.search(r"\((\d+)\) '(\w+)", str(exc))
            s.note(step, ("closed", int(found[1]), found[2]) if found else type(exc).__name__)
        else:
            s.note(step, "connected")
    conn = s.connect()
    caps = conn._impl.server_capabilities
    s.note(
        "capabilities",
        {k: caps.get(k) for k in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                                  "exchange_exchange_bindings", "per_consumer_qos")},
    )  # fmt: skip


SCENARIOS: dict[str, Callable[[Session], None]] = {
    name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("s_")
}
"""Every scenario by name."""


def run_scenario(name: str, url: str) -> Record:
    """Run scenario ``name`` against the server at ``url``; return its record."""
    session = Session(url, name)
    try:
        SCENARIOS[name](session)
    finally:
        session.cleanup()
    return session.record


# What RabbitMQ 3.10.8 (Debian 12's rabbitmq-server) gives, scenario by scenario: written
# down from its records (stable over repeated runs), checked against it in every test run.
EXPECTED: dict[str, Record] = {
    "auto_delete_and_exclusive_lifetimes": [
        ("consumers", 1),
        ("auto-delete queue after its last consumer left", ("closed", 404, "NOT_FOUND")),
        ("exclusive queue after its connection closed", ("closed", 404, "NOT_FOUND")),
        ("server-named queue prefix", True),
    ],
    "basic_get_and_get_empty": [
        ("empty", True),
        ("first", ("first", 1, False, "", "sbs.basic_get_and_get_empty.q")),
        (
            "properties",
            (
                "text/plain",
                {"h": "v", "n": 7},
                2,
                3,
                "c1",
                "r",
                "id1",
                1700000000,
                "t",
                "app",
                "utf-8",
            ),
        ),
        ("second", ("second", 0, None, None)),
        ("empty again", True),
        ("get from a missing queue", ("closed", 404, "NOT_FOUND")),
    ],
    "connection_errors": [
        ("missing virtual host", ("closed", 530, "NOT_ALLOWED")),
        ("wrong password", ("closed", 403, "ACCESS_REFUSED")),
        (
            "capabilities",
            {
                "publisher_confirms": True,
                "basic.nack": True,
                "consumer_cancel_notify": True,
                "exchange_exchange_bindings": True,
                "per_consumer_qos": True,
            },
        ),
    ],
    "consumer_cancel_on_queue_delete": [
        ("consumer tag kept", True),
        ("cancelled", ["sbs-consumer"]),
        ("channel still open", True),
        ("consume from a missing queue", ("closed", 404, "NOT_FOUND")),
    ],
    "default_exchange_routing": [
        ("bodies", ["one", "two"]),
        ("bind to the default exchange", ("closed", 403, "ACCESS_REFUSED")),
    ],
    "delete_if_unused_if_empty": [
        ("delete if-empty of a queue with a message", ("closed", 406, "PRECONDITION_FAILED")),
        ("delete if-unused of a queue with a consumer", ("closed", 406, "PRECONDITION_FAILED")),
        ("deleted", 0),
        ("passive declare after the delete", ("closed", 404, "NOT_FOUND")),
        ("exchange delete if-unused with a binding", ("closed", 406, "PRECONDITION_FAILED")),
        ("passive exchange declare after the delete", ("closed", 404, "NOT_FOUND")),
        ("delete of a missing queue", 0),
    ],
    "direct_routing": [("qa", ["0"]), ("qab", ["0", "1"]), ("qc", ["2"])],
    "exchange_to_exchange_binding": [
        ("through the binding", ["a.b", "a"]),
        ("after unbind", []),
        ("bind to a missing source", ("closed", 404, "NOT_FOUND")),
    ],
    "exclusive_queue_from_another_connection": [
        ("passive declare from another connection", ("closed", 405, "RESOURCE_LOCKED")),
        ("consume from another connection", ("closed", 405, "RESOURCE_LOCKED")),
        ("delete from another connection", ("closed", 405, "RESOURCE_LOCKED")),
        ("owner still counts", 0),
    ],
    "fanout_routing": [("q1", ["0", "1", "2"]), ("q2", ["0", "1", "2"])],
    "headers_routing": [
        ("all", ["0", "5"]),
        ("any", ["0", "1", "2", "5"]),
        ("default", ["0", "1", "5"]),
        ("empty", ["0", "1", "2", "3", "4", "5"]),
    ],
    "mandatory_unroutable_returns": [
        ("returns without confirms", [(312, "NO_ROUTE", "amq.direct", "sbs.nobody", "lost")]),
        ("with confirms", [(312, "NO_ROUTE")]),
        ("routed mandatory publish", 1),
    ],
    "max_length_drop_head": [("count", 2), ("kept", ["m3", "m4"])],
    "max_length_reject_publish": [
        ("confirms", ["ack", "ack", "nack", "nack"]),
        ("kept", ["m0", "m1"]),
        ("after draining", 1),
    ],
    "max_length_bytes": [
        ("drop-head: confirms", ["ack", "ack", "ack"]),
        ("drop-head: count", 2),
        ("drop-head: 150 bytes alone", "ack"),
        ("drop-head: kept", []),
        (
            "drop-head: dead letters",
            [("a", "maxlen"), ("b", "maxlen"), ("c", "maxlen"), ("big", "maxlen")],
        ),
        ("reject-publish: confirms", ["ack", "ack", "nack"]),
        ("reject-publish: count", 2),
        ("reject-publish: 150 bytes alone", "nack"),
        ("reject-publish: kept", ["a", "b"]),
        ("reject-publish: dead letters", []),
        ("reject-publish-dlx: confirms", ["ack", "ack", "nack"]),
        ("reject-publish-dlx: count", 2),
        ("reject-publish-dlx: 150 bytes alone", "nack"),
        ("reject-publish-dlx: kept", ["a", "b"]),
        ("reject-publish-dlx: dead letters", [("c", "maxlen"), ("big", "maxlen")]),
        ("both bounds: x-max-length", ["b", "c"]),
        ("both bounds: x-max-length-bytes", ["b", "c"]),
        ("x-max-length-bytes 0", 0),
        ("same x-max-length-bytes again", "open"),
        ("other x-max-length-bytes", ("closed", 406, "PRECONDITION_FAILED")),
        ("x-max-length-bytes -1", ("closed", 406, "PRECONDITION_FAILED")),
        ("x-max-length-bytes '100'", ("closed", 406, "PRECONDITION_FAILED")),
        ("x-max-length-bytes True", ("closed", 406, "PRECONDITION_FAILED")),
    ],
    "max_priority_ordering": [("order", ["p5a", "p9", "p5b", "p3", "p1", "none", "p0"])],
    "message_ttl_expiry": [
        ("expired", ("short-lived", "rk")),
        (
            "x-death",
            [
                {
                    "count": 1,
                    "reason": "expired",
                    "queue": "sbs.message_ttl_expiry.q",
                    "exchange": "",
                    "routing-keys": ["sbs.message_ttl_expiry.q"],
                }
            ],
        ),
        ("left in the queue", 0),
        (
            "per-message expiration",
            (
                "expiration",
                None,
                [
                    {
                        "count": 1,
                        "reason": "expired",
                        "queue": "sbs.message_ttl_expiry.per-message",
                        "exchange": "",
                        "routing-keys": ["sbs.message_ttl_expiry.per-message"],
                        "original-expiration": "30",
                    }
                ],
            ),
        ),
    ],
    "nack_requeue_redelivered": [
        ("first gets", [("a", False), ("b", False), ("c", False)]),
        ("after nack and reject with requeue", [("a", True), ("b", True), ("c", True)]),
        ("ack of an unknown delivery tag", ("closed", 406, "PRECONDITION_FAILED")),
    ],
    "passive_declare_missing_queue": [
        ("passive declare of a missing queue", ("closed", 404, "NOT_FOUND")),
        ("declare-ok", (True, 0, 0)),
        ("passive declare-ok", (0, 0)),
        ("passive declare of a missing exchange", ("closed", 404, "NOT_FOUND")),
    ],
    "prefetch_and_ack_order": [
        ("ready while 2 are unacked", 3),
        ("first two", [("m0", 1, False), ("m1", 2, False)]),
        (
            "all, in order",
            [
                ("m0", 1, False),
                ("m1", 2, False),
                ("m2", 3, False),
                ("m3", 4, False),
                ("m4", 5, False),
            ],
        ),
        ("ready at the end", 0),
    ],
    "publish_to_missing_exchange": [
        ("publish to a missing exchange", ("closed", 404, "NOT_FOUND")),
        ("the same with confirms", ("closed", 404, "NOT_FOUND")),
    ],
    "publisher_confirms": [
        ("published with confirms", 1),
        ("50 more, each confirmed", 51),
        ("tx.select on a confirm channel", ("closed", 406, "PRECONDITION_FAILED")),
    ],
    "purge_counts": [
        ("purged", 3),
        ("purged again", 0),
        ("purge leaves unacked", 1),
        ("requeued after purge", ("kept unacked", True, 0)),
    ],
    "recover_redelivers": [("deliveries", [("a", False), ("b", False), ("a", True), ("b", True)])],
    "redeclare_with_other_arguments": [
        ("same arguments again", "ok"),
        ("other x-max-length", ("closed", 406, "PRECONDITION_FAILED")),
        ("other durable flag", ("closed", 406, "PRECONDITION_FAILED")),
        ("exchange redeclared with another type", ("closed", 406, "PRECONDITION_FAILED")),
        ("exchange declared with the reserved prefix amq.", ("closed", 403, "ACCESS_REFUSED")),
    ],
    "reject_to_dead_letter_exchange": [
        (
            "dead letter",
            (
                "bad",
                "sbs.reject_to_dead_letter_exchange.dlx",
                "sbs.reject_to_dead_letter_exchange.q",
            ),
        ),
        (
            "headers",
            {
                "app": "h",
                "x-death": [
                    {
                        "count": 1,
                        "reason": "rejected",
                        "queue": "sbs.reject_to_dead_letter_exchange.q",
                        "exchange": "",
                        "routing-keys": ["sbs.reject_to_dead_letter_exchange.q"],
                    }
                ],
                "x-first-death-exchange": "",
                "x-first-death-queue": "sbs.reject_to_dead_letter_exchange.q",
                "x-first-death-reason": "rejected",
            },
        ),
        (
            "nacked dead letter",
            (
                "nacked",
                [
                    {
                        "count": 1,
                        "reason": "rejected",
                        "queue": "sbs.reject_to_dead_letter_exchange.q",
                        "exchange": "",
                        "routing-keys": ["sbs.reject_to_dead_letter_exchange.q"],
                    }
                ],
            ),
        ),
        ("left in the queue", 0),
    ],
    "topic_routing": [
        ("star", ["1"]),
        ("hash", ["0", "1", "2", "4", "7"]),
        ("all", ["0", "1", "2", "3", "4", "5", "6", "7", "8"]),
        ("starb", ["1", "3"]),
        ("mid", ["2", "7"]),
        ("tail", ["2", "4", "6", "7"]),
        ("exact", ["1"]),
        ("twostar", ["1", "3", "8"]),
    ],
    "tx_commit_rollback": [
        ("after rollback", 0),
        ("before commit", 0),
        ("after commit", ("one", 1)),
        ("after the channel closed", [("one", True), ("two", False)]),
        ("confirm.select on a transactional channel", ("closed", 406, "PRECONDITION_FAILED")),
    ],
}
