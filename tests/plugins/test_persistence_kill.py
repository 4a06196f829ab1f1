"""Crash safety: a child process publishing to a persistent broker is killed with SIGKILL.

The child prints each message id after ``publish`` (or ``publish_batch``) returned, and
``acked <id>`` after an ack returned, flushing every line. The parent reads a random number of
lines, kills the child at once, reads what else it printed, and opens the directory itself:
every printed id must be recovered, in publish order, with no duplicates, and none whose ack
was printed before a later publish returned (an ack's delete is written with the next store
write: only the acks after the last write may come back, at least once). Synchronisation is the
child's stdout pipe alone; nothing sleeps.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.process import Child

import mqkit

TOPIC = "kill"

CHILD = """
import random
import sys

import mqkit

path, prefix, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
out = sys.stdout
config = mqkit.Config(
    enable_persistence=True, persistence_path=path, enable_ack_support=True
)
with mqkit.Broker(config) as broker:
    consumer = broker.subscribe_with_ack(
        "kill", mqkit.SubOptions(buffer_size=4, filter=lambda m: m.meta.get("consume") == "1")
    )
    i = 0
    while True:
        roll = rng.random()
        if roll < 0.3:  # ack-required, consumed and acked at once
            mid = f"{prefix}-{i}"
            i += 1
            broker.publish("kill", mqkit.AckMessage(mid, {"i": i}, meta={"consume": "1"}))
            out.write(mid + "\\n")
            out.flush()
            received = consumer.get(timeout=60)
            assert received.id == mid, (received.id, mid)
            consumer.ack(received.ack_id)
            out.write(f"acked {mid}\\n")
            out.flush()
        elif roll < 0.35:  # a batch of ack-required messages, consumed and acked one by one
            mids = [f"{prefix}-{i + k}" for k in range(rng.randint(2, 4))]
            i += len(mids)
            batch = [mqkit.AckMessage(m, m, meta={"consume": "1"}) for m in mids]
            broker.publish_batch("kill", batch)
            out.write("".join(m + "\\n" for m in mids))
            out.flush()
            for mid in mids:
                received = consumer.get(timeout=60)
                assert received.id == mid, (received.id, mid)
                consumer.ack(received.ack_id)
                out.write(f"acked {mid}\\n")
                out.flush()
        elif roll < 0.45:  # a batch
            mids = [f"{prefix}-{i + k}" for k in range(rng.randint(2, 6))]
            i += len(mids)
            batch = [mqkit.Message(m, "b" * rng.randint(0, 300)) for m in mids]
            broker.publish_batch("kill", batch)
            out.write("".join(m + "\\n" for m in mids))
            out.flush()
        elif roll < 0.5:  # ack-required, never consumed: stays stored
            mid = f"{prefix}-{i}"
            i += 1
            broker.publish("kill", mqkit.AckMessage(mid, [i, "unconsumed"]))
            out.write(mid + "\\n")
            out.flush()
        else:
            mid = f"{prefix}-{i}"
            i += 1
            broker.publish("kill", mqkit.Message(mid, {"i": i, "pad": "p" * rng.randint(0, 2000)}))
            out.write(mid + "\\n")
            out.flush()
"""

HOLDER = """
import sys

import mqkit

config = mqkit.Config(enable_persistence=True, persistence_path=sys.argv[1])
with mqkit.Broker(config) as broker:
    broker.publish("kill", mqkit.Message("from-the-child"))
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    sys.stdin.readline()  # hold the directory until killed
"""


def order(mid: str) -> tuple[int, int]:
    trial, index = mid.removeprefix("t").split("-")
    return int(trial), int(index)


def recover(path: Path) -> list[str]:
    config = mqkit.Config(enable_persistence=True, persistence_path=str(path))
    with mqkit.Broker(config) as broker:
        assert broker.health_check().status == "healthy", broker.health_check().problems
        return [m.id for m in broker.recover_messages(TOPIC, 0)]


def kill_trial(script: Path, store: Path, trial: int, seed: int, lines: int) -> list[str]:
    """Run the child until it printed ``lines`` lines, SIGKILL it; return every full line."""
    child = Child([sys.executable, str(script), str(store), f"t{trial}", str(seed)])
    try:
        child.read_lines(lines, deadline=60)
        return child.kill()  # every line it printed, the ones still in the pipe too
    finally:
        child.stop_now()


def check(recovered: list[str], before: list[str], output: list[str], trial: int) -> None:
    printed = [line for line in output if not line.startswith("acked ")]
    acked = {line.removeprefix("acked ") for line in output if line.startswith("acked ")}
    assert len(recovered) == len(set(recovered)), "duplicates"
    assert recovered == sorted(recovered, key=order), "not in publish order"
    older = [m for m in recovered if order(m)[0] < trial]
    assert older == before, "an earlier run's messages changed"
    mine = [m for m in recovered if order(m)[0] == trial]
    # The acks printed before the last publish that returned: their deletes were written.
    last_write = max(
        (i for i, line in enumerate(output) if not line.startswith("acked ")), default=-1
    )
    written = {
        line.removeprefix("acked ") for line in output[:last_write] if line.startswith("acked ")
    }
    assert not written & set(mine), (
        f"acked, then a write returned, but recovered: {written & set(mine)}"
    )
    # At most one printed message may be missing: the consumed one whose ack was under way.
    missing = [m for m in printed if m not in acked and m not in mine]
    assert len(missing) <= 1, f"printed but lost: {missing}"
    if missing:
        assert missing[0] == printed[-1], f"printed but lost: {missing}"
    # Anything recovered but not printed was published last, its print cut off by the kill.
    last = max((order(m)[1] for m in printed), default=-1)
    unprinted = [m for m in mine if m not in printed]
    assert all(order(m)[1] > last for m in unprinted), unprinted


@pytest.mark.parametrize("seed", [11, 22, 33, 44])
def test_sigkill_loses_no_published_message(tmp_path: Path, seed: int) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    store = tmp_path / "store"
    rng = random.Random(seed)
    before: list[str] = []
    for trial in range(7):
        lines = rng.choice([0, 1, 2, rng.randint(3, 60), rng.randint(60, 400)])
        output = kill_trial(script, store, trial, rng.randrange(1 << 30), lines)
        recovered = recover(store)
        check(recovered, before, output, trial)
        before = recovered


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    store = tmp_path / "store"
    config = mqkit.Config(enable_persistence=True, persistence_path=str(store))
    with subprocess.Popen(
        [sys.executable, str(script), str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        with pytest.raises(mqkit.PersistenceError) as caught:
            mqkit.Broker(config)
        assert str(store) in str(caught.value)
        assert f"pid {child.pid}" in str(caught.value)
        os.kill(child.pid, signal.SIGKILL)
        _, errors = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, errors
    assert (store / "mqkit.lock").read_text().strip() == str(child.pid)  # left behind
    with mqkit.Broker(config) as broker:
        assert [m.id for m in broker.recover_messages(TOPIC)] == ["from-the-child"]
        broker.publish(TOPIC, mqkit.Message("after"))
    assert (store / "mqkit.lock").read_text().strip() == str(os.getpid())
