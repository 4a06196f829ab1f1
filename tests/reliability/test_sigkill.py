"""SIGKILL at random instants: nothing whose publish returned is lost, duplicated or reordered.

A child process runs a persistent broker with ack support and transactions. Three publisher
threads each publish single messages, batches and transactions, some of them ack-required; a
consumer thread takes the ack-required messages marked for it and acks most of them. After an
operation returned, the child prints it (``pub ID...``; ``acking ID`` before an ack,
``acked ID`` after it returned), flushing each line. The parent reads a random number of lines,
waits a random fraction of a millisecond to a few milliseconds, SIGKILLs the child, and opens
the directory itself. Several runs share one directory, each killed. After each:

- every printed message is recovered, unless its ack was under way (``acking``);
- no message comes back whose ``acked`` line was printed before a store write that began after
  it returned: an ack's delete is written with the next write (group commit), so only the
  acks of the last moments before the kill may come back (at least once, never a loss). A
  write surely began after line ``i`` when a publisher printed two ``pub`` lines after it;
  a message's delete is due once its ack returned and its own publish returned;
- no message is recovered twice; each publisher's messages come back in publish order;
- a transaction's messages come back all or none; earlier runs' messages are unchanged, but
  for those the next run replayed (``replay_messages`` at its start) and acked;
- a recovered message that was not printed is from its publisher's last operation, the one the
  kill interrupted.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from support.process import Child

import mqkit

from .soak import Soak, trials

pytestmark = pytest.mark.soak

TOPIC = "rel"
RUNS = 3
"""Child runs (each killed) per trial, on one directory."""
PUBLISHERS = 3
LINE_DEADLINE = 60.0
"""Seconds the child may take to print its next line (a loaded CI machine)."""

CHILD = """
import os
import random
import sys
import threading
import traceback

import mqkit

path, run, seed, publishers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
TOPIC = "rel"
lock = threading.Lock()


def report(line):
    with lock:
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()


def fail():
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(3)  # the parent sees a child that ended before its kill


config = mqkit.Config(
    enable_persistence=True,
    persistence_path=path,
    enable_ack_support=True,
    enable_transactions=True,
    default_ack_timeout=3600,  # no redelivery during a run: the parent counts acks
    transaction_timeout=3600,
)
broker = mqkit.Broker(config)
consumer = broker.subscribe_with_ack(
    TOPIC,
    mqkit.SubOptions(buffer_size=100_000, filter=lambda m: m.meta.get("consume") == "1"),
)
# What earlier runs left unacked comes back to the consumer (new ack ids, the same messages).
broker.replay_messages(TOPIC)


def consume():
    rng = random.Random(seed)
    try:
        while True:
            message = consumer.get()
            if rng.random() < 0.2:
                continue  # taken, never acked: it must stay stored
            report(f"acking {message.id}")
            consumer.ack(message.ack_id)
            report(f"acked {message.id}")
    except Exception:
        fail()


def publish(k):
    rng = random.Random(seed * 100 + k + 1)
    me = f"{run}p{k}"
    i = 0

    def ids(n):
        nonlocal i
        i += n
        return [f"{me}-{j}" for j in range(i - n, i)]

    def message(mid, meta):
        roll = rng.random()
        if roll < 0.3 and "tx" not in meta:  # consumed and (mostly) acked
            return mqkit.AckMessage(mid, mid, meta={**meta, "consume": "1"})
        if roll < 0.45:  # ack-required, never consumed: stays stored
            return mqkit.AckMessage(mid, mid, meta=meta)
        return mqkit.Message(mid, mid, meta={**meta, "pad": "p" * rng.randint(0, 600)})

    try:
        while True:
            roll = rng.random()
            if roll < 0.45:
                mids = ids(1)
                broker.publish(TOPIC, message(mids[0], {}))
            elif roll < 0.7:
                mids = ids(rng.randint(2, 6))
                broker.publish_batch(TOPIC, [message(m, {}) for m in mids])
            else:
                mids = ids(rng.randint(2, 4))
                meta = {"tx": mids[0], "tx-size": str(len(mids))}
                with broker.transaction() as tx:
                    for m in mids:
                        tx.publish(TOPIC, message(m, meta))
            report("pub " + " ".join(mids))
    except Exception:
        fail()


threads = [threading.Thread(target=consume, daemon=True)]
threads += [threading.Thread(target=publish, args=(k,), daemon=True) for k in range(publishers)]
for thread in threads:
    thread.start()
threading.Event().wait()  # until killed
"""


def publisher(mid: str) -> str:
    """``r1p2`` of ``r1p2-17``: the run and the publisher thread."""
    return mid.rsplit("-", 1)[0]


def index(mid: str) -> int:
    """17 of ``r1p2-17``: the message's place in its publisher's sequence."""
    return int(mid.rsplit("-", 1)[1])


def run_of(mid: str) -> int:
    return int(mid[1:].split("p", 1)[0])


def kill_at_random(
    script: Path, store: Path, run: int, seed: int, lines: int, delay: float
) -> list[str]:
    """Start the child, SIGKILL it after ``lines`` lines and ``delay`` s; return its lines."""
    child = Child([sys.executable, str(script), str(store), f"r{run}", str(seed), str(PUBLISHERS)])
    try:
        child.read_lines(lines, LINE_DEADLINE)
        # The kill instant: a random short time after the chosen line (not a wait for anything).
        time.sleep(delay)
        return child.kill()  # every complete line, those still in the pipe too
    finally:
        child.stop_now()


def recover(store: Path) -> list[mqkit.Message]:
    config = mqkit.Config(
        enable_persistence=True,
        persistence_path=str(store),
        enable_ack_support=True,
        enable_transactions=True,
    )
    with mqkit.Broker(config) as broker:
        health = broker.health_check()
        assert health.status == "healthy", health
        return broker.recover_messages(TOPIC, 0)


def written(mid: str, output: list[str]) -> bool:
    """Whether a store write began and returned after ``mid``'s delete was due.

    Due: once its ``acked`` line and the ``pub`` line of its own publish (this run's) were
    printed. A write began after that when one publisher printed two ``pub`` lines since.
    """
    due = output.index(f"acked {mid}")
    for i, line in enumerate(output):
        if line.startswith("pub ") and mid in line.split()[1:]:
            due = max(due, i)
    later = Counter(
        publisher(line.split()[1]) for line in output[due + 1 :] if line.startswith("pub ")
    )
    return any(count >= 2 for count in later.values())


def problems(
    recovered: list[mqkit.Message], before: list[str], output: list[str], run: int
) -> list[str]:
    """What the recovered messages break of the guarantees (empty: nothing broken)."""
    found: list[str] = []
    ids = [m.id for m in recovered]
    duplicated = sorted(mid for mid, n in Counter(ids).items() if n > 1)
    if duplicated:
        found.append(f"recovered more than once: {duplicated}")
    published = [mid for line in output if line.startswith("pub ") for mid in line.split()[1:]]
    acking = {line.split()[1] for line in output if line.startswith("acking ")}
    acked = {line.split()[1] for line in output if line.startswith("acked ")}
    # Earlier runs' messages stay, but for those this run replayed and acked.
    older = [mid for mid in ids if run_of(mid) < run and mid not in acking]
    kept = [mid for mid in before if mid not in acking]
    if older != kept:
        found.append(f"an earlier run's messages changed: {kept} became {older}")
    by_publisher: defaultdict[str, list[int]] = defaultdict(list)
    for mid in ids:
        by_publisher[publisher(mid)].append(index(mid))
    for name, order in sorted(by_publisher.items()):
        if order != sorted(order):
            found.append(f"{name}'s messages out of publish order: {order}")

    mine = {mid for mid in ids if run_of(mid) == run}
    lost = [mid for mid in published if mid not in mine and mid not in acking]
    if lost:
        found.append(f"published (the call returned) but lost: {lost}")
    back = sorted(mid for mid in acked & set(ids) if written(mid, output))
    if back:
        found.append(f"acked, then a write began and returned, but recovered: {back}")
    last: defaultdict[str, int] = defaultdict(lambda: -1)
    for mid in published:
        last[publisher(mid)] = max(last[publisher(mid)], index(mid))
    # Recovered but never printed: only the operation the kill interrupted (the one after the
    # publisher's last printed one, at most a batch of 6), or one consumed before it printed.
    unprinted = sorted(mine - set(published) - acking, key=index)
    stray = [m for m in unprinted if not last[publisher(m)] < index(m) <= last[publisher(m)] + 6]
    if stray:
        found.append(f"recovered, never printed, not from an interrupted call: {stray}")
    altered = [m.id for m in recovered if m.data != m.id]
    if altered:
        found.append(f"recovered with other data than published: {altered}")

    transactions: defaultdict[str, list[mqkit.Message]] = defaultdict(list)
    for message in recovered:
        if "tx" in message.meta:
            transactions[message.meta["tx"]].append(message)
    for tx, members in sorted(transactions.items()):
        if len(members) != int(members[0].meta["tx-size"]):
            found.append(f"transaction {tx} partly recovered: {[m.id for m in members]}")
    return found


@pytest.mark.parametrize("trial", trials(4))
def test_sigkill_at_random_instants_loses_nothing_returned(
    tmp_path: Path, soak: Soak, trial: int
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    store = tmp_path / "store"
    rng = soak.rng()
    before: list[str] = []
    for run in range(RUNS):
        lines = rng.choice([0, rng.randint(1, 20), rng.randint(20, 150), rng.randint(150, 600)])
        delay = rng.choice([0.0, rng.uniform(0, 0.001), rng.uniform(0, 0.01)])
        output = kill_at_random(script, store, run, rng.randrange(1 << 30), lines, delay)
        recovered = recover(store)
        found = problems(recovered, before, output, run)
        assert found == [], (
            f"{soak.replay}: run {run} killed {delay * 1000:.2f} ms after line {lines} "
            f"({len(output)} lines printed, {len(recovered)} messages recovered): {found}"
        )
        before = [m.id for m in recovered]
