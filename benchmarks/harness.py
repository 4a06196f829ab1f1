"""The harness of mqkit's benchmark suite: how a case is timed, in rounds, and summarised.

A case (:class:`BenchCase`) is a function of a message count that returns the seconds its
timed part took (:func:`start_clock` / :func:`stop_clock` around it: set-up and checks are not
counted). :func:`run_suite` runs the cases of a table interleaved - every round runs each case
once, the order rotating from round to round - and reports the median of the rounds
(:class:`BenchResult`); :func:`paired_ratio` compares two cases of one table round by round.
:func:`in_child` runs a measurement in a fresh Python process (the memory and scaling groups),
:func:`profile_case` one case under cProfile. Nothing here knows a case: ``cases.py`` has them.
"""

from __future__ import annotations

import cProfile
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

HERE: Final = Path(__file__).resolve().parent
"""The benchmarks directory: a child process imports the suite's modules from here."""


Run = Callable[[int], float]
"""Run a case over n messages; return the elapsed seconds (set-up and checks not counted)."""


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


def in_temp_dir(run: Callable[[Path, int], float]) -> Run:
    """A durable case: runs in a fresh directory, removed afterwards."""

    def wrapped(n: int) -> float:
        directory = Path(tempfile.mkdtemp(prefix="mqkit-bench-"))
        try:
            return run(directory, n)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    return wrapped


def in_child(code: str, timeout: float) -> dict[str, Any]:
    """Run ``code`` in a fresh Python started through ``/bin/sh``; parse its last line as JSON.

    The child imports the suite's modules (``from cases import ...``) from :data:`HERE`.
    Linux keeps ``ru_maxrss`` across ``fork`` and ``exec``: a child started by this (large)
    process would report our peak as its own. ``/bin/sh`` forks it from its own small image.
    """
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); {code}"
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


def start_clock() -> float:
    """Start the clock of a case's timed part (and the profiler, when profiling)."""
    if _profiler is not None:
        _profiler.enable()
    return time.perf_counter()


def stop_clock(t0: float) -> float:
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
