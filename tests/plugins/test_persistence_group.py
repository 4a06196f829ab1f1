"""Group commit and deferred deletes of the persistence plugin (issue 14, point 6).

Concurrent publishers' stores join one store transaction; each publish still returns only once
its own message is committed, and a failed commit fails exactly the publishes in it. The delete
of a settled (acknowledged) or retired entry is deferred: it is written with the next store
write, by a timer at most ``FLUSH_DELAY`` later, once ``FLUSH_AT`` deletes wait, or at close.
Brokers run on the fake clock (``make_broker``), so the timer fires only when a test advances
it. The store is read from disk with ``mqkit inspect``'s reader and by reopening the directory.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache
import pytest
from support.process import Child

import mqkit
from mqkit.plugins.persistence.inspector import inspect_store

from .helpers import drain_ids

Factory = Callable[..., mqkit.Broker]
BIG = mqkit.SubOptions(buffer_size=100_000)
FLUSH_DELAY = 0.01
"""Seconds within which a deferred delete is written (the documented bound)."""
FLUSH_AT = 256
"""Deferred deletes that are written at once (the documented bound)."""
THREADS = 8
PER_THREAD = 60


def config(path: Path, **fields: Any) -> mqkit.Config:
    return mqkit.Config(persistence_path=str(path), **fields)


def ids(messages: list[mqkit.Message]) -> list[str]:
    return [m.id for m in messages]


def pending_on_disk(path: Path, topic: str = "t") -> list[str]:
    """The ack-required messages of ``topic`` the store holds on disk (what a restart finds)."""
    return [p.id for p in inspect_store(path).pending_acks if p.topic == topic]


def reopened_ids(make_broker: Factory, path: Path, topic: str = "t") -> list[str]:
    broker = make_broker("persistence", "ack", config=config(path))
    try:
        return ids(broker.recover_messages(topic, 0))
    finally:
        broker.close()


def run_publishers(
    publish: Callable[[int, int], None], threads: int = THREADS, per_thread: int = PER_THREAD
) -> dict[int, list[BaseException]]:
    """``threads`` threads call ``publish(k, i)`` for i in range(per_thread), started together.

    Returns each thread's exceptions (a publish that raised does not stop its thread).
    """
    start = threading.Barrier(threads)
    errors: dict[int, list[BaseException]] = defaultdict(list)

    def run(k: int) -> None:
        start.wait(timeout=60)
        for i in range(per_thread):
            try:
                publish(k, i)
            except mqkit.MQError as exc:
                errors[k].append(exc)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(worker.is_alive() for worker in workers)
    return errors


# -- group commit --------------------------------------------------------------------------------


def place(mid: str) -> list[int]:
    """The place of ``p3-17`` (or ``p3-17.2``, a batch member) in its publisher's sequence."""
    return [int(x) for x in mid.split("-", 1)[1].split(".")]


def in_publish_order(found: list[str]) -> bool:
    """Whether each publisher's messages in ``found`` are in its publish order."""
    by_publisher: defaultdict[str, list[str]] = defaultdict(list)
    for mid in found:
        by_publisher[mid.split("-", 1)[0]].append(mid)
    return all(mids == sorted(mids, key=place) for mids in by_publisher.values())


@pytest.mark.parametrize("kind", ["publish", "publish_batch", "mixed"])
def test_concurrent_publishers_are_each_stored_once_in_their_order(
    make_broker: Factory, tmp_path: Path, kind: str
) -> None:
    """Every message of every thread is stored once, in its publisher's order, also reopened."""
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe("t", BIG)

    def alone(k: int, i: int) -> bool:
        return kind == "publish" or (kind == "mixed" and (k + i) % 3 != 0)

    def publish(k: int, i: int) -> None:
        mid = f"p{k}-{i}"
        if alone(k, i):
            message_type = mqkit.AckMessage if i % 2 else mqkit.Message
            broker.publish("t", message_type(mid, {"k": k, "i": i}))
        else:
            broker.publish_batch("t", [mqkit.Message(f"{mid}.{j}", [k, i, j]) for j in range(3)])

    assert run_publishers(publish) == {}
    expected = Counter(
        mid
        for k in range(THREADS)
        for i in range(PER_THREAD)
        for mid in ([f"p{k}-{i}"] if alone(k, i) else [f"p{k}-{i}.{j}" for j in range(3)])
    )
    delivered = drain_ids(sub)
    stored = ids(broker.recover_messages("t", 0))
    broker.close()
    reopened = reopened_ids(make_broker, tmp_path)
    for found in (delivered, stored, reopened):
        assert Counter(found) == expected
        assert in_publish_order(found)


def test_a_message_that_cannot_be_stored_fails_only_its_own_publish(
    make_broker: Factory, tmp_path: Path
) -> None:
    """One publisher's messages cannot be encoded; the others', published meanwhile, are stored."""
    broker = make_broker("persistence", config=config(tmp_path))
    sub = broker.subscribe("t", BIG)

    def publish(k: int, i: int) -> None:
        data: object = object() if k == 0 else {"i": i}  # no JSON for a bare object
        if i % 2:
            broker.publish("t", mqkit.Message(f"p{k}-{i}", data))
        else:
            batch = [mqkit.Message(f"p{k}-{i}.{j}", {"j": j} if j else data) for j in range(2)]
            broker.publish_batch("t", batch)

    errors = run_publishers(publish)
    assert list(errors) == [0]
    assert len(errors[0]) == PER_THREAD
    assert all(isinstance(e, mqkit.SerializationError) for e in errors[0])
    stored = ids(broker.recover_messages("t", 0))
    assert not [m for m in stored if m.startswith("p0-")]
    delivered = drain_ids(sub)
    expected = set(delivered)  # what the others published, each once
    assert len(delivered) == len(expected) == (THREADS - 1) * (PER_THREAD // 2) * 3
    assert set(stored) == expected and len(stored) == len(expected)
    broker.close()
    assert sorted(reopened_ids(make_broker, tmp_path)) == sorted(expected)


def test_a_failed_commit_fails_exactly_its_publishes_and_stores_none_of_them(
    make_broker: Factory, tmp_path: Path
) -> None:
    """The disk fills up while threads publish: what returned is stored, what raised is not.

    A group commit fails whole: its publishes raise, and none of its messages is stored or
    delivered, whichever threads' publishes it holds. (SQLite's ``max_page_count`` holds per
    connection and the store has one per thread: each thread sets the same bound on its own.)
    """
    broker = make_broker("persistence", config=config(tmp_path))
    sub = broker.subscribe("t", BIG)
    broker.publish("t", mqkit.Message("before"))
    cache = broker.get_plugin("persistence").cache  # type: ignore[union-attr]
    ((pages,),) = cache._sql("PRAGMA page_count").fetchall()
    returned: list[str] = []
    lock = threading.Lock()

    def publish(k: int, i: int) -> None:
        if i == 0:  # room for a part of the messages, whichever thread writes
            cache._sql(f"PRAGMA max_page_count = {pages + 40}").fetchall()
        mid = f"p{k}-{i}"
        broker.publish("t", mqkit.Message(mid, "x" * 1500))
        with lock:
            returned.append(mid)

    errors = run_publishers(publish)
    failed = sum(len(e) for e in errors.values())
    assert failed and returned, (failed, len(returned))  # the disk filled up on the way
    assert all(isinstance(e, mqkit.PersistenceError) for es in errors.values() for e in es)
    assert len(returned) + failed == THREADS * PER_THREAD
    delivered = drain_ids(sub)
    assert sorted(delivered) == sorted(["before", *returned])
    assert sorted(ids(broker.recover_messages("t", 0))) == sorted(["before", *returned])
    broker.close()
    assert sorted(reopened_ids(make_broker, tmp_path)) == sorted(["before", *returned])


# -- deferred deletes ----------------------------------------------------------------------------


def test_an_acks_delete_is_written_with_the_next_write(
    make_broker: Factory, tmp_path: Path
) -> None:
    """Acknowledged, a message leaves the index at once and the disk with the next write."""
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t", BIG)
    broker.publish("t", mqkit.AckMessage("a", ack_id="ka"))
    broker.publish("t", mqkit.AckMessage("b", ack_id="kb"))
    sub.get_nowait()
    sub.ack("ka")
    assert ids(broker.recover_messages("t")) == ["b"]
    assert pending_on_disk(tmp_path) == ["a", "b"]  # a crash now would bring "a" back
    broker.publish("u", mqkit.Message("next"))  # a write: the delete joins its transaction
    assert pending_on_disk(tmp_path) == ["b"]


def test_deferred_deletes_are_written_by_the_timer(
    make_broker: Factory, tmp_path: Path, fake_clock: mqkit.FakeClock
) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t", BIG)
    broker.publish_batch("t", [mqkit.AckMessage(f"a{i}", ack_id=f"k{i}") for i in range(3)])
    broker.publish("t", mqkit.AckMessage("b", ack_id="kb"))
    for _ in range(4):
        sub.get_nowait()
    sub.ack("k1")
    sub.ack("kb")
    assert pending_on_disk(tmp_path) == ["a0", "a1", "a2", "b"]
    fake_clock.advance(FLUSH_DELAY)
    assert pending_on_disk(tmp_path) == ["a0", "a2"]  # a1: a tombstone in its batch
    broker.close()
    assert reopened_ids(make_broker, tmp_path) == ["a0", "a2"]


def test_many_deferred_deletes_are_written_at_once(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    sub = broker.subscribe_with_ack("t", BIG)
    for i in range(FLUSH_AT + 1):
        broker.publish("t", mqkit.AckMessage(f"m{i}", ack_id=f"k{i}"))
    for _ in range(FLUSH_AT + 1):
        sub.get_nowait()
    for i in range(FLUSH_AT - 1):
        sub.ack(f"k{i}")
    assert len(pending_on_disk(tmp_path)) == FLUSH_AT + 1  # no write, no timer yet
    sub.ack(f"k{FLUSH_AT - 1}")  # the FLUSH_AT-th: written now
    assert pending_on_disk(tmp_path) == [f"m{FLUSH_AT}"]


def test_close_writes_the_deferred_deletes(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", "ack", config=config(tmp_path, persistence_max_messages=2))
    sub = broker.subscribe_with_ack("t", BIG)
    broker.publish("t", mqkit.AckMessage("a", ack_id="ka"))
    broker.publish("t", mqkit.AckMessage("b", ack_id="kb"))
    for i in range(4):
        broker.publish("u", mqkit.Message(f"u{i}"))  # retention retires u0 and u1
    sub.get_nowait()
    sub.ack("ka")
    broker.close()
    assert pending_on_disk(tmp_path) == ["b"]
    assert reopened_ids(make_broker, tmp_path) == ["b"]
    assert reopened_ids(make_broker, tmp_path, "u") == ["u2", "u3"]


# -- crash: SIGKILL during concurrent group-committed publishes -----------------------------------

CHILD = """
import sys
import threading

import mqkit

path, run, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = threading.Lock()
config = mqkit.Config(enable_persistence=True, persistence_path=path, enable_ack_support=True)
broker = mqkit.Broker(config)
consumer = broker.subscribe_with_ack("c", mqkit.SubOptions(buffer_size=1_000_000))


def report(line):
    with lock:
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()


def publish(k):
    i = 0
    while True:
        mid = f"{run}p{k}-{i}"
        if k == 0:  # an ack-required message, consumed and acked at once
            broker.publish("c", mqkit.AckMessage(mid, mid))
            report("pub " + mid)
            consumer.ack(consumer.get(timeout=60).ack_id)
            report("acked " + mid)
        elif i % 4 == 3:
            broker.publish_batch("t", [mqkit.Message(f"{mid}.{j}", mid) for j in range(3)])
            report("pub " + " ".join(f"{mid}.{j}" for j in range(3)))
        else:
            broker.publish("t", mqkit.Message(mid, mid))
            report("pub " + mid)
        i += 1


for k in range(threads):
    threading.Thread(target=publish, args=(k,), daemon=True).start()
threading.Event().wait()  # until killed
"""


@pytest.mark.parametrize("lines", [1, 40, 400])
def test_sigkill_during_group_commits_loses_no_returned_publish(tmp_path: Path, lines: int) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    store = tmp_path / "store"
    child = Child([sys.executable, str(script), str(store), "r0", str(THREADS)])
    try:
        child.read_lines(lines, 60)
        output = child.kill()
    finally:
        child.stop_now()
    cfg = mqkit.Config(enable_persistence=True, persistence_path=str(store))
    with mqkit.Broker(cfg) as broker:
        assert broker.health_check().status == "healthy"
        recovered = ids(broker.recover_messages("t", 0)) + ids(broker.recover_messages("c", 0))
    assert len(recovered) == len(set(recovered)), "recovered twice"
    assert in_publish_order([m.removeprefix("r0") for m in recovered])
    published = [mid for line in output if line.startswith("pub ") for mid in line.split()[1:]]
    acked = {line.split()[1] for line in output if line.startswith("acked ")}
    # Lost: none, but publisher 0's last message, consumed and acked before its line came.
    consumed = [m for m in published if m.startswith("r0p0-")]
    lost = [m for m in published if m not in recovered and m not in acked]
    assert lost in ([], consumed[-1:]), f"published (the call returned) but lost: {lost}"
    # Recovered but never printed: only a publisher's interrupted call, the one after its last.
    last: defaultdict[str, int] = defaultdict(lambda: -1)
    for mid in published:
        last[mid.split("-", 1)[0]] = max(last[mid.split("-", 1)[0]], place(mid)[0])
    stray = [
        m for m in recovered if m not in published and place(m)[0] != last[m.split("-", 1)[0]] + 1
    ]
    assert stray == [], f"recovered, never printed, not from an interrupted call: {stray}"


def test_values_kept_in_files_by_earlier_stores_leave_with_their_files(
    make_broker: Factory, tmp_path: Path
) -> None:
    """A store written with values in files (diskcache's default for large ones) settles too."""
    broker = make_broker("persistence", "ack", config=config(tmp_path))
    for name in ("a", "b", "c"):
        broker.publish("t", mqkit.AckMessage(name, name * 5000, ack_id=name))
    broker.close()
    cache = diskcache.Cache(str(tmp_path / "store"), disk_min_file_size=1000)
    for key in list(cache.iterkeys()):
        cache.set(key, cache[key])  # the same value, now in a file
    cache.close()
    assert len(list((tmp_path / "store").rglob("*.val"))) == 3

    again = make_broker("persistence", "ack", config=config(tmp_path))
    sub = again.subscribe_with_ack("t", BIG)
    assert again.replay_messages("t") == 3
    for name in ("a", "b"):
        assert sub.get_nowait().data == name * 5000
        sub.ack(name)
    again.publish("u", mqkit.Message("next"))  # the deletes join this write
    assert pending_on_disk(tmp_path) == ["c"]
    assert len(list((tmp_path / "store").rglob("*.val"))) == 1
    again.close()
    assert reopened_ids(make_broker, tmp_path) == ["c"]
