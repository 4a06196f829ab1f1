"""Instructions per message of mqkit's hot paths, counted by valgrind: ratios noise cannot move.

Run: ``python benchmarks/instructions.py [--quick] [--case NAME ...] [--list]``. Needs
``valgrind`` (Debian package ``valgrind``). Each case runs in a child process of its own under
``valgrind --tool=cachegrind --cache-sim=no`` twice, sending ``N`` and ``4 N`` messages (both
build the same ``4 N`` messages, and send 3,000 first to warm up); the difference of the two
counts divided by ``3 N`` is what one more message costs, without the start-up, the imports
and the building of the messages. ``PYTHONHASHSEED=0`` keeps the counts repeatable (two runs
differ by well under 1%).

Wall-clock ratios from ``run.py`` move by 20-50% between runs on a shared 2-core VM; a count of
executed instructions does not, so an A/B of a change on the hot path shows here what
``run.py`` needs many rounds to see. It is a proxy: it does not see cache misses, locks waited
for or memory allocation's page faults, and an instruction of the interpreter's dispatch costs
less than one of a hash lookup. Speed is still judged by ``run.py``; this one says which way a
change went and by how much work. The ratios printed mirror issue 14's bars (``Broker()``
defaults against the core and pyee, the ack round trip against the core's publish -> get, a
publish into a full ring against one that reaches nobody). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mqkit import Broker, Config, SubOptions

import cases

WARM = 3_000
"""Messages every child sends before the counted part (caches, specialisation, first buffers)."""


def _get(config: Callable[[], Config], fanout: int) -> Callable[[int, int], None]:
    """publish -> get with ``fanout`` subscribers, each message handed to a function."""

    def run(n: int, built: int) -> None:
        msgs = cases._messages(WARM + built)[: WARM + n]
        _, handlers = cases._handlers(fanout)
        with Broker(config()) as broker:
            subs = [broker.subscribe(cases.TOPIC) for _ in range(fanout)]
            pairs = [(s.get, h) for s, h in zip(subs, handlers, strict=True)]
            publish, topic = broker.publish, cases.TOPIC
            for m in msgs:
                publish(topic, m)
                for get, handle in pairs:
                    handle(get())

    return run


def _ack_round_trip(n: int, built: int) -> None:
    msgs = cases._messages(WARM + built, cases._ack_message)[: WARM + n]
    _, (handle,) = cases._handlers(1)
    with Broker(Config(enable_ack_support=True)) as broker:
        sub = broker.subscribe(cases.TOPIC)
        publish, get, acknowledge, topic = broker.publish, sub.get, sub.ack, cases.TOPIC
        for m in msgs:
            publish(topic, m)
            got = get()
            handle(got)
            acknowledge(got.ack_id)


def _publish(buffered: bool) -> Callable[[int, int], None]:
    """``Broker()`` defaults: publish to nobody, or into one full buffer of 1,000 (a ring)."""

    def run(n: int, built: int) -> None:
        logging.getLogger("mqkit").setLevel(logging.ERROR)  # the full buffer's drop warnings
        msgs = cases._messages(WARM + built)[: WARM + n]
        with Broker(Config()) as broker:
            if buffered:
                broker.subscribe(cases.TOPIC, SubOptions(buffer_size=1_000))
            publish, topic = broker.publish, cases.TOPIC
            for m in msgs:
                publish(topic, m)

    return run


def _pyee(fanout: int) -> Callable[[int, int], None]:
    def run(n: int, built: int) -> None:
        emitter = importlib.import_module("pyee.base").EventEmitter()
        msgs = cases._messages(WARM + built)[: WARM + n]
        _, handlers = cases._handlers(fanout)
        for handle in handlers:
            emitter.on(cases.TOPIC, handle)
        emit, topic = emitter.emit, cases.TOPIC
        for m in msgs:
            emit(topic, m)

    return run


CASES: dict[str, Callable[[int, int], None]] = {
    "core 1 -> 1": _get(cases._config, 1),
    "defaults 1 -> 1": _get(Config, 1),
    "pyee 1 -> 1": _pyee(1),
    "core 1 -> 10": _get(cases._config, 10),
    "defaults 1 -> 10": _get(Config, 10),
    "pyee 1 -> 10": _pyee(10),
    "defaults + ack round trip": _ack_round_trip,
    "defaults publish to nobody": _publish(False),
    "defaults publish into a full ring": _publish(True),
}
"""Every case by name: ``run(n, built)`` builds ``WARM + built`` messages, sends ``WARM + n``."""

RATIOS: tuple[tuple[str, str, str, str], ...] = (
    ("defaults / core, 1 -> 1", "core 1 -> 1", "defaults 1 -> 1", ">= 0.9x"),
    ("defaults / core, 1 -> 10", "core 1 -> 10", "defaults 1 -> 10", ">= 0.9x"),
    ("defaults / pyee, 1 -> 1", "pyee 1 -> 1", "defaults 1 -> 1", ">= 0.65x"),
    ("defaults / pyee, 1 -> 10", "pyee 1 -> 10", "defaults 1 -> 10", ">= 0.45x"),
    (
        "ack round trip / core publish -> get",
        "core 1 -> 1",
        "defaults + ack round trip",
        ">= 0.35x",
    ),
    (
        "full ring / nobody (MQTT's idle clients, in process)",
        "defaults publish to nobody",
        "defaults publish into a full ring",
        ">= 0.67x",
    ),
)
"""(what, the faster side, the side measured, issue 14's bar): rate ratio = count(a) / count(b)."""


def count(case: str, n: int, built: int) -> int:
    """Instructions valgrind counts for a child running ``case``: ``n`` of ``built`` messages."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            case,
            str(n),
            str(built),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"case {case!r} failed under valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_message(case: str, n: int) -> float:
    """Instructions one more message costs in ``case`` (``4 n`` against ``n`` messages)."""
    return (count(case, 4 * n, 4 * n) - count(case, n, 4 * n)) / (3 * n)


def main() -> int:
    """Count the cases, print a table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="2,000 messages (default 10,000)")
    parser.add_argument("--case", nargs="+", choices=sorted(CASES), help="only these cases")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "N", "BUILT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        CASES[args.child[0]](int(args.child[1]), int(args.child[2]))
        return 0
    if args.list:
        print("\n".join(CASES))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian package valgrind): nothing counted")
        return 1
    names = args.case or list(CASES)
    n = 2_000 if args.quick else 10_000
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = dict(zip(names, pool.map(lambda name: per_message(name, n), names), strict=True))
    print(f"instructions per message (valgrind cachegrind; {4 * n:,} against {n:,} messages)")
    print("| case | instructions / msg |")
    print("|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:,.0f} |")
    print()
    print("| ratio (rate: fewer instructions is faster) | by instructions | bar (run.py) |")
    print("|---|---:|---|")
    for what, fast, measured, bar in RATIOS:
        if fast in results and measured in results:
            print(f"| {what} | {results[fast] / results[measured]:.2f}x | {bar} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
