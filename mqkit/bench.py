"""The benchmark suite: mqkit against the libraries users know, in one process run.

``mqkit bench`` (rich tables and a chart) and ``python benchmarks/run.py`` (Markdown) both run
it. The cases are organised in groups (:data:`GROUPS`); each group has one or more tables, and
the cases of a table run interleaved: every round runs each case of the table once (the order
rotates from round to round), and the table reports the median of the rounds. A ratio is the
median of the per-round ratios of two cases of the same table (:func:`paired_ratio`): compare
cases of one run, never numbers across runs - on a shared machine absolute numbers drift.

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
import contextlib
import cProfile
import functools
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import queue
import shutil
import sqlite3
import statistics
import subprocess
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

from mqkit.core.broker import Broker
from mqkit.core.config import Config
from mqkit.core.message import AckMessage, AckTTLMessage, Message, PriorityMessage, TTLMessage
from mqkit.core.plugins import builtin_plugins, info_of
from mqkit.core.subscription import Backpressure, SubOptions
from mqkit.plugins.persistence.serializer import message_to_dict

__all__ = [
    "GROUPS",
    "PEERS",
    "TARGETS",
    "BenchCase",
    "BenchResult",
    "MemoryResult",
    "ReportTable",
    "ScalingResult",
    "Target",
    "TargetResult",
    "evaluate_targets",
    "machine_info",
    "markdown",
    "memory_tables",
    "paired_ratio",
    "profile_case",
    "run_memory",
    "run_scaling",
    "run_suite",
    "scaling_tables",
    "suite",
    "target_table",
    "timing_tables",
    "to_json",
    "write_chart",
]

Run = Callable[[int], float]
"""Run a case over n messages; return the elapsed seconds (set-up and checks not counted)."""

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


# -- cases and results -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BenchCase:
    """One measured case: the table it belongs to, its name, and how to run it."""

    group: str
    """The table: the cases of a table run interleaved, round by round."""
    name: str
    run: Run = attrs.field(repr=False)
    fanout: int = 1
    section: str = "core"
    """The group of :data:`GROUPS` (what ``--group`` selects)."""
    kind: str = "mqkit"
    """``mqkit``, ``peer`` (a third-party library) or ``stdlib`` (a baseline)."""
    reference: bool = False
    """The mqkit case the table's ratios are taken against."""
    dist: str = ""
    """The peer's distribution name."""
    note: str = ""
    messages: int = 20_000
    """Messages per run in a full run."""
    quick_messages: int = 3_000
    """Messages per run with ``quick``."""
    missing: str = ""
    """Why the case cannot run (``"kombu not installed"``); empty when it can."""


@attrs.frozen(kw_only=True)
class BenchResult:
    """The median of a case's rounds (or why there is none)."""

    group: str
    name: str
    messages: int
    fanout: int
    seconds: float
    """Median elapsed seconds for ``messages`` messages (NaN when the case did not run)."""
    section: str = "core"
    kind: str = "mqkit"
    reference: bool = False
    dist: str = ""
    note: str = ""
    samples: tuple[float, ...] = ()
    """Every round's elapsed seconds."""
    status: str = "ok"
    """``ok``, ``not installed`` or ``failed: ...``."""

    @property
    def ok(self) -> bool:
        """Whether the case ran."""
        return self.status == "ok"

    @property
    def rate(self) -> float:
        """Messages published per second."""
        if not self.ok:
            return math.nan
        return self.messages / self.seconds if self.seconds > 0 else math.inf

    @property
    def deliveries(self) -> float:
        """Messages delivered per second (``rate`` x subscribers)."""
        return self.rate * self.fanout

    @property
    def micros(self) -> float:
        """Microseconds per message."""
        return self.seconds / self.messages * 1e6 if self.ok else math.nan

    @property
    def spread(self) -> float:
        """(slowest - fastest round) / median, as a fraction: how noisy the rounds were."""
        if not self.ok or len(self.samples) < 2:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.seconds


@attrs.frozen(kw_only=True)
class MemoryResult:
    """A memory measurement: bytes per buffered message, or a child process's peak RSS."""

    table: str
    """``buffered`` (bytes per buffered message) or ``rss`` (peak RSS)."""
    name: str
    kind: str
    messages: int
    value: float
    """Bytes per buffered message, or the peak RSS growth in bytes."""
    detail: dict[str, float] = attrs.field(factory=dict)
    note: str = ""
    status: str = "ok"


# -- helpers ---------------------------------------------------------------------------------------


def _peer(module: str) -> Any:
    """Import a peer's module; None when it is not installed (or fails to import)."""
    try:
        return importlib.import_module(module)
    except Exception:
        return None


def _config(*plugins: str, **fields: Any) -> Config:
    """A config that loads exactly the named built-in plugins (as ``mqkit.testing``)."""
    cfg = Config(**fields)
    changes: dict[str, Any] = {}
    disabled = set(cfg.disable_plugins)
    for name, target in builtin_plugins().items():
        info = info_of(target)
        if info is None:
            continue
        if info.flag is not None:
            changes[info.flag] = name in plugins
        if name in plugins:
            disabled.discard(name)
        elif info.default or info.enabled is not None:
            disabled.add(name)
    return cfg.replace(
        **changes, plugins=tuple(sorted(plugins)), disable_plugins=tuple(sorted(disabled))
    )


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


def _in_temp_dir(run: Callable[[Path, int], float]) -> Run:
    """A durable case: runs in a fresh directory, removed afterwards."""

    def wrapped(n: int) -> float:
        directory = Path(tempfile.mkdtemp(prefix="mqkit-bench-"))
        try:
            return run(directory, n)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    return wrapped


def _in_child(code: str, timeout: float) -> dict[str, Any]:
    """Run ``code`` in a fresh Python started through ``/bin/sh``; parse its last line as JSON.

    Linux keeps ``ru_maxrss`` across ``fork`` and ``exec``: a child started by this (large)
    process would report our peak as its own. ``/bin/sh`` forks it from its own small image.
    """
    command = [sys.executable, "-c", code]
    if os.path.exists("/bin/sh"):
        command = ["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, code]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data


_profiler: cProfile.Profile | None = None
"""While :func:`profile_case` runs: the profiler the timed part of a case switches on."""


def _start() -> float:
    """Start the clock of a case's timed part (and the profiler, when profiling)."""
    if _profiler is not None:
        _profiler.enable()
    return time.perf_counter()


def _stop(t0: float) -> float:
    """Stop the clock started at ``t0``; return the elapsed seconds."""
    elapsed = time.perf_counter() - t0
    if _profiler is not None:
        _profiler.disable()
    return elapsed


def profile_case(case: BenchCase, messages: int) -> cProfile.Profile:
    """Run ``case`` once under cProfile, profiling only its timed part (in this thread).

    Consumer threads of the cross-thread cases are not profiled: only the publisher is.
    """
    global _profiler
    profiler = cProfile.Profile()
    _profiler = profiler
    try:
        case.run(messages)
    finally:
        _profiler = None
    return profiler


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
            t0 = _start()
            for m in msgs:
                publish(TOPIC, m)
                for get, handle in pairs:
                    handle(get())
            elapsed = _stop(t0)
        _check(sinks, n)
        return elapsed

    return run


def _callback_list(fanout: int) -> Run:
    def run(n: int) -> float:
        msgs = _messages(n)
        sinks, handlers = _handlers(fanout)
        t0 = _start()
        for m in msgs:
            for handle in handlers:
                handle(m)
        elapsed = _stop(t0)
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
        t0 = _start()
        for m in msgs:
            for put in puts:
                put(m)
            for get, handle in pairs:
                handle(get())
        elapsed = _stop(t0)
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
        t0 = _start()
        for m in msgs:
            emit(TOPIC, m)
        elapsed = _stop(t0)
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
        t0 = _start()
        for m in msgs:
            send(None, msg=m)
        elapsed = _stop(t0)
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
            t0 = _start()
            for m in msgs:
                send(topic, message=m)
            elapsed = _stop(t0)
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
        t0 = _start()
        for m in msgs:
            publish(key, m)
        elapsed = _stop(t0)
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
            t0 = _start()
            for m in msgs:
                publish(TOPIC, m)
            _join(threads)
            elapsed = _stop(t0)
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
        t0 = _start()
        for m in msgs:
            for put in puts:
                put(m)
        _join(threads)
        elapsed = _stop(t0)
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
                t0 = _start()
                for chunk in chunks:
                    for m in chunk:
                        publish(TOPIC, m)
                    await asyncio.sleep(0)
                if any(s.stats().dropped for s in subs):
                    for task in tasks:
                        task.cancel()
                    raise RuntimeError("mqkit dropped messages: the consumers fell behind")
                await asyncio.wait_for(asyncio.gather(*tasks), _GENEROUS)
                return _stop(t0)

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
            t0 = _start()
            for chunk in chunks:
                for m in chunk:
                    for q in queues:
                        await q.put(m)
                await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.gather(*tasks), _GENEROUS)
            return _stop(t0)

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
            t0 = _start()
            for chunk in chunks:
                for m in chunk:
                    publish(key, m)
                await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.gather(*tasks), _GENEROUS)
            return _stop(t0)

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
                t0 = _start()
                go.set()
                await asyncio.wait_for(asyncio.gather(*tasks), _GENEROUS)
                elapsed = _stop(t0)
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
            t0 = _start()
            go.set()
            await asyncio.wait_for(asyncio.gather(*tasks), _GENEROUS)
            elapsed = _stop(t0)
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
            t0 = _start()
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
            elapsed = _stop(t0)
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
            t0 = _start()
            for m in msgs:
                publish(TOPIC, m)
                done += 1
                if not done & 7 and clock() - t0 > limit:
                    break
            elapsed = _stop(t0)
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
            t0 = _start()
            for m in msgs:
                publish(TOPIC, m)
            return _stop(t0)

    return _in_temp_dir(run)


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
        t0 = _start()
        ready.wait(_GENEROUS)
        _join(threads)
        elapsed = _stop(t0)
        if errors:
            raise errors[0]
        return elapsed


def _mqkit_publish_batch(directory: Path, n: int) -> float:
    batches = _chunks(_messages(n), BATCH)
    with Broker(_persistence_config(directory)) as broker:
        publish_batch = broker.publish_batch
        t0 = _start()
        for batch in batches:
            publish_batch(TOPIC, batch)
        return _stop(t0)


def _diskcache_set(directory: Path, n: int) -> float:
    texts = _stored_texts(_messages(n))
    cache = _open_cache(directory)
    try:
        cache_set = cache.set
        t0 = _start()
        for i, text in enumerate(texts):
            cache_set(i, text)
        return _stop(t0)
    finally:
        cache.close()


def _batched_set(directory: Path, n: int) -> float:
    texts = list(enumerate(_stored_texts(_messages(n))))
    batches = [texts[i : i + BATCH] for i in range(0, n, BATCH)]
    cache = _open_cache(directory)
    try:
        cache_set, transact = cache.set, cache.transact
        t0 = _start()
        for batch in batches:
            with transact():
                for i, text in batch:
                    cache_set(i, text)
        return _stop(t0)
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
        t0 = _start()
        for batch in batches:
            con.execute("BEGIN")
            con.executemany(insert, batch)
            con.execute("COMMIT")
        return _stop(t0)
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
        return _in_temp_dir(run)
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
        t0 = _start()
        for p in payloads:
            publish(p)
            message = get(no_ack=False, accept=["json"])
            handle(message.payload)
            message.ack()
        elapsed = _stop(t0)
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
            t0 = _start()
            for i, p in enumerate(payloads, 1):
                put(p)
                item = get(block=False)
                handle(item)
                ack(item)
                if not i % 100:  # acked rows pile up otherwise, and every get() scans them
                    clear(keep_latest=0)
            elapsed = _stop(t0)
        finally:
            q.close()
        _check(sinks, n)
        return elapsed

    if where == ":memory:":
        return lambda n: run(Path(), n)
    return _in_temp_dir(run)


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
        _in_temp_dir(_mqkit_publish_threads),
        f"the same defaults; {PUBLISHERS} publisher threads, wall time for all",
    )
    t.mqkit(
        f"mqkit publish_batch ({BATCH})",
        _in_temp_dir(_mqkit_publish_batch),
        "one store transaction per batch",
    )
    t.mqkit("mqkit publish, persistence alone", _mqkit_publish("persistence"), "context")
    t.peer(
        "diskcache",
        "diskcache Cache.set",
        _in_temp_dir(_diskcache_set),
        "the plugin's durability settings and JSON text",
    )
    t.peer("diskcache", f"diskcache Cache.set, {BATCH} per transact()", _in_temp_dir(_batched_set))
    t.stdlib(
        f"sqlite3 executemany ({BATCH}/commit)",
        _in_temp_dir(_sqlite_executemany),
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


def _result(case: BenchCase, messages: int, samples: list[float], status: str) -> BenchResult:
    return BenchResult(
        group=case.group,
        name=case.name,
        messages=messages,
        fanout=case.fanout,
        seconds=statistics.median(samples) if samples and status == "ok" else math.nan,
        section=case.section,
        kind=case.kind,
        reference=case.reference,
        dist=case.dist,
        note=case.note,
        samples=tuple(samples),
        status=status,
    )


def run_suite(
    cases: Sequence[BenchCase],
    messages: int | None = None,
    rounds: int = 7,
    on_run: Callable[[BenchCase], None] | None = None,
    *,
    quick: bool = False,
    warmup: bool = True,
) -> list[BenchResult]:
    """Run every case ``rounds`` times, interleaved within its table; return the medians.

    ``messages`` sets every case's message count (default: each case's own, its
    ``quick_messages`` with ``quick``). Each round runs every case of a table once, starting
    one case later than the round before. A case whose peer is not installed is reported as
    such, one that raises as ``failed: ...``; neither stops the suite. ``on_run(case)`` is
    called after each run (for progress displays).
    """
    tables: dict[str, list[BenchCase]] = {}
    for case in cases:
        tables.setdefault(case.group, []).append(case)
    out: dict[int, BenchResult] = {}
    for members in tables.values():
        counts = {id(c): messages or (c.quick_messages if quick else c.messages) for c in members}
        samples: dict[int, list[float]] = {id(c): [] for c in members}
        status = {id(c): "not installed" if c.missing else "ok" for c in members}
        if warmup:
            for c in members:
                if status[id(c)] == "ok":
                    try:
                        c.run(min(counts[id(c)], 50))
                    except Exception as exc:
                        status[id(c)] = f"failed: {type(exc).__name__}: {exc}"[:200]
        for r in range(rounds):
            k = r % len(members)
            for c in members[k:] + members[:k]:
                if status[id(c)] == "ok":
                    gc.collect()
                    try:
                        samples[id(c)].append(c.run(counts[id(c)]))
                    except Exception as exc:
                        status[id(c)] = f"failed: {type(exc).__name__}: {exc}"[:200]
                if on_run is not None:
                    on_run(c)
        for c in members:
            out[id(c)] = _result(c, counts[id(c)], samples[id(c)], status[id(c)])
    return [out[id(c)] for c in cases]


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
    code = f"from mqkit.bench import _rss_child; _rss_child({kind!r}, {n})"
    data = _in_child(code, timeout=900)
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


# -- scaling: the cost per message with many messages buffered ------------------------------------


@attrs.frozen(kw_only=True)
class ScalingResult:
    """One row of the scaling table: publish and get cost at a small and a large level."""

    name: str
    kind: str
    note: str = ""
    levels: tuple[int, int]
    """The messages meant to be buffered in each subscription: (small, large)."""
    reached: tuple[int, int] = (0, 0)
    """The levels measured at (a fill that outlasts its budget stops early)."""
    publish: tuple[float, float] = (math.nan, math.nan)
    """µs per publish (one message into each of the subscriptions), at each level."""
    get: tuple[float, float] = (math.nan, math.nan)
    """µs per get (one message out of one subscription; with ack, get and ack)."""
    peak_rss: float = math.nan
    """The largest peak resident set of the child processes, in bytes."""
    seconds: float = math.nan
    """The child processes' wall time, added up."""
    status: str = "ok"

    @property
    def ok(self) -> bool:
        """Whether the configuration was measured."""
        return self.status == "ok"

    @property
    def complete(self) -> bool:
        """Whether the large level was reached (not cut short by the fill budget)."""
        return self.ok and self.reached[1] >= self.levels[1]

    @property
    def ratios(self) -> tuple[float, float]:
        """Large over small, for publish and for get."""
        if not self.ok:
            return math.nan, math.nan
        return self.publish[1] / self.publish[0], self.get[1] / self.get[0]

    @property
    def ratio(self) -> float:
        """The larger of the two large/small ratios: what the flat-cost bar applies to."""
        return max(self.ratios)


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
                code = f"from mqkit.bench import _scaling_child; _scaling_child({args})"
                runs.append(_in_child(code, timeout=budget + 10 * seconds + 300))
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


# -- targets ---------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Target:
    """A ratio measured in one run, and the bar it should reach.

    ``source`` says what the ratio is of: ``rates`` (msgs/s of two timed cases of one table,
    paired round by round), ``bytes`` (bytes per buffered message of two memory cases),
    ``rss`` (a memory case's RSS at the end over its RSS after the first tenth; ``against``
    is empty) or ``scaling`` (a scaling row's large/small cost; ``against`` is empty).
    """

    name: str
    case: tuple[str, str]
    """(table, case) of the numerator: an mqkit case (a scaling row: ``("scaling", name)``)."""
    against: tuple[tuple[str, str], ...] = ()
    """(table, case) candidates of the denominator: the fastest that ran counts."""
    bar: float
    most: bool = False
    """The bar is a ceiling (the ratio must stay at or below it), not a floor."""
    source: str = "rates"


@attrs.frozen(kw_only=True)
class TargetResult:
    """A target's measured ratio and verdict."""

    target: Target
    ratio: float
    against: str
    """The denominator case the ratio was taken against."""
    status: str
    """``met``, ``not met``, ``not installed`` or ``not run``."""


TARGETS: Final = (
    Target(
        name="Broker() defaults vs core alone, 1 -> 1",
        case=("1 -> 1", "mqkit, Broker() defaults"),
        against=(("1 -> 1", "mqkit"),),
        bar=0.9,
    ),
    Target(
        name="Broker() defaults vs core alone, 1 -> 10",
        case=("1 -> 10", "mqkit, Broker() defaults"),
        against=(("1 -> 10", "mqkit"),),
        bar=0.9,
    ),
    Target(
        name="Broker() defaults vs pyee emit, 1 -> 1",
        case=("1 -> 1", "mqkit, Broker() defaults"),
        against=(("1 -> 1", "pyee emit"),),
        bar=0.65,
    ),
    Target(
        name="Broker() defaults vs pyee emit, 1 -> 10",
        case=("1 -> 10", "mqkit, Broker() defaults"),
        against=(("1 -> 10", "pyee emit"),),
        bar=0.45,
    ),
    Target(
        name="cross-thread 1 -> 1 vs queue.Queue per subscriber",
        case=("threads 1 -> 1", "mqkit"),
        against=(("threads 1 -> 1", "queue.Queue per subscriber"),),
        bar=1.0,
    ),
    Target(
        name="asyncio consumer vs naive asyncio.Queue broker",
        case=("asyncio 1 -> 1", "mqkit async for"),
        against=(("asyncio 1 -> 1", "asyncio.Queue per subscriber"),),
        bar=0.8,
    ),
    # The same work as "core alone" (publish -> get of plain messages) with the six in-memory
    # plugins on (ttl with a default expiry); ack has the round trip below.
    Target(
        name="all in-memory plugins vs core alone (plain messages)",
        case=("plugins", "all in-memory, plain messages"),
        against=(("plugins", "core alone"),),
        bar=0.5,
    ),
    Target(
        name="ack round trip (Broker() defaults + ack) vs core publish -> get",
        case=("plugins", "Broker() defaults + ack"),
        against=(("plugins", "core alone"),),
        bar=0.35,
    ),
    Target(
        name=f"publish into a full priority buffer ({FULL_BUFFER // 1000}k) vs FIFO",
        case=("full buffer", "priority buffer"),
        against=(("full buffer", "FIFO buffer"),),
        bar=0.5,
    ),
    *(
        Target(
            name=f"flat cost (large / small level): {name}",
            case=("scaling", name),
            bar=SCALING_BAR,
            most=True,
            source="scaling",
        )
        for name, kind, _ in SCALING_CASES
        if kind == "mqkit"
    ),
    Target(
        name="bytes per buffered message, Broker() defaults vs SimpleQueue",
        case=("buffered", "mqkit, Broker() defaults"),
        against=(("buffered", STAMPED),),
        bar=1.1,
        most=True,
        source="bytes",
    ),
    Target(
        name="bytes per buffered message, core vs SimpleQueue",
        case=("buffered", "mqkit"),
        against=(("buffered", STAMPED),),
        bar=1.1,
        most=True,
        source="bytes",
    ),
    Target(
        name=f"RSS flat through a {RSS_SUBSCRIBERS}-subscriber topic, Broker() defaults",
        case=("rss", "mqkit, Broker() defaults"),
        bar=1.1,
        most=True,
        source="rss",
    ),
    Target(
        name="ack round trip vs kombu memory://",
        case=("ack round trip, in memory", "mqkit ack"),
        against=(("ack round trip, in memory", "kombu memory://"),),
        bar=20.0,
    ),
    Target(
        name="durable publish vs diskcache Cache.set",
        case=("durable", "mqkit publish"),
        against=(("durable", "diskcache Cache.set"),),
        bar=1.0,
    ),
    Target(
        name=f"durable publish, {PUBLISHERS} threads vs one thread (group commit)",
        case=("durable", f"mqkit publish, {PUBLISHERS} threads"),
        against=(("durable", "mqkit publish"),),
        bar=4.0,
    ),
    Target(
        name=f"publish_batch ({BATCH}) per message vs durable publish",
        case=("durable", f"mqkit publish_batch ({BATCH})"),
        against=(("durable", "mqkit publish"),),
        bar=10.0,
    ),
    Target(
        name="durable ack round trip vs persist-queue SQLiteAckQueue, synchronous=NORMAL",
        case=("ack round trip, durable", "mqkit durable ack"),
        against=(("ack round trip, durable", "persist-queue SQLiteAckQueue, synchronous=NORMAL"),),
        bar=1.0,
    ),
)
"""The issue's acceptance targets."""


def paired_ratio(a: BenchResult, b: BenchResult) -> float:
    """``a``'s msgs/s over ``b``'s: the median of the per-round ratios.

    Both cases of a table run in every round, a few seconds apart at most, so each round's
    ratio compares them under the same load; on a shared machine its median is steadier than
    the ratio of the two medians. (NaN when either did not run.)
    """
    pairs = list(zip(a.samples, b.samples, strict=False))
    if not a.ok or not b.ok or not pairs:
        return math.nan
    return statistics.median((tb / b.messages) / (ta / a.messages) for ta, tb in pairs)


def _verdict(target: Target, ratio: float, against: str) -> TargetResult:
    met = ratio <= target.bar if target.most else ratio >= target.bar
    return TargetResult(
        target=target, ratio=ratio, against=against, status="met" if met else "not met"
    )


def _unmeasured(target: Target, status: str = "not run") -> TargetResult:
    against = " / ".join(k[1] for k in target.against)
    return TargetResult(target=target, ratio=math.nan, against=against, status=status)


def _rate_target(target: Target, by_key: dict[tuple[str, str], BenchResult]) -> TargetResult:
    mine = by_key[target.case]
    others = [by_key[k] for k in target.against if k in by_key]
    ran = [r for r in others if r.ok]
    if not mine.ok or not ran:
        missing = not mine.ok and mine.status == "not installed"
        missing = missing or (bool(others) and all(r.status == "not installed" for r in others))
        return _unmeasured(target, "not installed" if missing else "not run")
    best = max(ran, key=lambda r: r.rate)
    return _verdict(target, paired_ratio(mine, best), best.name)


def _memory_target(target: Target, by_key: dict[tuple[str, str], MemoryResult]) -> TargetResult:
    mine = by_key[target.case]
    if target.source == "rss":
        if mine.status != "ok":
            return _unmeasured(target)
        first = mine.detail["first"]
        after = f"its RSS after {max(1, mine.messages // RSS_SAMPLES):,} messages"
        return _verdict(target, mine.detail["last"] / first, after)
    base = next((by_key[k] for k in target.against if k in by_key), None)
    if mine.status != "ok" or base is None or base.status != "ok":
        return _unmeasured(target)
    return _verdict(target, mine.value / base.value, base.name)


def _scaling_target(target: Target, row: ScalingResult) -> TargetResult:
    if not row.ok:
        return _unmeasured(target)
    small, large = row.reached
    against = f"{small:,} buffered; {large:,} reached"
    if not row.complete:  # the fill ran out of time: a ratio at a lower level, not a verdict
        return TargetResult(
            target=target,
            ratio=row.ratio,
            against=f"{against} of {row.levels[1]:,}",
            status="not met" if row.ratio > target.bar else "not run",
        )
    return _verdict(target, row.ratio, f"{small:,} buffered")


def evaluate_targets(
    results: Sequence[BenchResult],
    memory: Sequence[MemoryResult] = (),
    scaling: Sequence[ScalingResult] = (),
) -> list[TargetResult]:
    """Each target whose numerator was measured: its ratio and verdict.

    A target is left out when its numerator was not measured (its group did not run).
    """
    timed = {(r.group, r.name): r for r in results}
    held = {(m.table, m.name): m for m in memory}
    rows = {("scaling", r.name): r for r in scaling}
    out: list[TargetResult] = []
    for target in TARGETS:
        if target.source == "rates" and target.case in timed:
            out.append(_rate_target(target, timed))
        elif target.source in ("bytes", "rss") and target.case in held:
            out.append(_memory_target(target, held))
        elif target.source == "scaling" and target.case in rows:
            out.append(_scaling_target(target, rows[target.case]))
    return out


# -- reports ---------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ReportTable:
    """A table to print: rendered as Markdown by :func:`markdown`, with rich by the CLI."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def _times(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value < 0.01:
        return f"{value:.2g}x"
    return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x"


_RELATIVE: Final = ("plugins", "full buffer")
"""Tables whose ratio column is each case against the reference (not the reference against it)."""

_TITLES: Final = {
    "1 -> 1": "core: publish -> get, 1 -> 1 subscriber(s), one thread",
    "1 -> 10": "core: publish -> get, 1 -> 10 subscriber(s), one thread",
    "threads 1 -> 1": "cross-thread: a publisher thread -> 1 consumer thread",
    "threads 1 -> 10": "cross-thread: a publisher thread -> 10 consumer threads",
    "asyncio 1 -> 1": "asyncio: 1 consumer task, publisher in the same loop",
    "asyncio 1 -> 10": "asyncio: 10 consumer tasks, publisher in the same loop",
    "plugins": "What each plugin costs: publish -> get, one thread",
    "full buffer": f"scaling: publish into a full DROP_OLDEST buffer of {FULL_BUFFER:,}",
    "durable": "durable: write messages to disk (no subscriber)",
    "ack round trip, in memory": "ack round trip (publish, get, ack), in memory",
    "ack round trip, durable": "ack round trip (publish, get, ack), durable",
}


def timing_tables(results: Sequence[BenchResult]) -> list[ReportTable]:
    """One table per group of timed results, with the ratios to the table's mqkit reference."""
    tables: dict[str, list[BenchResult]] = {}
    for r in results:
        tables.setdefault(r.group, []).append(r)
    out: list[ReportTable] = []
    for group, rows in tables.items():
        ref = next((r for r in rows if r.reference and r.ok), None)
        plugins = group in _RELATIVE
        fanout = max(r.fanout for r in rows)
        columns = ["case", "kind", "msgs/s"]
        if fanout > 1:
            columns.append("deliveries/s")
        base = next((r.name for r in rows if r.reference), "the reference")
        columns += ["µs / msg", f"x {base}" if plugins else "mqkit / case", "spread", "note"]
        body: list[tuple[str, ...]] = []
        for r in rows:
            if not r.ok:
                body.append(
                    (r.name, r.kind, r.status, *(["-"] if fanout > 1 else []), "-", "-", "-", "")
                )
                continue
            if ref is None:
                ratio = math.nan
            elif plugins:
                ratio = paired_ratio(r, ref)
            else:
                ratio = paired_ratio(ref, r)
            cells = [r.name, r.kind, _rate(r.rate)]
            if fanout > 1:
                cells.append(_rate(r.deliveries))
            cells += [f"{r.micros:.2f}", _times(ratio), f"{r.spread * 100:.0f}%", r.note]
            body.append(tuple(cells))
        notes = [f"{rows[0].messages:,} messages per run; median of {len(rows[0].samples)} rounds"]
        peers = [r for r in rows if r.kind == "peer" and r.ok]
        if peers and ref is not None:
            best = max(peers, key=lambda r: r.rate)
            notes.append(
                f"fastest peer: {best.name} ({_rate(best.rate)} msgs/s); "
                f"{ref.name} / fastest peer = {_times(paired_ratio(ref, best))}"
            )
        if plugins:
            notes.append(
                f"x {base}: the case's msgs/s / {base}'s (the median of the per-round "
                "ratios; 1.00x = as fast)"
            )
        else:
            notes.append(
                f"mqkit / case: {ref.name if ref else 'mqkit'}'s msgs/s / the case's (the median "
                "of the per-round ratios)"
            )
        out.append(
            ReportTable(
                title=_TITLES.get(group, group),
                columns=tuple(columns),
                rows=tuple(body),
                notes=tuple(notes),
            )
        )
    return out


def memory_tables(results: Sequence[MemoryResult]) -> list[ReportTable]:
    """The memory tables: bytes per buffered message, and peak RSS."""
    out: list[ReportTable] = []
    buffered = [r for r in results if r.table == "buffered"]
    if buffered:
        base = next((r for r in buffered if r.name == STAMPED and r.status == "ok"), None)
        rows: list[tuple[str, ...]] = []
        for r in buffered:
            if r.status != "ok":
                rows.append((r.name, r.kind, f"{r.messages:,}", r.status, "-", "-", "-"))
                continue
            rows.append(
                (
                    r.name,
                    r.kind,
                    f"{r.messages:,}",
                    f"{r.value:,.0f}",
                    f"{r.detail['message']:,.0f}",
                    f"{r.detail['overhead']:,.0f}",
                    _times(r.value / base.value) if base else "-",
                )
            )
        out.append(
            ReportTable(
                title="memory: bytes per buffered message (100-byte payload), tracemalloc",
                columns=(
                    "holder",
                    "kind",
                    "messages",
                    "bytes / msg",
                    "of which the message",
                    "holding overhead",
                    "x SimpleQueue",
                ),
                rows=tuple(rows),
                notes=(
                    "bytes / msg: what the buffered messages hold after the publisher dropped "
                    "its own references (message objects, ids, payloads, buffer slots, and "
                    "whatever the broker keeps per buffered message)",
                    "of which the message: the publisher's Message with its id and payload; "
                    "mqkit buffers a stamped copy (topic and time set) instead of the original",
                    f"x SimpleQueue: against {STAMPED!r}: a SimpleQueue holding the very "
                    "objects a subscription buffers (each message published through a core "
                    "broker and taken at once), so the ratio is what holding them costs beyond "
                    "the stamped message itself; 'queue.SimpleQueue' holds the publisher's "
                    "unstamped messages (what the stamp costs)",
                ),
            )
        )
    rss = [r for r in results if r.table == "rss"]
    if rss:
        rows = []
        for r in rss:
            if r.status != "ok":
                rows.append((r.name, r.kind, f"{r.messages:,}", r.status, *["-"] * 5))
                continue
            mib = 1024 * 1024
            rows.append(
                (
                    r.name,
                    r.kind,
                    f"{r.messages:,}",
                    f"{r.detail['start'] / mib:.1f}",
                    f"{r.detail['first'] / mib:.1f}",
                    f"{r.detail['last'] / mib:.1f}",
                    _times(r.detail["last"] / r.detail["first"]),
                    f"{r.detail['peak'] / mib:.1f}",
                    f"{r.detail['seconds']:.1f}",
                )
            )
        quick = rss[0].messages < RSS_MESSAGES
        note = (
            f"a quick run: {rss[0].messages:,} messages, not {RSS_MESSAGES:,}"
            if quick
            else f"{RSS_MESSAGES:,} messages"
        )
        out.append(
            ReportTable(
                title=f"memory: RSS, messages through a {RSS_SUBSCRIBERS}-subscriber topic",
                columns=(
                    "case",
                    "kind",
                    "messages",
                    "RSS before (MiB)",
                    "after 1/10 (MiB)",
                    "at the end (MiB)",
                    "end / after 1/10",
                    "peak RSS (MiB)",
                    "seconds",
                ),
                rows=tuple(rows),
                notes=(
                    f"{note}, in a child process started through /bin/sh; batches of 1,000 "
                    "published, then drained by each subscriber (a counting function)",
                    "RSS (VmRSS) sampled every tenth of the messages: after the first tenth "
                    "(buffers, caches and allocator pools at their working size) and at the "
                    "end; flat means end / after 1/10 <= 1.1x. RSS before and peak: "
                    "resource.getrusage ru_maxrss",
                ),
            )
        )
    return out


def scaling_tables(results: Sequence[ScalingResult]) -> list[ReportTable]:
    """The scaling table: per configuration, the cost per message at two levels, and the ratio."""
    if not results:
        return []
    small, large = results[0].levels
    rows: list[tuple[str, ...]] = []
    for r in results:
        if not r.ok:
            rows.append((r.name, r.kind, r.status, *["-"] * 8, r.note))
            continue
        reached = "" if r.complete else f"fill stopped at {r.reached[1]:,} (budget); "
        publish, get = r.ratios
        verdict = "-" if r.kind != "mqkit" else ("met" if r.ratio <= SCALING_BAR else "not met")
        if r.kind == "mqkit" and not r.complete and r.ratio <= SCALING_BAR:
            verdict = "not run"
        rows.append(
            (
                r.name,
                r.kind,
                f"{r.publish[0]:.2f}",
                f"{r.publish[1]:.2f}",
                _times(publish),
                f"{r.get[0]:.3f}",
                f"{r.get[1]:.3f}",
                _times(get),
                verdict,
                f"{r.peak_rss / (1024 * 1024):,.0f}",
                reached + r.note,
            )
        )
    return [
        ReportTable(
            title=(
                f"scaling: cost per message with {small:,} and {large:,} messages buffered "
                f"in each of {SCALING_SUBSCRIBERS} subscriptions"
            ),
            columns=(
                "case",
                "kind",
                "publish µs (small)",
                "publish µs (large)",
                "publish large / small",
                "get µs (small)",
                "get µs (large)",
                "get large / small",
                f"flat (<= {SCALING_BAR:g}x)",
                "peak RSS (MiB)",
                "note",
            ),
            rows=tuple(rows),
            notes=(
                "each level of each configuration in a child process of its own: "
                f"{SCALING_SUBSCRIBERS} subscriptions "
                "to one topic (buffer_size = the level + 2 batches), filled to the level "
                "outside the clock (publish_batch); then cycles of a batch of publishes "
                "(timed; µs per publish, each to all subscriptions) and the same number of "
                "gets from each subscription (timed; µs per get_nowait()), so the level holds",
                "small, large, then small again (the mean of both small runs); at least "
                "2.5 s of cycles per level (quick: 1.1 s, small measured once), so the ttl "
                "plugin's sweep (every second, on the broker's timer thread) falls in the "
                "clocks as often as in a real run; small messages, one shared payload",
                "the cyclic garbage collector is off during the cycles (as in timeit): with "
                "a million messages held a full collection walks them all, whatever holds "
                "them; queue.SimpleQueue (one per subscription) is the floor: what memory "
                "alone costs a million messages deep",
            ),
        )
    ]


def target_table(targets: Sequence[TargetResult]) -> ReportTable:
    """The targets with their measured ratios and verdicts."""
    rows = tuple(
        (
            t.target.name,
            _times(t.ratio),
            f"{'<=' if t.target.most else '>='} {t.target.bar:g}x",
            t.against,
            t.status,
        )
        for t in targets
    )
    notes = []
    if any(t.target.source == "rates" for t in targets):
        notes.append(
            "msgs/s of the case / msgs/s of the case against (deliveries/s for 1 -> 10), the "
            "median of the per-round ratios"
        )
    if any(t.target.source == "scaling" for t in targets):
        notes.append(
            "flat cost: the scaling table's larger ratio (publish or get) of the cost per "
            "message at the large level over the small; 'not run' when the fill stopped short "
            "and the ratio so far was within the bar"
        )
    if any(t.target.source == "bytes" for t in targets):
        notes.append(
            f"bytes per buffered message against a SimpleQueue holding the same stamped "
            f"messages ({STAMPED!r} in the memory table)"
        )
    if any(t.target.source == "rss" for t in targets):
        notes.append(
            "RSS flat: the child's RSS at the end of the run / its RSS after the first tenth"
        )
    return ReportTable(
        title="targets (ratios measured in this run)",
        columns=("target", "measured", "bar", "against", "status"),
        rows=rows,
        notes=tuple(notes),
    )


def markdown(tables: Sequence[ReportTable]) -> str:
    """The tables as Markdown (title in bold, then the table, then its notes)."""
    parts: list[str] = []
    for t in tables:
        lines = [f"**{t.title}**", ""]
        lines.append("| " + " | ".join(t.columns) + " |")
        left = {"case", "kind", "note", "holder", "target", "against", "status", "bar"}  # text
        lines.append("|" + "|".join("---" if c in left else "---:" for c in t.columns) + "|")
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in t.rows
        ]
        if t.notes:
            lines.append("")
            lines += [f"- {n}" for n in t.notes]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def machine_info() -> dict[str, str]:
    """CPU, cores, Python, and the versions of mqkit, orjson and every peer (or "not installed")."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.machine()}",
        "sqlite": sqlite3.sqlite_version,
    }
    with contextlib.suppress(OSError):
        info["load average"] = "/".join(f"{x:.2f}" for x in os.getloadavg())
    for dist in ("mqkit", "orjson", *PEERS, "matplotlib"):  # orjson: the fast extra
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = "not installed"
    return info


def to_json(
    results: Sequence[BenchResult],
    memory: Sequence[MemoryResult] = (),
    title: str = "",
    machine: dict[str, str] | None = None,
    scaling: Sequence[ScalingResult] = (),
) -> dict[str, Any]:
    """Everything measured, as JSON-ready data.

    ``results`` lists the cases that ran; ``skipped`` those that did not (not installed,
    failed); ``memory`` the memory measurements; ``scaling`` the scaling table's rows;
    ``targets`` the verdicts.
    """

    def timed(r: BenchResult) -> dict[str, Any]:
        return {
            "section": r.section,
            "group": r.group,
            "case": r.name,
            "kind": r.kind,
            "fanout": r.fanout,
            "messages": r.messages,
            "seconds": r.seconds,
            "samples": list(r.samples),
            "msgs_per_s": r.rate,
            "deliveries_per_s": r.deliveries,
            "us_per_msg": r.micros,
            "note": r.note,
        }

    return {
        "title": title,
        "machine": machine or {},
        "results": [timed(r) for r in results if r.ok],
        "skipped": [
            {"group": r.group, "case": r.name, "status": r.status} for r in results if not r.ok
        ],
        "memory": [
            {
                "table": m.table,
                "case": m.name,
                "messages": m.messages,
                "value": m.value,
                "status": m.status,
                **m.detail,
            }
            for m in memory
        ],
        "scaling": [
            {
                "case": r.name,
                "kind": r.kind,
                "levels": list(r.levels),
                "reached": list(r.reached),
                "publish_us": list(r.publish),
                "get_us": list(r.get),
                "peak_rss": r.peak_rss,
                "seconds": r.seconds,
                "status": r.status,
            }
            for r in scaling
        ],
        "targets": [
            {
                "target": t.target.name,
                "ratio": t.ratio,
                "bar": t.target.bar,
                "at_most": t.target.most,
                "against": t.against,
                "status": t.status,
            }
            for t in evaluate_targets(results, memory, scaling)
        ],
    }


# -- chart -----------------------------------------------------------------------------------------

_COLORS: Final = {"mqkit": "tab:purple", "peer": "tab:blue", "stdlib": "tab:gray"}


def _si(value: float) -> str:
    """1234567 -> "1.23M"; 45600 -> "45.6k"."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _micro_label(value: float) -> str:
    return f"{value:.2f} µs" if value < 100 else f"{value:,.0f} µs"


def write_chart(
    results: Sequence[BenchResult],
    path: str | Path,
    title: str = "",
    memory: Sequence[MemoryResult] = (),
) -> Path:
    """Draw the results as a PNG at ``path`` (needs matplotlib: the ``bench`` extra).

    One panel per table: msgs/s (deliveries/s for fan-out tables; µs per message for the
    plugin costs) on a log scale, mqkit in purple, peers in blue, stdlib baselines in grey;
    and, when measured, the bytes per buffered message.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tables: dict[str, list[BenchResult]] = {}
    for r in results:
        if r.ok:
            tables.setdefault(r.group, []).append(r)
    buffered = [m for m in memory if m.table == "buffered" and m.status == "ok"]
    panels = len(tables) + (1 if buffered else 0)
    cols = 2
    rows = max(1, math.ceil(panels / cols))
    heights = []
    names = list(tables)
    for i in range(rows):
        sizes = [len(tables[g]) for g in names[i * cols : (i + 1) * cols]]
        if i == rows - 1 and buffered and len(sizes) < cols:
            sizes.append(len(buffered))
        heights.append(max(sizes or [3]) + 1.5)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(15, 0.32 * sum(heights) + 1.2),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    flat = [ax for row in axes for ax in row]
    for ax, group in zip(flat, names, strict=False):
        rs = list(reversed(tables[group]))
        plugins = group in _RELATIVE
        if plugins:
            values = [r.micros for r in rs]
            label, fmt = "µs per message (lower is better)", _micro_label
        elif rs[0].fanout > 1 or any(r.fanout > 1 for r in rs):
            values = [r.deliveries for r in rs]
            label, fmt = "deliveries / s (higher is better)", _si
        else:
            values = [r.rate for r in rs]
            label, fmt = "msgs / s (higher is better)", _si
        bars = ax.barh(
            [r.name for r in rs], values, color=[_COLORS.get(r.kind, "tab:gray") for r in rs]
        )
        ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=7, padding=2)
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 3, max(values) * 6)
        ax.set_xlabel(label, fontsize=8)
        ax.set_title(_TITLES.get(group, group), fontsize=9)
        ax.tick_params(labelsize=7)
    used = len(names)
    if buffered:
        ax = flat[used]
        mem = list(reversed(buffered))
        bars = ax.barh(
            [m.name for m in mem], [m.value for m in mem], color=[_COLORS[m.kind] for m in mem]
        )
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
        ax.set_xlabel("bytes per buffered message, 100-byte payload (lower is better)", fontsize=8)
        ax.set_title("memory: bytes per buffered message", fontsize=9)
        ax.tick_params(labelsize=7)
        used += 1
    for ax in flat[used:]:
        ax.set_visible(False)
    handles = [Patch(color=color, label=kind) for kind, color in _COLORS.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncols=3)
    if title:
        fig.suptitle(title, fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
