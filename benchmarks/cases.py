"""The cases of mqkit's benchmark suite: mqkit against the libraries users know, by group.

``python benchmarks/run.py`` runs them (Markdown tables); ``harness.py`` times them and
``report.py`` writes the tables, the targets with their verdicts and the chart. The cases are
organised in groups (:data:`GROUPS`); each group has one or more tables, and the cases of a
table run interleaved: every round runs each case of the table once (the order rotates from
round to round), and the table reports the median of the rounds. A ratio is the median of the
per-round ratios of two cases of the same table (:func:`harness.paired_ratio`): compare cases
of one run, never numbers across runs - on a shared machine absolute numbers drift.

- **core**: publish -> get in one thread, 1 -> 1 and 1 -> 10 subscribers: mqkit (core, no
  plugins) against pyee, blinker, pypubsub, aiopubsub (sync listeners), a plain list of
  callbacks and a ``queue.SimpleQueue`` per subscriber.
- **cross-thread**: one publisher thread, one consumer thread per subscriber blocking in
  ``get()``; mqkit against one ``queue.Queue`` (and ``queue.SimpleQueue``) per subscriber.
- **asyncio**: a consumer task per subscriber doing ``async for`` on an mqkit subscription with
  the (synchronous) publisher in the same event loop, against the naive ``asyncio.Queue``
  broker and aiopubsub; a publisher thread into asyncio consumers (mqkit, janus) as context.
- **plugins**: publish -> get with the core alone, with each feature plugin, with all the
  in-memory plugins (priority, ttl with a default ``message_ttl``, metrics, memory,
  deadletter, transactions; and those with ack, acknowledged), with ``Broker()`` defaults
  (and the ack round trip on them) and with persistence.
- **durable**: ``publish`` (one thread, and 8 publisher threads sharing group commits) and
  ``publish_batch`` with persistence against diskcache's ``Cache.set`` (alone and 100 per
  ``transact()``) and ``sqlite3`` ``executemany``.
- **ack**: the round trip publish, get, ack: in memory against kombu ``memory://`` (and
  persist-queue on ``:memory:``), durable against persist-queue's ``SQLiteAckQueue``.
- **memory**: bytes per buffered message (``tracemalloc``) against a ``queue.SimpleQueue``
  holding the same stamped messages, and the RSS of a child process passing messages through
  a 10-subscriber topic, sampled every tenth of the run (flat: the end against the first
  tenth).
- **scaling**: the cost per publish and per get with 10,000 and with 1,000,000 messages
  buffered in each of 10 subscriptions, for the core, ``Broker()`` defaults and each
  in-memory plugin alone, one child process per configuration (:func:`run_scaling`); and
  publishing into a full 100,000-message ``DROP_OLDEST`` buffer, priority against FIFO.

Every subscriber, of every library, is the same kind of Python function: it appends the message
to a list. mqkit's consumers call it on what ``get()`` returns; callback libraries call it
themselves. The messages are built before the clock starts, alike for every case.
Peers are optional: a missing one shows as "not installed". Nothing here asserts a speed.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib
import json
import math
import queue
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import attrs
from bench_handlers import aget_loop, async_handler, get_loop, sync_handler

from mqkit import (
    AckMessage,
    AckTTLMessage,
    Backpressure,
    Broker,
    Config,
    Message,
    PriorityMessage,
    SubOptions,
    TTLMessage,
)
from mqkit.plugins.persistence.serializer import message_to_dict
from mqkit.testing import broker_config

from harness import (
    BenchCase,
    MemoryResult,
    Run,
    ScalingResult,
    in_child,
    in_temp_dir,
    start_clock,
    stop_clock,
)


def _config(*plugins: str, **fields: Any) -> Config:
    """A config that loads exactly the named built-in plugins (``mqkit.testing``'s)."""
    return broker_config(*plugins, config=Config(**fields))


GROUPS: Final = (
    "core",
    "cross-thread",
    "asyncio",
    "plugins",
    "durable",
    "ack",
    "memory",
    "scaling",
)
"""The groups of cases, in the order they run."""


PEERS: Final = (
    "pyee",
    "blinker",
    "pypubsub",
    "aiopubsub",
    "janus",
    "kombu",
    "persist-queue",
    "diskcache",
)
"""The peer distributions (the ``bench`` extra installs them)."""


TOPIC: Final = "bench"


CHUNK: Final = 512
"""In the asyncio cases the publisher yields to the event loop every CHUNK messages."""


BOUND: Final = 1024
"""Buffer bound of the cross-thread and asyncio cases (mqkit, queue.Queue, asyncio.Queue)."""


BATCH: Final = 100
"""Messages per ``publish_batch`` (and per transaction of the batched raw-store cases)."""


RSS_SUBSCRIBERS: Final = 10


RSS_MESSAGES: Final = 1_000_000


RSS_QUICK_MESSAGES: Final = 50_000


STAMPED: Final = "queue.SimpleQueue, stamped copies"
"""The memory baseline: a SimpleQueue holding the objects an mqkit subscription buffers."""


RSS_SAMPLES: Final = 10
"""The RSS case samples the child's resident set this many times (every tenth of the run)."""


LONG_TTL: Final = 600.0
"""``message_ttl`` of the ttl cases: every message gets an expiry, none expires in a run."""


IN_MEMORY: Final = ("priority", "ttl", "metrics", "memory", "deadletter", "transactions")
"""The in-memory plugins of "all in-memory, plain messages" (ack has its own round trip)."""


SCALING_SUBSCRIBERS: Final = 10


SCALING_LEVELS: Final = (10_000, 1_000_000)
"""Messages buffered (in each of the 10 subscriptions) for the small and the large level."""


SCALING_QUICK_LEVELS: Final = (1_000, 100_000)


SCALING_BAR: Final = 1.5
"""Flat cost: the cost per message at the large level is at most this times the small's."""


FULL_BUFFER: Final = 100_000
"""Size of the full DROP_OLDEST buffer of the "full buffer" table."""


FULL_BUFFER_LIMIT: Final = 2.0
"""Seconds a "full buffer" run may publish for; a slower run reports the rate it reached."""


_FAR: Final = datetime.now(UTC) + timedelta(days=1)


_GENEROUS: Final = 60.0  # seconds: how long a blocked publisher or a consumer may wait


# -- helpers ---------------------------------------------------------------------------------------


def _peer(module: str) -> Any:
    """Import a peer's module; None when it is not installed (or fails to import)."""
    try:
        return importlib.import_module(module)
    except Exception:
        return None


def _payload(i: int) -> dict[str, Any]:
    return {"order": i, "sku": f"SKU-{i % 977:05d}", "qty": i % 7 + 1, "note": "x" * 64}


def _messages(n: int, make: Callable[[int], Message] | None = None) -> list[Message]:
    if make is None:
        return [Message(f"m-{i}", _payload(i)) for i in range(n)]
    return [make(i) for i in range(n)]


def _plain(i: int) -> Message:
    return Message(f"m-{i}", _payload(i))


def _handlers(count: int) -> tuple[list[list[Any]], list[Callable[[Any], None]]]:
    """``count`` subscribers: Python functions that each append to their own list."""
    sinks: list[list[Any]] = []
    handlers: list[Callable[[Any], None]] = []
    for _ in range(count):
        sink: list[Any] = []

        def handle(message: Any, sink: list[Any] = sink) -> None:
            sink.append(message)

        sinks.append(sink)
        handlers.append(handle)
    return sinks, handlers


def _check(sinks: Iterable[Sequence[Any]], n: int) -> None:
    got = [len(s) for s in sinks]
    if any(g != n for g in got):
        raise RuntimeError(f"delivered {got}, expected {n} to each subscriber")


def _chunks(items: list[Message], size: int) -> list[list[Message]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- core: publish -> get in one thread ------------------------------------------------------------


def _mqkit_get(fanout: int, config: Callable[[], Config] = _config) -> Run:
    def run(n: int) -> float:
        msgs = _messages(n)
        sinks, handlers = _handlers(fanout)
        with Broker(config()) as broker:
            subs = [broker.subscribe(TOPIC) for _ in range(fanout)]
            pairs = [(s.get, h) for s, h in zip(subs, handlers, strict=True)]
            publish = broker.publish
            t0 = start_clock()
            for m in msgs:
                publish(TOPIC, m)
                for get, handle in pairs:
                    handle(get())
            elapsed = stop_clock(t0)
        _check(sinks, n)
        return elapsed

    return run


def _callback_list(fanout: int) -> Run:
    def run(n: int) -> float:
        msgs = _messages(n)
        sinks, handlers = _handlers(fanout)
        t0 = start_clock()
        for m in msgs:
            for handle in handlers:
                handle(m)
        elapsed = stop_clock(t0)
        _check(sinks, n)
        return elapsed

    return run


def _simple_queue(fanout: int) -> Run:
    def run(n: int) -> float:
        msgs = _messages(n)
        sinks, handlers = _handlers(fanout)
        queues: list[queue.SimpleQueue[Message]] = [queue.SimpleQueue() for _ in range(fanout)]
        puts = [q.put for q in queues]
        pairs = [(q.get, h) for q, h in zip(queues, handlers, strict=True)]
        t0 = start_clock()
        for m in msgs:
            for put in puts:
                put(m)
            for get, handle in pairs:
                handle(get())
        elapsed = stop_clock(t0)
        _check(sinks, n)
        return elapsed

    return run


def _pyee(fanout: int) -> Run:
    def run(n: int) -> float:
        emitter = importlib.import_module("pyee.base").EventEmitter()
        msgs = _messages(n)
        sinks, handlers = _handlers(fanout)
        for handle in handlers:
            emitter.on(TOPIC, handle)
        emit = emitter.emit
        t0 = start_clock()
        for m in msgs:
            emit(TOPIC, m)
        elapsed = stop_clock(t0)
        _check(sinks, n)
        return elapsed

    return run


def _blinker(fanout: int) -> Run:
    def run(n: int) -> float:
        signal = importlib.import_module("blinker").Signal()
        msgs = _messages(n)
        sinks: list[list[Any]] = []
        for _ in range(fanout):
            sink: list[Any] = []

            def receive(sender: Any, msg: Any, sink: list[Any] = sink) -> None:
                sink.append(msg)

            signal.connect(receive, weak=False)
            sinks.append(sink)
        send = signal.send
        t0 = start_clock()
        for m in msgs:
            send(None, msg=m)
        elapsed = stop_clock(t0)
        _check(sinks, n)
        return elapsed

    return run


def _pypubsub(fanout: int) -> Run:
    def run(n: int) -> float:
        pub = importlib.import_module("pubsub.pub")
        topic = f"bench{fanout}_{time.monotonic_ns()}"
        msgs = _messages(n)
        sinks, handlers = _handlers(fanout)  # pypubsub holds listeners weakly: we keep them
        for handle in handlers:
            pub.subscribe(handle, topic)
        send = pub.sendMessage
        try:
            t0 = start_clock()
            for m in msgs:
                send(topic, message=m)
            elapsed = stop_clock(t0)
        finally:
            pub.unsubAll(topic)
        _check(sinks, n)
        return elapsed

    return run


def _aiopubsub_sync(fanout: int) -> Run:
    def run(n: int) -> float:
        aps = importlib.import_module("aiopubsub")
        hub = aps.Hub()
        msgs = _messages(n)
        sinks: list[list[Any]] = []
        for i in range(fanout):
            sink: list[Any] = []

            def listener(key: Any, msg: Any, sink: list[Any] = sink) -> None:
                sink.append(msg)

            aps.Subscriber(hub, f"s{i}").add_sync_listener(aps.Key("bench", "*"), listener)
            sinks.append(sink)
        publisher = aps.Publisher(hub, prefix=aps.Key("bench"))
        key = aps.Key("t")
        publish = publisher.publish
        t0 = start_clock()
        for m in msgs:
            publish(key, m)
        elapsed = stop_clock(t0)
        _check(sinks, n)
        return elapsed

    return run


# -- cross-thread: a publisher thread, consumer threads ------------------------------------------


def _consumer_threads(
    pairs: Sequence[tuple[Callable[[], Any], Callable[[Any], None]]], n: int
) -> tuple[list[threading.Thread], threading.Barrier]:
    """Start one consumer thread per (get, handle); they pass the barrier, then consume n."""
    barrier = threading.Barrier(len(pairs) + 1)

    def consume(get: Callable[[], Any], handle: Callable[[Any], None]) -> None:
        barrier.wait()
        for _ in range(n):
            handle(get())

    threads = [
        threading.Thread(target=consume, args=pair, daemon=True, name=f"bench-consumer-{i}")
        for i, pair in enumerate(pairs)
    ]
    for t in threads:
        t.start()
    return threads, barrier


def _join(threads: Sequence[threading.Thread]) -> None:
    deadline = time.monotonic() + _GENEROUS
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise RuntimeError("a consumer thread did not finish (messages lost?)")


def _mqkit_threads(fanout: int, bounded: bool) -> Run:
    def run(n: int) -> float:
        msgs = _messages(n)
        sinks, handlers = _handlers(fanout)
        opts = (
            SubOptions(
                buffer_size=BOUND,
                policy=Backpressure.BLOCK_WITH_TIMEOUT,
                block_timeout=_GENEROUS,
            )
            if bounded
            else SubOptions(buffer_size=n)
        )
        with Broker(_config()) as broker:
            subs = [broker.subscribe(TOPIC, opts) for _ in range(fanout)]
            threads, barrier = _consumer_threads(
                [(s.get, h) for s, h in zip(subs, handlers, strict=True)], n
            )
            publish = broker.publish
            barrier.wait()
            t0 = start_clock()
            for m in msgs:
                publish(TOPIC, m)
            _join(threads)
            elapsed = stop_clock(t0)
        _check(sinks, n)
        return elapsed

    return run


def _stdlib_threads(fanout: int, bounded: bool) -> Run:
    def run(n: int) -> float:
        msgs = _messages(n)
        sinks, handlers = _handlers(fanout)
        queues: list[queue.Queue[Message] | queue.SimpleQueue[Message]] = [
            queue.Queue(maxsize=BOUND) if bounded else queue.SimpleQueue() for _ in range(fanout)
        ]
        puts = [q.put for q in queues]
        threads, barrier = _consumer_threads(
            [(q.get, h) for q, h in zip(queues, handlers, strict=True)], n
        )
        barrier.wait()
        t0 = start_clock()
        for m in msgs:
            for put in puts:
                put(m)
        _join(threads)
        elapsed = stop_clock(t0)
        _check(sinks, n)
        return elapsed

    return run


# -- asyncio ---------------------------------------------------------------------------------------


def _mqkit_async(fanout: int) -> Run:
    """Consumer tasks ``async for`` on mqkit subscriptions; the publisher in the same loop."""

    def run(n: int) -> float:
        chunks = _chunks(_messages(n), CHUNK)
        sinks, handlers = _handlers(fanout)

        async def main() -> float:
            with Broker(_config()) as broker:
                subs = [broker.subscribe(TOPIC, SubOptions(buffer_size=BOUND)) for _ in sinks]

                async def consume(sub: Any, handle: Callable[[Any], None]) -> None:
                    left = n
                    async for m in sub:
                        handle(m)
                        left -= 1
                        if not left:
                            break

                tasks = [
                    asyncio.create_task(consume(s, h)) for s, h in zip(subs, handlers, strict=True)
                ]
                await asyncio.sleep(0)  # the consumers start and wait
                publish = broker.publish
                t0 = start_clock()
                for chunk in chunks:
                    for m in chunk:
                        publish(TOPIC, m)
                    await asyncio.sleep(0)
                if any(s.stats().dropped for s in subs):
                    for task in tasks:
                        task.cancel()
                    raise RuntimeError("mqkit dropped messages: the consumers fell behind")
                await asyncio.wait_for(asyncio.gather(*tasks), _GENEROUS)
                return stop_clock(t0)

        elapsed = asyncio.run(main())
        _check(sinks, n)
        return elapsed

    return run


def _asyncio_queues(fanout: int) -> Run:
    """The naive asyncio broker: an ``asyncio.Queue(maxsize)`` and a consumer task per sub."""

    def run(n: int) -> float:
        chunks = _chunks(_messages(n), CHUNK)
        sinks, handlers = _handlers(fanout)

        async def main() -> float:
            queues: list[asyncio.Queue[Message]] = [asyncio.Queue(maxsize=BOUND) for _ in sinks]

            async def consume(q: asyncio.Queue[Message], handle: Callable[[Any], None]) -> None:
                for _ in range(n):
                    handle(await q.get())

            tasks = [
                asyncio.create_task(consume(q, h)) for q, h in zip(queues, handlers, strict=True)
            ]
            await asyncio.sleep(0)
            t0 = start_clock()
            for chunk in chunks:
                for m in chunk:
                    for q in queues:
                        await q.put(m)
                await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.gather(*tasks), _GENEROUS)
            return stop_clock(t0)

        elapsed = asyncio.run(main())
        _check(sinks, n)
        return elapsed

    return run


def _aiopubsub_async(fanout: int) -> Run:
    def run(n: int) -> float:
        aps = importlib.import_module("aiopubsub")
        chunks = _chunks(_messages(n), CHUNK)
        sinks, handlers = _handlers(fanout)

        async def main() -> float:
            hub = aps.Hub()
            subscribers = []
            for i in range(fanout):
                s = aps.Subscriber(hub, f"s{i}")
                s.async_subscribe(aps.Key("bench", "*"))
                subscribers.append(s)
            publisher = aps.Publisher(hub, prefix=aps.Key("bench"))
            key = aps.Key("t")

            async def consume(s: Any, handle: Callable[[Any], None]) -> None:
                for _ in range(n):
                    _, msg = await s.consume()
                    handle(msg)

            tasks = [
                asyncio.create_task(consume(s, h))
                for s, h in zip(subscribers, handlers, strict=True)
            ]
            await asyncio.sleep(0)
            publish = publisher.publish
            t0 = start_clock()
            for chunk in chunks:
                for m in chunk:
                    publish(key, m)
                await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.gather(*tasks), _GENEROUS)
            return stop_clock(t0)

        elapsed = asyncio.run(main())
        _check(sinks, n)
        return elapsed

    return run


def _mqkit_thread_to_async(fanout: int) -> Run:
    """A publisher thread into ``async for`` consumers (bounded buffers that block)."""

    def run(n: int) -> float:
        msgs = _messages(n)
        sinks, handlers = _handlers(fanout)
        opts = SubOptions(
            buffer_size=BOUND, policy=Backpressure.BLOCK_WITH_TIMEOUT, block_timeout=_GENEROUS
        )

        async def main() -> float:
            with Broker(_config()) as broker:
                subs = [broker.subscribe(TOPIC, opts) for _ in sinks]
                go = threading.Event()

                def produce() -> None:
                    go.wait()
                    publish = broker.publish
                    for m in msgs:
                        publish(TOPIC, m)

                async def consume(sub: Any, handle: Callable[[Any], None]) -> None:
                    left = n
                    async for m in sub:
                        handle(m)
                        left -= 1
                        if not left:
                            break

                tasks = [
                    asyncio.create_task(consume(s, h)) for s, h in zip(subs, handlers, strict=True)
                ]
                producer = threading.Thread(target=produce, daemon=True, name="bench-producer")
                producer.start()
                await asyncio.sleep(0)
                t0 = start_clock()
                go.set()
                await asyncio.wait_for(asyncio.gather(*tasks), _GENEROUS)
                elapsed = stop_clock(t0)
                producer.join(_GENEROUS)
                return elapsed

        elapsed = asyncio.run(main())
        _check(sinks, n)
        return elapsed

    return run


def _janus(fanout: int) -> Run:
    def run(n: int) -> float:
        janus = importlib.import_module("janus")
        msgs = _messages(n)
        sinks, handlers = _handlers(fanout)

        async def main() -> float:
            queues = [janus.Queue(maxsize=BOUND) for _ in sinks]
            go = threading.Event()

            def produce() -> None:
                go.wait()
                puts = [q.sync_q.put for q in queues]
                for m in msgs:
                    for put in puts:
                        put(m)

            async def consume(q: Any, handle: Callable[[Any], None]) -> None:
                get = q.async_q.get
                for _ in range(n):
                    handle(await get())

            tasks = [
                asyncio.create_task(consume(q, h)) for q, h in zip(queues, handlers, strict=True)
            ]
            producer = threading.Thread(target=produce, daemon=True, name="bench-producer")
            producer.start()
            await asyncio.sleep(0)
            t0 = start_clock()
            go.set()
            await asyncio.wait_for(asyncio.gather(*tasks), _GENEROUS)
            elapsed = stop_clock(t0)
            producer.join(_GENEROUS)
            for q in queues:
                q.close()
                await q.wait_closed()
            return elapsed

        elapsed = asyncio.run(main())
        _check(sinks, n)
        return elapsed

    return run


# -- plugins ---------------------------------------------------------------------------------------


def _plugin_case(
    config: Callable[[], Config], make: Callable[[int], Message] = _plain, ack: bool = False
) -> Run:
    def run(n: int) -> float:
        msgs = _messages(n, make)
        sinks, (handle,) = _handlers(1)
        with Broker(config()) as broker:
            sub = broker.subscribe(TOPIC)
            publish, get, acknowledge = broker.publish, sub.get, sub.ack
            t0 = start_clock()
            if ack:
                for m in msgs:
                    publish(TOPIC, m)
                    got: Any = get()
                    handle(got)
                    acknowledge(got.ack_id)
            else:
                for m in msgs:
                    publish(TOPIC, m)
                    handle(get())
            elapsed = stop_clock(t0)
        _check(sinks, n)
        return elapsed

    return run


def _persistence_config(directory: Path, *plugins: str, **fields: Any) -> Config:
    path = str(directory / "store")
    if plugins:
        return _config(*plugins, persistence_path=path, **fields)
    return Config(enable_persistence=True, persistence_path=path, **fields)


def _durable_get(n: int) -> float:
    directory = Path(tempfile.mkdtemp(prefix="mqkit-bench-"))
    try:
        return _plugin_case(lambda: _persistence_config(directory, "persistence"))(n)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- scaling: a full buffer ------------------------------------------------------------------------


def _mixed_priority(i: int) -> Message:
    """A small PriorityMessage of one of five levels, in turn (a shared payload)."""
    return PriorityMessage(f"m-{i}", b"payload", priority=i % 5)


def _full_buffer(config: Callable[[], Config]) -> Run:
    """Publish into a subscription whose DROP_OLDEST buffer is full: every publish evicts.

    The buffer (:data:`FULL_BUFFER` messages of mixed priorities) is filled outside the clock.
    A run that has not published its n messages after :data:`FULL_BUFFER_LIMIT` seconds stops
    and reports the time n would take at the rate it reached.
    """

    def run(n: int) -> float:
        fill = [_mixed_priority(i) for i in range(FULL_BUFFER)]
        msgs = [_mixed_priority(FULL_BUFFER + i) for i in range(n)]
        opts = SubOptions(buffer_size=FULL_BUFFER, policy=Backpressure.DROP_OLDEST)
        with Broker(config()) as broker:
            sub = broker.subscribe(TOPIC, opts)
            for chunk in _chunks(fill, 1000):
                broker.publish_batch(TOPIC, chunk)
            del fill
            publish, clock, limit = broker.publish, time.perf_counter, FULL_BUFFER_LIMIT
            done = 0
            t0 = start_clock()
            for m in msgs:
                publish(TOPIC, m)
                done += 1
                if not done & 7 and clock() - t0 > limit:
                    break
            elapsed = stop_clock(t0)
            stats = sub.stats()
        if stats.queue_len != FULL_BUFFER or stats.dropped != done:  # one drop per publish
            raise RuntimeError(
                f"the buffer holds {stats.queue_len} of {FULL_BUFFER} after {stats.dropped} "
                f"drops in {done} publishes"
            )
        return elapsed * n / done

    return run


# -- durable ---------------------------------------------------------------------------------------


def _stored_texts(msgs: Sequence[Message]) -> list[str]:
    """The JSON text the persistence plugin writes for each message (stamped as published)."""
    now = datetime.now(UTC)
    return [
        json.dumps(
            message_to_dict(Message(m.id, m.data, topic=TOPIC, time=now)), separators=(",", ":")
        )
        for m in msgs
    ]


def _open_cache(directory: Path) -> Any:
    """A diskcache Cache with the persistence plugin's durability settings.

    WAL with ``synchronous=NORMAL``, no eviction, no statistics or tag index - but diskcache's
    default culling (the plugin turns it off: its retention runs from its own index).
    """
    diskcache = importlib.import_module("diskcache")
    return diskcache.Cache(
        str(directory),
        eviction_policy="none",
        statistics=False,
        tag_index=False,
        sqlite_synchronous=1,
    )


def _mqkit_publish(*plugins: str) -> Run:
    def run(directory: Path, n: int) -> float:
        msgs = _messages(n)
        with Broker(_persistence_config(directory, *plugins)) as broker:
            publish = broker.publish
            t0 = start_clock()
            for m in msgs:
                publish(TOPIC, m)
            return stop_clock(t0)

    return in_temp_dir(run)


PUBLISHERS: Final = 8
"""Publisher threads of the concurrent durable publish case."""


def _mqkit_publish_threads(directory: Path, n: int) -> float:
    """PUBLISHERS threads, each publishing its share of ``n`` messages: wall time for all."""
    msgs = _messages(n)
    share = -(-n // PUBLISHERS)
    parts = [msgs[i : i + share] for i in range(0, n, share)]
    with Broker(_persistence_config(directory)) as broker:
        publish = broker.publish
        ready = threading.Barrier(len(parts) + 1)
        errors: list[BaseException] = []

        def publisher(part: list[Message]) -> None:
            try:
                ready.wait(_GENEROUS)
                for m in part:
                    publish(TOPIC, m)
            except BaseException as exc:  # reported by the case, not lost in a thread
                errors.append(exc)

        threads = [threading.Thread(target=publisher, args=(part,)) for part in parts]
        for thread in threads:
            thread.start()
        t0 = start_clock()
        ready.wait(_GENEROUS)
        _join(threads)
        elapsed = stop_clock(t0)
        if errors:
            raise errors[0]
        return elapsed


def _mqkit_publish_batch(directory: Path, n: int) -> float:
    batches = _chunks(_messages(n), BATCH)
    with Broker(_persistence_config(directory)) as broker:
        publish_batch = broker.publish_batch
        t0 = start_clock()
        for batch in batches:
            publish_batch(TOPIC, batch)
        return stop_clock(t0)


def _diskcache_set(directory: Path, n: int) -> float:
    texts = _stored_texts(_messages(n))
    cache = _open_cache(directory)
    try:
        cache_set = cache.set
        t0 = start_clock()
        for i, text in enumerate(texts):
            cache_set(i, text)
        return stop_clock(t0)
    finally:
        cache.close()


def _batched_set(directory: Path, n: int) -> float:
    texts = list(enumerate(_stored_texts(_messages(n))))
    batches = [texts[i : i + BATCH] for i in range(0, n, BATCH)]
    cache = _open_cache(directory)
    try:
        cache_set, transact = cache.set, cache.transact
        t0 = start_clock()
        for batch in batches:
            with transact():
                for i, text in batch:
                    cache_set(i, text)
        return stop_clock(t0)
    finally:
        cache.close()


def _sqlite_executemany(directory: Path, n: int) -> float:
    rows = list(enumerate(_stored_texts(_messages(n))))
    batches = [rows[i : i + BATCH] for i in range(0, n, BATCH)]
    con = sqlite3.connect(directory / "bench.db", isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        con.execute("CREATE TABLE messages (seq INTEGER PRIMARY KEY, value TEXT NOT NULL)")
        insert = "INSERT INTO messages (seq, value) VALUES (?, ?)"
        t0 = start_clock()
        for batch in batches:
            con.execute("BEGIN")
            con.executemany(insert, batch)
            con.execute("COMMIT")
        return stop_clock(t0)
    finally:
        con.close()


# -- ack round trip --------------------------------------------------------------------------------


def _ack_message(i: int) -> Message:
    return AckMessage(f"m-{i}", _payload(i))


def _ack_ttl_message(i: int) -> Message:
    return AckTTLMessage(f"m-{i}", _payload(i), expires_at=_FAR)


def _priority_message(i: int) -> Message:
    return PriorityMessage(f"m-{i}", _payload(i), priority=i % 5)


def _ttl_message(i: int) -> Message:
    return TTLMessage(f"m-{i}", _payload(i), expires_at=_FAR)


def _mqkit_ack(config: Callable[[Path], Config], durable: bool = False) -> Run:
    def run(directory: Path, n: int) -> float:
        return _plugin_case(lambda: config(directory), _ack_message, ack=True)(n)

    if durable:
        return in_temp_dir(run)
    return lambda n: run(Path(), n)


def _kombu(n: int) -> float:
    kombu = importlib.import_module("kombu")
    payloads = [{"id": m.id, "data": m.data} for m in _messages(n)]
    sinks, (handle,) = _handlers(1)
    tag = time.monotonic_ns()
    with kombu.Connection("memory://") as conn:
        channel = conn.channel()
        exchange = kombu.Exchange(f"x{tag}", type="direct", durable=False)
        bound = kombu.Queue(f"q{tag}", exchange=exchange, routing_key="k", durable=False)(channel)
        bound.declare()
        producer = kombu.Producer(channel, exchange=exchange, routing_key="k", serializer="json")
        publish, get = producer.publish, bound.get
        t0 = start_clock()
        for p in payloads:
            publish(p)
            message = get(no_ack=False, accept=["json"])
            handle(message.payload)
            message.ack()
        elapsed = stop_clock(t0)
    _check(sinks, n)
    return elapsed


def _persist_queue(where: str, synchronous: str = "") -> Run:
    """persist-queue's SQLiteAckQueue: put, get, ack (``where``: a directory or ``:memory:``).

    ``clear_acked_data(keep_latest=0)`` every 100 round trips, as its docs advise (acked rows
    stay otherwise, and each ``get`` scans them: 10x slower by 20,000 messages); every 100 with
    ``keep_latest=0`` was the fastest way to call it we found.
    """

    def run(directory: Path, n: int) -> float:
        pq = importlib.import_module("persistqueue")
        payloads = [{"id": m.id, "data": m.data} for m in _messages(n)]
        sinks, (handle,) = _handlers(1)
        q = pq.SQLiteAckQueue(":memory:" if where == ":memory:" else str(directory / "pq"))
        try:
            if synchronous:
                q._putter.execute(f"PRAGMA synchronous = {synchronous}")
                q._getter.execute(f"PRAGMA synchronous = {synchronous}")
            put, get, ack, clear = q.put, q.get, q.ack, q.clear_acked_data
            t0 = start_clock()
            for i, p in enumerate(payloads, 1):
                put(p)
                item = get(block=False)
                handle(item)
                ack(item)
                if not i % 100:  # acked rows pile up otherwise, and every get() scans them
                    clear(keep_latest=0)
            elapsed = stop_clock(t0)
        finally:
            q.close()
        _check(sinks, n)
        return elapsed

    if where == ":memory:":
        return lambda n: run(Path(), n)
    return in_temp_dir(run)


# -- the suite -------------------------------------------------------------------------------------

_MODULES: Final = {
    "pyee": "pyee.base",
    "blinker": "blinker",
    "pypubsub": "pubsub.pub",
    "aiopubsub": "aiopubsub",
    "janus": "janus",
    "kombu": "kombu",
    "persist-queue": "persistqueue",
    "diskcache": "diskcache",
}
"""The module each peer distribution is imported as."""


@attrs.define
class _Table:
    """Adds the cases of one table to a list (when its section is wanted)."""

    cases: list[BenchCase]
    wanted: set[str]
    section: str
    group: str
    messages: int
    quick_messages: int
    fanout: int = 1

    def add(self, kind: str, name: str, run: Run, note: str = "", **kw: Any) -> None:
        if self.section not in self.wanted:
            return
        dist = kw.get("dist", "")
        missing = f"{dist} not installed" if dist and _peer(_MODULES[dist]) is None else ""
        self.cases.append(
            BenchCase(
                group=self.group,
                name=name,
                run=run,
                fanout=self.fanout,
                section=self.section,
                kind=kind,
                note=note,
                messages=self.messages,
                quick_messages=self.quick_messages,
                missing=missing,
                **kw,
            )
        )

    def mqkit(self, name: str, run: Run, note: str = "", reference: bool = False) -> None:
        self.add("mqkit", name, run, note, reference=reference)

    def peer(self, dist: str, name: str, run: Run, note: str = "") -> None:
        self.add("peer", name, run, note, dist=dist)

    def stdlib(self, name: str, run: Run, note: str = "") -> None:
        self.add("stdlib", name, run, note)


def suite(groups: Sequence[str] | None = None) -> list[BenchCase]:
    """Every timed case of ``groups`` (default: all), in running order.

    ``memory`` is not timed: :func:`run_memory` measures it; of ``scaling``, only the full
    buffer table is timed here (:func:`run_scaling` measures the rest).
    """
    wanted = set(GROUPS if groups is None else groups)
    unknown = wanted - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown group(s) {sorted(unknown)}; known: {', '.join(GROUPS)}")
    cases: list[BenchCase] = []

    for f in (1, 10):
        t = _Table(cases, wanted, "core", f"1 -> {f}", 50_000, 5_000, f)
        t.mqkit("mqkit", _mqkit_get(f), "core, no plugins", reference=True)
        t.mqkit("mqkit, Broker() defaults", _mqkit_get(f, Config), "metrics, priority, ttl")
        t.peer("pyee", "pyee emit", _pyee(f))
        t.peer("blinker", "blinker send", _blinker(f), "weak=False")
        t.peer("pypubsub", "pypubsub sendMessage", _pypubsub(f))
        t.peer("aiopubsub", "aiopubsub sync listener", _aiopubsub_sync(f), "Hub.publish calls")
        t.stdlib("callback list", _callback_list(f), "for cb in cbs: cb(msg)")
        t.stdlib("queue.SimpleQueue", _simple_queue(f), "one per subscriber")

    # Typed handlers against the loops they replace: the messages are buffered first, the time
    # runs from the start of consumption until the last one was handled (bench_handlers.py).
    t = _Table(cases, wanted, "core", "handlers", 20_000, 2_000)
    t.mqkit(
        "get() loop",
        lambda n: get_loop(n, False),
        "what a sync handler replaces: a thread's sub.get() and the call",
        reference=True,
    )
    t.mqkit("handler, sync", lambda n: sync_handler(n, False), "@broker.subscriber, concurrency=1")
    t.mqkit("get() + ack loop", lambda n: get_loop(n, True), "AckMessage: get, call, ack")
    t.mqkit("handler, sync + ack", lambda n: sync_handler(n, True), "return = ack")
    t.mqkit("aget() loop", lambda n: aget_loop(n, False), "what an async handler replaces")
    t.mqkit("handler, async", lambda n: async_handler(n, False), "async def, concurrency=1")

    for f in (1, 10):
        n, quick = (50_000, 5_000) if f == 1 else (10_000, 1_000)
        t = _Table(cases, wanted, "cross-thread", f"threads 1 -> {f}", n, quick, f)
        blocking = f"buffer {BOUND}, BLOCK_WITH_TIMEOUT"
        t.mqkit("mqkit", _mqkit_threads(f, bounded=True), blocking, reference=True)
        t.mqkit("mqkit, unbounded buffer", _mqkit_threads(f, False), "buffer_size = messages")
        t.stdlib("queue.Queue per subscriber", _stdlib_threads(f, True), f"maxsize {BOUND}")
        t.stdlib("queue.SimpleQueue per subscriber", _stdlib_threads(f, False), "unbounded")

    for f in (1, 10):
        n, quick = (50_000, 5_000) if f == 1 else (10_000, 1_000)
        t = _Table(cases, wanted, "asyncio", f"asyncio 1 -> {f}", n, quick, f)
        t.mqkit("mqkit async for", _mqkit_async(f), f"same loop, buffer {BOUND}", reference=True)
        naive = f"naive broker, maxsize {BOUND}"
        t.stdlib("asyncio.Queue per subscriber", _asyncio_queues(f), naive)
        t.peer("aiopubsub", "aiopubsub consume", _aiopubsub_async(f), "unbounded queues")
        thread = "context: publisher thread"
        t.mqkit("mqkit thread -> async for", _mqkit_thread_to_async(f), thread)
        t.peer("janus", "janus thread -> async_q", _janus(f), thread)

    t = _Table(cases, wanted, "plugins", "plugins", 10_000, 2_000)
    limit = {"max_memory_usage": 1 << 30}
    every = {**limit, "message_ttl": LONG_TTL, "dead_letter_topic": "dead"}
    t.mqkit("core alone", _plugin_case(_config), reference=True)
    t.mqkit(
        "priority",
        _plugin_case(lambda: _config("priority"), _priority_message),
        "PriorityMessage",
    )
    t.mqkit("ttl", _plugin_case(lambda: _config("ttl"), _ttl_message), "TTLMessage")
    t.mqkit(
        f"ttl, message_ttl={LONG_TTL:g}",
        _plugin_case(lambda: _config("ttl", message_ttl=LONG_TTL)),
        "Message: each one gets a default expiry",
    )
    t.mqkit(
        "ack",
        _plugin_case(lambda: _config("ack"), _ack_message, ack=True),
        "AckMessage: publish, get, ack",
    )
    t.mqkit("metrics", _plugin_case(lambda: _config("metrics")))
    t.mqkit("memory", _plugin_case(lambda: _config("memory", **limit)), "a 1 GiB limit")
    t.mqkit("deadletter (idle)", _plugin_case(lambda: _config("deadletter", dead_letter_topic="d")))
    t.mqkit("transactions (idle)", _plugin_case(lambda: _config("transactions")))
    t.mqkit(
        "all in-memory, plain messages",
        _plugin_case(lambda: _config(*IN_MEMORY, **every)),
        f"{', '.join(IN_MEMORY)}; message_ttl={LONG_TTL:g}; Message",
    )
    t.mqkit(
        "all in-memory + ack",
        _plugin_case(lambda: _config(*IN_MEMORY, "ack", **every), _ack_ttl_message, ack=True),
        "the same and ack; AckTTLMessage: publish, get, ack",
    )
    t.mqkit("Broker() defaults", _plugin_case(Config), "metrics, priority, ttl")
    t.mqkit(
        "Broker() defaults + ack",
        _plugin_case(lambda: Config(enable_ack_support=True), _ack_message, ack=True),
        "AckMessage: publish, get, ack",
    )
    t.mqkit("persistence", _durable_get, "persistence alone: every message stored")

    t = _Table(cases, wanted, "scaling", "full buffer", 20_000, 2_000)
    full = f"{FULL_BUFFER:,} buffered, DROP_OLDEST; PriorityMessage, 5 levels"
    t.mqkit("FIFO buffer", _full_buffer(lambda: Config(enable_priority_queue=False)), full, True)
    t.mqkit("priority buffer", _full_buffer(Config), "Broker() defaults (priority on)")

    t = _Table(cases, wanted, "durable", "durable", 5_000, 1_000)
    t.mqkit("mqkit publish", _mqkit_publish(), "Broker() defaults + persistence", reference=True)
    t.mqkit(
        f"mqkit publish, {PUBLISHERS} threads",
        in_temp_dir(_mqkit_publish_threads),
        f"the same defaults; {PUBLISHERS} publisher threads, wall time for all",
    )
    t.mqkit(
        f"mqkit publish_batch ({BATCH})",
        in_temp_dir(_mqkit_publish_batch),
        "one store transaction per batch",
    )
    t.mqkit("mqkit publish, persistence alone", _mqkit_publish("persistence"), "context")
    t.peer(
        "diskcache",
        "diskcache Cache.set",
        in_temp_dir(_diskcache_set),
        "the plugin's durability settings and JSON text",
    )
    t.peer("diskcache", f"diskcache Cache.set, {BATCH} per transact()", in_temp_dir(_batched_set))
    t.stdlib(
        f"sqlite3 executemany ({BATCH}/commit)",
        in_temp_dir(_sqlite_executemany),
        "WAL, synchronous=NORMAL: the floor",
    )

    t = _Table(cases, wanted, "ack", "ack round trip, in memory", 20_000, 2_000)
    with_ack = "Broker() defaults + ack"
    t.mqkit("mqkit ack", _mqkit_ack(lambda _: Config(enable_ack_support=True)), with_ack, True)
    t.mqkit("mqkit ack, ack plugin alone", _mqkit_ack(lambda _: _config("ack")), "context")
    t.peer("kombu", "kombu memory://", _kombu, "Producer.publish, Queue.get, ack; json")
    cleared = "clear_acked_data every 100"
    t.peer("persist-queue", "persist-queue :memory:", _persist_queue(":memory:"), cleared)

    t = _Table(cases, wanted, "ack", "ack round trip, durable", 2_000, 150)
    t.mqkit(
        "mqkit durable ack",
        _mqkit_ack(lambda d: _persistence_config(d, enable_ack_support=True), durable=True),
        "Broker() defaults + ack + persistence",
        reference=True,
    )
    t.mqkit(
        "mqkit durable ack, ack + persistence alone",
        _mqkit_ack(lambda d: _persistence_config(d, "ack", "persistence"), durable=True),
        "context",
    )
    t.peer(
        "persist-queue",
        "persist-queue SQLiteAckQueue",
        _persist_queue("dir"),
        "its defaults (WAL, synchronous=FULL); clear_acked_data every 100",
    )
    t.peer(
        "persist-queue",
        "persist-queue SQLiteAckQueue, synchronous=NORMAL",
        _persist_queue("dir", "NORMAL"),
        "synchronous=NORMAL, as mqkit's store; clear_acked_data every 100",
    )
    return cases


# -- memory ----------------------------------------------------------------------------------------


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _buffered_bytes(kind: str, n: int) -> MemoryResult:
    """Bytes per buffered message (100-byte payload), measured with tracemalloc.

    ``total``: what the buffered messages hold once the publisher dropped its own references
    (the message objects, their ids and payloads, and the container's share); ``message``:
    what the publisher's message objects alone take; ``overhead``: the difference.
    """
    tracemalloc.start()
    try:
        broker: Broker | None = None
        holder: Any
        put: Callable[[Message], None]
        if kind == "queue.SimpleQueue":
            holder = queue.SimpleQueue()
            put = holder.put
        elif kind == STAMPED:
            # The objects an mqkit subscription buffers: each message goes through a core
            # broker's subscription (published, taken at once) into the SimpleQueue.
            holder = queue.SimpleQueue()
            broker = Broker(_config())
            through = broker.subscribe(TOPIC, SubOptions(buffer_size=n))
            publish, take, hold = broker.publish, through.get_nowait, holder.put

            def put(m: Message) -> None:
                publish(TOPIC, m)
                hold(take())

        else:
            broker = Broker(_config() if kind == "mqkit" else Config())
            holder = broker.subscribe(TOPIC, SubOptions(buffer_size=n))
            put = functools.partial(broker.publish, TOPIC)

        base = _traced()
        msgs = [Message(f"m-{i:07d}", b"%0100d" % i) for i in range(n)]
        made = _traced() - base - sys.getsizeof(msgs)
        for m in msgs:
            put(m)
        del msgs
        total = _traced() - base
        count = holder.qsize() if kind.startswith("queue.") else holder.stats().queue_len
        if count != n:
            raise RuntimeError(f"{kind} holds {count} of {n} messages")
        if broker is not None:
            broker.close()
    finally:
        tracemalloc.stop()
    return MemoryResult(
        table="buffered",
        name=kind,
        kind="stdlib" if kind.startswith("queue.") else "mqkit",
        messages=n,
        value=total / n,
        detail={"message": made / n, "overhead": (total - made) / n},
    )


def _rss_child(kind: str, n: int) -> None:
    """In a child process: pass n messages through a 10-subscriber topic; print the RSS."""
    import resource

    counts = [0] * RSS_SUBSCRIBERS
    handlers: list[Callable[[Any], None]] = []
    for i in range(RSS_SUBSCRIBERS):

        def handle(message: Any, i: int = i) -> None:  # counts: keeps nothing alive
            counts[i] += 1

        handlers.append(handle)
    step = 1000
    broker: Broker | None = None
    gets: list[Callable[[], Any]]
    if kind == "queue.SimpleQueue":
        queues: list[queue.SimpleQueue[Message]] = [
            queue.SimpleQueue() for _ in range(RSS_SUBSCRIBERS)
        ]
        puts = [q.put for q in queues]

        def publish(m: Message) -> None:
            for put in puts:
                put(m)

        gets = [q.get for q in queues]
    else:
        broker = Broker(_config() if kind == "mqkit" else Config())
        subs = [
            broker.subscribe(TOPIC, SubOptions(buffer_size=step)) for _ in range(RSS_SUBSCRIBERS)
        ]
        gets = [s.get for s in subs]
        broker_publish = broker.publish

        def publish(m: Message) -> None:
            broker_publish(TOPIC, m)

    pairs = list(zip(gets, handlers, strict=True))
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    every = max(step, n // RSS_SAMPLES)
    samples: list[int] = []
    due = every
    t0 = time.perf_counter()
    for first in range(0, n, step):
        for i in range(first, min(first + step, n)):
            publish(Message(f"m-{i}", b"%0100d" % i))
        for get, deliver in pairs:
            for _ in range(min(step, n - first)):
                deliver(get())
        done = min(first + step, n)
        if done >= due or done == n:
            samples.append(_vm_rss())
            due += every
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if broker is not None:
        broker.close()
    if counts != [n] * RSS_SUBSCRIBERS:
        raise RuntimeError(f"delivered {counts}, expected {n} each")
    result = {
        "start_kib": start,
        "peak_kib": peak,
        "vm_hwm_kib": _vm_hwm(),
        "samples_kib": samples,
        "seconds": elapsed,
    }
    print(json.dumps(result))


def _proc_status(field: str) -> int:
    """A ``kB`` field of /proc/self/status (0 where there is none)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _vm_hwm() -> int:
    """The peak RSS of this process in KiB, from /proc/self/status (0 where there is none)."""
    return _proc_status("VmHWM:")


def _vm_rss() -> int:
    """The RSS of this process now, in KiB (the peak where /proc/self/status is missing)."""
    import resource

    return _proc_status("VmRSS:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss(kind: str, n: int) -> MemoryResult:
    """Run :func:`_rss_child` in a fresh process; its peak RSS growth.

    Linux keeps ``ru_maxrss`` across ``fork`` and ``exec``: a child started by this (large)
    process would report our peak as its own. So the child is started by ``/bin/sh``, which
    forks it from its own small image, and ``ru_maxrss`` is the child's (VmHWM cross-checks).
    """
    code = f"from cases import _rss_child; _rss_child({kind!r}, {n})"
    data = in_child(code, timeout=900)
    start, peak = data["start_kib"] * 1024, data["peak_kib"] * 1024
    samples = data["samples_kib"]
    return MemoryResult(
        table="rss",
        name=kind,
        kind="stdlib" if kind.startswith("queue.") else "mqkit",
        messages=n,
        value=peak - start,
        detail={
            "start": start,
            "peak": peak,
            "vm_hwm": data["vm_hwm_kib"] * 1024,
            "first": samples[0] * 1024,
            "last": samples[-1] * 1024,
            "seconds": data["seconds"],
        },
    )


MEMORY_CASES: Final = (
    ("buffered", "mqkit"),
    ("buffered", "mqkit, Broker() defaults"),
    ("buffered", STAMPED),
    ("buffered", "queue.SimpleQueue"),
    ("rss", "mqkit"),
    ("rss", "mqkit, Broker() defaults"),
    ("rss", "queue.SimpleQueue"),
)
"""The memory measurements :func:`run_memory` makes, as (table, case)."""


def run_memory(
    messages: int | None = None,
    *,
    quick: bool = False,
    on_run: Callable[[str], None] | None = None,
) -> list[MemoryResult]:
    """Bytes per buffered message and peak RSS (each measured once: they do not vary).

    ``messages`` sets both counts; by default 100,000 buffered messages (quick: 20,000) and
    1,000,000 messages through the topic (quick: 50,000).
    """
    out: list[MemoryResult] = []
    for table, kind in MEMORY_CASES:
        if table == "buffered":
            n = messages or (20_000 if quick else 100_000)
        else:
            n = messages or (RSS_QUICK_MESSAGES if quick else RSS_MESSAGES)
        try:
            result = _buffered_bytes(kind, n) if table == "buffered" else _peak_rss(kind, n)
        except Exception as exc:
            result = MemoryResult(
                table=table,
                name=kind,
                kind="mqkit",
                messages=n,
                value=math.nan,
                status=f"failed: {type(exc).__name__}: {exc}"[:200],
            )
        out.append(result)
        if on_run is not None:
            on_run(kind)
    return out


SCALING_CASES: Final = (
    ("core alone", "mqkit", "no plugins"),
    ("Broker() defaults", "mqkit", "metrics, priority, ttl"),
    ("priority", "mqkit", "PriorityMessage, 5 levels"),
    (f"ttl, message_ttl={LONG_TTL:g}", "mqkit", "a sweep every second"),
    ("metrics", "mqkit", ""),
    ("memory", "mqkit", "a 1 TiB limit"),
    ("deadletter", "mqkit", "idle"),
    ("transactions", "mqkit", "idle"),
    ("ack", "mqkit", "AckMessage; a get is get + ack"),
    ("queue.SimpleQueue", "stdlib", "one per subscriber: the floor"),
)
"""The rows of the scaling table: (configuration, kind, note)."""


def _small_message(i: int) -> Message:
    return Message(f"m-{i}", b"payload")


def _small_ack_message(i: int) -> Message:
    return AckMessage(f"m-{i}", b"payload")


def _scaling_setup(name: str) -> tuple[Config | None, Callable[[int], Message], bool]:
    """The config (None: the SimpleQueue floor), the message maker and whether to ack."""
    setups: dict[str, tuple[Callable[[], Config | None], Callable[[int], Message], bool]] = {
        "core alone": (_config, _small_message, False),
        "Broker() defaults": (Config, _small_message, False),
        "priority": (lambda: _config("priority"), _mixed_priority, False),
        f"ttl, message_ttl={LONG_TTL:g}": (
            lambda: _config("ttl", message_ttl=LONG_TTL),
            _small_message,
            False,
        ),
        "metrics": (lambda: _config("metrics"), _small_message, False),
        "memory": (lambda: _config("memory", max_memory_usage=1 << 40), _small_message, False),
        "deadletter": (
            lambda: _config("deadletter", dead_letter_topic="dead"),
            _small_message,
            False,
        ),
        "transactions": (lambda: _config("transactions"), _small_message, False),
        "ack": (lambda: _config("ack"), _small_ack_message, True),
        "queue.SimpleQueue": (lambda: None, _small_message, False),
    }
    config, make, ack = setups[name]
    return config(), make, ack


def _buffered_count(sub: Any) -> int:
    count: int = sub.stats().queue_len
    return count


def _scaling_level(
    name: str, level: int, batch: int, seconds: float, budget: float
) -> dict[str, float]:
    """Fill 10 subscriptions to ``level``, then time publishes and gets at that level.

    The fill (``publish_batch`` of 1,000 at a time) is outside the clock and stops after
    ``budget`` seconds. Then, for at least ``seconds`` (and 3 cycles), each cycle publishes
    ``batch`` messages (timed) and takes ``batch`` from each subscription (timed), so the
    level stays where the fill left it. Whatever runs meanwhile on the broker's timer thread
    (the ttl sweep) takes its time from the clocks it overlaps: the cycles fill the wall time
    but for building each batch's messages.

    The cyclic garbage collector is off during the cycles, as ``timeit`` does: with a million
    messages held, a full collection walks them all, whatever holds them (it would land in
    some windows and not others); what is measured is the broker's own work.
    """
    config, make, ack = _scaling_setup(name)
    subscribers = SCALING_SUBSCRIBERS
    clock = time.perf_counter
    broker: Broker | None = None
    if config is None:
        queues: list[queue.SimpleQueue[Message]] = [queue.SimpleQueue() for _ in range(subscribers)]
        puts = [q.put for q in queues]
        gets: list[Callable[[], Any]] = [q.get_nowait for q in queues]
        counts: list[Callable[[], int]] = [q.qsize for q in queues]
    else:
        broker = Broker(config)
        opts = SubOptions(buffer_size=level + 2 * batch)
        subs = [broker.subscribe(TOPIC, opts) for _ in range(subscribers)]
        gets = [s.get_nowait for s in subs]
        acks = [s.ack for s in subs]
        counts = [functools.partial(_buffered_count, s) for s in subs]
    try:
        filled, started = 0, clock()
        while filled < level and clock() - started < budget:
            chunk = [make(i) for i in range(filled, min(filled + 1000, level))]
            if broker is None:
                for m in chunk:
                    for put in puts:
                        put(m)
            else:
                broker.publish_batch(TOPIC, chunk)
            filled += len(chunk)
        fill_seconds = clock() - started
        gc.collect()
        gc.disable()  # as timeit does: see the docstring
        published = took = 0.0
        cycles, start, next_id = 0, clock(), filled
        while cycles < 3 or clock() - start < seconds:
            msgs = [make(i) for i in range(next_id, next_id + batch)]
            next_id += batch
            t0 = clock()
            if broker is None:
                for m in msgs:
                    for put in puts:
                        put(m)
            else:
                publish = broker.publish
                for m in msgs:
                    publish(TOPIC, m)
            t1 = clock()
            if ack:
                for get, acknowledge in zip(gets, acks, strict=True):
                    for _ in range(batch):
                        acknowledge(get().ack_id)
            else:
                for get in gets:
                    for _ in range(batch):
                        get()
            t2 = clock()
            published += t1 - t0
            took += t2 - t1
            cycles += 1
        held = [count() for count in counts]
        if held != [filled] * subscribers:
            raise RuntimeError(f"the subscriptions hold {held}, expected {filled} each")
    finally:
        gc.enable()
        if broker is not None:
            broker.close()
    return {
        "level": filled,
        "fill_seconds": fill_seconds,
        "cycles": cycles,
        "publish_us": published / (cycles * batch) * 1e6,
        "get_us": took / (cycles * batch * subscribers) * 1e6,
    }


def _scaling_child(name: str, level: int, batch: int, seconds: float, budget: float) -> None:
    """In a child process: one level of one configuration (:func:`_scaling_level`); print JSON.

    Each level runs in a process of its own: a broker's timer thread may still be finishing a
    sweep of a million messages after ``close()``, and it must not run beside the next level's
    measurement (nor the memory of a million messages linger).
    """
    t0 = time.perf_counter()
    out: dict[str, Any] = dict(_scaling_level(name, level, batch, seconds, budget))
    out["vm_hwm_kib"] = _vm_hwm()
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out))


def _scaling_params(messages: int | None, quick: bool) -> tuple[tuple[int, int], int, float, float]:
    """(levels, batch, seconds per level, fill budget) of a run."""
    if messages:
        return (messages, 100 * messages), max(1, min(1000, messages // 10)), 0.0, 20.0
    if quick:
        return SCALING_QUICK_LEVELS, 100, 1.1, 20.0
    return SCALING_LEVELS, 1000, 2.5, 60.0


def run_scaling(
    messages: int | None = None,
    *,
    quick: bool = False,
    on_run: Callable[[str], None] | None = None,
) -> list[ScalingResult]:
    """The scaling table: per configuration, publish and get cost at a small and a large level.

    Each level of each configuration runs in a child process of its own (the large level
    holds a million messages in each of 10 subscriptions: the memory goes back with the
    process, and no timer thread outlives its level). Levels: 10,000 and 1,000,000 (quick:
    1,000 and 100,000; ``messages``: m and 100 m); the small level is measured before and
    after the large one and averaged (quick: before only).
    """
    levels, batch, seconds, budget = _scaling_params(messages, quick)
    out: list[ScalingResult] = []
    for name, kind, note in SCALING_CASES:
        small, large_level = levels
        # The small level before and after the large one (quick: before only): a machine whose
        # speed drifts tilts the ratio less.
        order = (small, large_level) if quick else (small, large_level, small)
        try:
            runs = []
            for level in order:
                args = f"{name!r}, {level}, {batch}, {seconds}, {budget}"
                code = f"from cases import _scaling_child; _scaling_child({args})"
                runs.append(in_child(code, timeout=budget + 10 * seconds + 300))
            small1, large, *again = runs
            small2 = again[0] if again else small1
            result = ScalingResult(
                name=name,
                kind=kind,
                note=note,
                levels=levels,
                reached=(int(small1["level"]), int(large["level"])),
                publish=((small1["publish_us"] + small2["publish_us"]) / 2, large["publish_us"]),
                get=((small1["get_us"] + small2["get_us"]) / 2, large["get_us"]),
                peak_rss=max(run["vm_hwm_kib"] for run in runs) * 1024,
                seconds=sum(run["seconds"] for run in runs),
            )
        except Exception as exc:
            result = ScalingResult(
                name=name,
                kind=kind,
                note=note,
                levels=levels,
                status=f"failed: {type(exc).__name__}: {exc}"[:200],
            )
        out.append(result)
        if on_run is not None:
            on_run(name)
    return out
