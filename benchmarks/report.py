"""The report of mqkit's benchmark suite: Markdown tables, targets and verdicts, JSON, chart.

Each table of ``cases.py`` becomes a :class:`ReportTable` (:func:`timing_tables`,
:func:`memory_tables`, :func:`scaling_tables`); :data:`TARGETS` are the ratios the suite is
judged by (:func:`evaluate_targets`, :func:`target_table`); :func:`markdown` prints the tables,
:func:`to_json` keeps every number and :func:`write_chart` draws the PNG chart (matplotlib).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from cases import (
    BATCH,
    FULL_BUFFER,
    PEERS,
    PUBLISHERS,
    RSS_MESSAGES,
    RSS_SAMPLES,
    RSS_SUBSCRIBERS,
    SCALING_BAR,
    SCALING_CASES,
    SCALING_SUBSCRIBERS,
    STAMPED,
)
from harness import BenchResult, MemoryResult, ScalingResult, paired_ratio

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
        name="sync handler (concurrency=1) vs the get() loop it replaces",
        case=("handlers", "handler, sync"),
        against=(("handlers", "get() loop"),),
        bar=0.5,
    ),
    Target(
        name="async handler vs the aget() loop it replaces",
        case=("handlers", "handler, async"),
        against=(("handlers", "aget() loop"),),
        bar=0.5,
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
