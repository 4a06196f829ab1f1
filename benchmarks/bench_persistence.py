"""Durable publishing (the ``persistence`` plugin) against raw diskcache and sqlite3 writes.

Run: ``python benchmarks/bench_persistence.py`` (``--quick`` for a short run). Every case
writes to a fresh directory under the same temporary directory (the same disk), the cases run
interleaved round by round, and the table shows the median of the rounds. Not a test: nothing
here asserts a speed.

- ``mqkit publish``: ``Broker.publish`` of one message on a broker with ``enable_persistence``
  (and the default plugins) and no subscriber; each call returns after its store transaction
  committed.
- ``mqkit publish_batch``: ``Broker.publish_batch`` of 100 messages (one store transaction).
- ``diskcache Cache.set``: ``Cache.set(int, text)`` of the JSON text the plugin stores for the
  same message, one transaction per call, on a cache opened with the plugin's settings (WAL,
  ``synchronous=NORMAL``, no eviction, no statistics).
- ``diskcache Cache.set, 100 per transact()``: the same, 100 calls in one ``Cache.transact()``
  (what a batch costs through diskcache's per-item API: the floor under ``publish_batch``).
- ``sqlite3 executemany``: ``INSERT`` of (seq, text) rows, WAL, ``synchronous=NORMAL``, one
  ``executemany`` and one commit per 100 rows: the floor under any batched store.

Targets: durable ``publish`` >= 50% of raw ``Cache.set``; ``publish_batch`` >= 5x ``publish``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import diskcache

import mqkit
from mqkit.core.convert import message_to_dict

Case = Callable[[Path, int], float]  # write n messages into a fresh directory; elapsed seconds
BATCH = 100


def payload(i: int) -> dict[str, object]:
    return {"order": i, "sku": f"SKU-{i % 977:05d}", "qty": i % 7 + 1, "note": "x" * 64}


def messages(n: int) -> list[mqkit.Message]:
    return [mqkit.Message(f"m-{i}", payload(i), meta={"source": "bench"}) for i in range(n)]


def stored_texts(n: int) -> list[str]:
    """The JSON the plugin writes for each message (stamped as the broker would)."""
    return [
        json.dumps(message_to_dict(mqkit.Message(f"m-{i}", payload(i), topic="bench")))
        for i in range(n)
    ]


def broker(directory: Path) -> mqkit.Broker:
    return mqkit.Broker(mqkit.Config(enable_persistence=True, persistence_path=str(directory)))


def open_cache(directory: Path) -> diskcache.Cache:
    """A cache with the plugin's settings."""
    return diskcache.Cache(
        str(directory),
        eviction_policy="none",
        statistics=False,
        tag_index=False,
        sqlite_synchronous=1,
    )


def mqkit_publish(directory: Path, n: int) -> float:
    msgs = messages(n)
    with broker(directory) as b:
        publish = b.publish
        t0 = time.perf_counter()
        for m in msgs:
            publish("bench", m)
        return time.perf_counter() - t0


def mqkit_publish_batch(directory: Path, n: int) -> float:
    msgs = messages(n)
    batches = [msgs[i : i + BATCH] for i in range(0, n, BATCH)]
    with broker(directory) as b:
        publish_batch = b.publish_batch
        t0 = time.perf_counter()
        for batch in batches:
            publish_batch("bench", batch)
        return time.perf_counter() - t0


def diskcache_set(directory: Path, n: int) -> float:
    texts = stored_texts(n)
    cache = open_cache(directory)
    try:
        cache_set = cache.set
        t0 = time.perf_counter()
        for i, text in enumerate(texts):
            cache_set(i, text)
        return time.perf_counter() - t0
    finally:
        cache.close()


def diskcache_set_batched(directory: Path, n: int) -> float:
    texts = stored_texts(n)
    batches = [list(enumerate(texts))[i : i + BATCH] for i in range(0, n, BATCH)]
    cache = open_cache(directory)
    try:
        cache_set = cache.set
        t0 = time.perf_counter()
        for batch in batches:
            with cache.transact():
                for i, text in batch:
                    cache_set(i, text)
        return time.perf_counter() - t0
    finally:
        cache.close()


def sqlite_executemany(directory: Path, n: int) -> float:
    texts = stored_texts(n)
    rows = list(enumerate(texts))
    batches = [rows[i : i + BATCH] for i in range(0, n, BATCH)]
    con = sqlite3.connect(directory / "bench.db", isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        con.execute("CREATE TABLE messages (seq INTEGER PRIMARY KEY, value TEXT NOT NULL)")
        insert = "INSERT INTO messages (seq, value) VALUES (?, ?)"
        t0 = time.perf_counter()
        for batch in batches:
            con.execute("BEGIN")
            con.executemany(insert, batch)
            con.execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        con.close()


CASES: dict[str, Case] = {
    "mqkit publish": mqkit_publish,
    "mqkit publish_batch (100)": mqkit_publish_batch,
    "diskcache Cache.set": diskcache_set,
    "diskcache Cache.set, 100 per transact()": diskcache_set_batched,
    "sqlite3 executemany (100/commit)": sqlite_executemany,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    n = 2_000 if args.quick else 10_000
    rounds = 3 if args.quick else 7
    print(
        f"# mqkit persistence benchmark: python {platform.python_version()} "
        f"({platform.python_implementation()}), sqlite {sqlite3.sqlite_version}, "
        f"diskcache {diskcache.__version__}, {platform.machine()}, n={n}, rounds={rounds}"
    )
    times: dict[str, list[float]] = {name: [] for name in CASES}
    root = Path(tempfile.mkdtemp(prefix="mqkit-bench-"))
    print(f"# directory: {root}")
    try:
        for r in range(rounds):  # interleaved: each round runs every case once, order rotated
            names = list(CASES)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                directory = root / f"{r}-{list(CASES).index(name)}"
                directory.mkdir()
                times[name].append(CASES[name](directory, n))
                shutil.rmtree(directory)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rates = {name: n / statistics.median(t) for name, t in times.items()}
    print("\n| case | msgs/s (median) | min..max msgs/s |")
    print("|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {rates[name]:,.0f} | {n / max(t):,.0f}..{n / min(t):,.0f} |")
    single = rates["mqkit publish"] / rates["diskcache Cache.set"]
    batch = rates["mqkit publish_batch (100)"] / rates["mqkit publish"]
    api_floor = (
        rates["mqkit publish_batch (100)"] / rates["diskcache Cache.set, 100 per transact()"]
    )
    raw_batch = rates["diskcache Cache.set, 100 per transact()"] / rates["diskcache Cache.set"]
    floor = rates["mqkit publish_batch (100)"] / rates["sqlite3 executemany (100/commit)"]
    print("\n| ratio | value | target |")
    print("|---|---:|---:|")
    print(f"| publish / Cache.set | {single:.2f} | >= 0.50 |")
    print(f"| publish_batch / publish | {batch:.2f}x | >= 5x |")
    print(f"| publish_batch / Cache.set in transact() | {api_floor:.2f} | (context) |")
    print(
        f"| Cache.set in transact() / Cache.set | {raw_batch:.2f}x | (context: diskcache's own) |"
    )
    print(f"| publish_batch / sqlite3 executemany | {floor:.2f} | (context) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
