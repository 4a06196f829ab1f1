"""The benchmark suite of mqkit, in one command: mqkit against its peers, in one process run.

Run from a clone of the repository (the peers come with the ``bench`` extra)::

    python benchmarks/run.py [--quick] [--group NAME ...] [--json FILE] [--chart FILE]

Groups: core, cross-thread, asyncio, plugins, durable, ack, memory, scaling (the cases in
``cases.py``, timed by ``harness.py``, reported by ``report.py``), mqtt (``bench_mqtt.py``:
the MQTT gateway against mosquitto, in its own processes), cluster (``bench_cluster.py``:
cluster mode against a hand-written redis-py loop on its own redis-server) and amqp
(``bench_amqp.py``: the AMQP gateway against RabbitMQ, the same aio-pika program, confirms on
and off). Without ``--group`` every group runs; ``--quick`` leaves out mqtt, cluster and amqp
(CI runs mqtt on its own line). Each table is printed in Markdown with the median of
interleaved rounds and the ratios; then the targets with their verdicts.

``--profile "TABLE/CASE"`` runs one case under cProfile instead (``--profile "1 -> 1/mqkit"``)
and prints where its time goes. Nothing here asserts a speed; the exit code is 1 only when a
case failed to run (a missing peer is reported, not a failure).
"""

from __future__ import annotations

import argparse
import json
import pstats
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cases
import harness
import report

HERE = Path(__file__).resolve().parent


def header(args: argparse.Namespace, rounds: int, info: dict[str, str]) -> str:
    peers = ", ".join(f"{d} {info[d]}" for d in (*cases.PEERS, "matplotlib"))
    mode = "quick" if args.quick else "full"
    lines = [
        "# mqkit benchmark suite",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['platform']}, "
        f"load average at start {info.get('load average', 'n/a')}",
        f"- Python {info['python']}, SQLite {info['sqlite']}, mqkit {info['mqkit']} "
        f"(orjson {info.get('orjson', 'not installed')}: the fast extra)",
        f"- peers: {peers}",
        f"- run: {mode}, median of {rounds} interleaved rounds"
        + (f", {args.messages:,} messages per run" if args.messages else ""),
    ]
    return "\n".join(lines) + "\n"


def run_external(group: str, script: str, title: str, server: str, quick: bool) -> int:
    """Run one of the benchmarks with its own processes (``script``); print its output as a block.

    ``server``: the reference program it also measures, when installed (else mqkit alone).
    """
    if server and shutil.which(server) is None:
        print(f"\n**{group}**: {server} is not installed; {script} measures mqkit alone\n")
    command = [sys.executable, str(HERE / script), *(["--quick"] if quick else [])]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    print(f"\n**{group}: {title} (benchmarks/{script})**\n")
    print("```text")
    print(proc.stdout.rstrip())
    print("```")
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
    return proc.returncode


EXTERNAL = {
    "mqtt": ("bench_mqtt.py", "the MQTT gateway against mosquitto", "mosquitto"),
    "cluster": ("bench_cluster.py", "cluster mode against a redis-py loop", ""),
    "amqp": ("bench_amqp.py", "the AMQP gateway against RabbitMQ", "rabbitmq-server"),
}
"""The groups that run in their own processes: group -> (script, title, reference server)."""


def profile(spec: str, quick: bool, messages: int | None, top: int) -> int:
    """Run one case under cProfile; print its top functions by own time, with their share."""
    timed = cases.suite([g for g in cases.GROUPS if g != "memory"])
    found = [c for c in timed if f"{c.group}/{c.name}" == spec] or [
        c for c in timed if c.name == spec
    ]
    if len(found) != 1:
        names = "\n  ".join(f"{c.group}/{c.name}" for c in timed)
        print(f"no single case {spec!r}; the cases are:\n  {names}", file=sys.stderr)
        return 2
    case = found[0]
    n = messages or (case.quick_messages if quick else case.messages)
    case.run(min(n, 500))  # warm up (imports, generated code)
    plain = min(case.run(n) for _ in range(3))
    stats = pstats.Stats(harness.profile_case(case, n))
    entries = stats.stats  # type: ignore[attr-defined]  # pstats keeps its table here
    total = sum(v[2] for v in entries.values())
    print(f"## profile: {case.group} / {case.name}, {n:,} messages")
    print(
        f"\nwithout the profiler: {plain / n * 1e6:.2f} µs per message (best of 3); "
        f"profiled: {total / n * 1e6:.2f} µs per message (cProfile's own cost inflates "
        "functions that make many small calls; read the shares, not the times)"
    )
    print("\n| function | calls / msg | own µs / msg | share of own time | cumulative µs / msg |")
    print("|---|---:|---:|---:|---:|")
    rows = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (file, line, name), (_cc, ncalls, tottime, cumtime, _callers) in rows:
        where = f"{Path(file).name}:{line}({name})" if line else name
        print(
            f"| `{where}` | {ncalls / n:.2f} | {tottime / n * 1e6:.3f} | "
            f"{tottime / total * 100:.1f}% | {cumtime / n * 1e6:.3f} |"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description="mqkit's benchmark suite: mqkit against its peers, in one process run."
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument(
        "--group",
        nargs="+",
        action="extend",
        metavar="NAME",
        choices=[*cases.GROUPS, "mqtt", "cluster", "amqp"],
        help=f"run only these groups: {', '.join(cases.GROUPS)}, mqtt, cluster, amqp",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--chart", type=Path, metavar="FILE", help="draw the PNG chart here")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 7; quick 3)")
    parser.add_argument("--messages", type=int, help="messages per run for every case")
    parser.add_argument("--profile", metavar="TABLE/CASE", help="profile one case instead")
    parser.add_argument("--top", type=int, default=25, help="functions shown by --profile")
    args = parser.parse_args()
    if args.profile:
        return profile(args.profile, args.quick, args.messages, args.top)
    rounds = args.rounds or (3 if args.quick else 7)
    externals = [] if args.quick else ["mqtt", "cluster", "amqp"]
    groups = list(dict.fromkeys(args.group or [*cases.GROUPS, *externals]))
    machine = report.machine_info()  # at the start: its load average is the one before the run
    print(header(args, rounds, machine))
    timed = cases.suite([g for g in groups if g in cases.GROUPS and g != "memory"])
    done: Counter[str] = Counter()
    started = time.perf_counter()

    def ran(case: harness.BenchCase) -> None:
        key = f"{case.group} / {case.name}"
        done[key] += 1
        if done[key] == rounds:
            print(f"  [{time.perf_counter() - started:6.1f}s] {key}", file=sys.stderr, flush=True)

    results = harness.run_suite(timed, args.messages, rounds, ran, quick=args.quick)
    memory = cases.run_memory(args.messages, quick=args.quick) if "memory" in groups else []
    scaling: list[harness.ScalingResult] = []
    if "scaling" in groups:

        def measured(name: str) -> None:
            print(
                f"  [{time.perf_counter() - started:6.1f}s] scaling / {name}",
                file=sys.stderr,
                flush=True,
            )

        scaling = cases.run_scaling(args.messages, quick=args.quick, on_run=measured)
    tables = [
        *report.timing_tables(results),
        *report.memory_tables(memory),
        *report.scaling_tables(scaling),
    ]
    targets = report.evaluate_targets(results, memory, scaling)
    if targets:
        tables.append(report.target_table(targets))
    print(report.markdown(tables))
    code = 0
    for group, (script, title, server) in EXTERNAL.items():
        if group in groups:
            code = run_external(group, script, title, server, args.quick) or code
    title = f"mqkit benchmark suite ({'quick' if args.quick else 'full'}), median of {rounds}"
    if args.json:
        data = report.to_json(results, memory, title, machine, scaling)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.chart:
        print(f"wrote {report.write_chart(results, args.chart, title, memory)}", file=sys.stderr)
    failed = [f"{r.group} / {r.name}: {r.status}" for r in results if r.status != "ok"]
    failed = [f for f in failed if "not installed" not in f]
    failed += [f"memory / {m.name}: {m.status}" for m in memory if m.status != "ok"]
    failed += [f"scaling / {r.name}: {r.status}" for r in scaling if not r.ok]
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 1 if failed or code else 0


if __name__ == "__main__":
    sys.exit(main())
