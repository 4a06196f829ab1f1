"""A pool of worker threads sharing one queue, with acknowledgements and retries.

Run: ``python examples/worker_pool.py``

Four threads consume one subscription (competing consumers: each job goes to exactly one of
them). A worker acknowledges a job it finished; a job that fails is nacked and comes back with
``attempt`` raised by one; a worker that dies with a job in hand never acks it, so the ack
deadline brings the job back to another worker. A job that fails every time is given up after
``max_ack_retries`` redeliveries and lands in the dead letter queue with its reason.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter

import mqkit

JOBS = 20
WORKERS = 4
ALWAYS_FAILS = "job-13"  # a poison message
FAILS_ONCE = "job-7"  # a transient error: the retry succeeds
DIES_HOLDING = "job-3"  # its first worker vanishes without acking


def main() -> int:
    """Run the pool; return 0 when every job was handled as expected."""
    config = mqkit.Config(
        enable_ack_support=True,
        default_ack_timeout=0.5,  # seconds a worker has to ack before the job is redelivered
        max_ack_retries=3,  # redeliveries before a job is dead-lettered
        enable_dead_letter_queue=True,
        dead_letter_topic="jobs.dead",
    )
    done: Counter[str] = Counter()
    lock = threading.Lock()
    all_done = threading.Event()  # every job but the poison one was acknowledged

    def say(line: str) -> None:
        with lock:
            print(line, flush=True)

    with mqkit.Broker(config) as broker:
        queue = broker.subscribe_with_ack("jobs", mqkit.SubOptions(buffer_size=100))
        dead = broker.subscribe("jobs.dead")

        def worker(name: str) -> None:
            for job in queue:  # ends when the subscription is cancelled and drained
                ack_id = job.ack_id  # type: ignore[attr-defined]
                if job.id == DIES_HOLDING and job.attempt == 1:
                    say(f"{name}: took {job.id} and died without acking")
                    continue  # no ack, no nack: the deadline will redeliver it
                if job.id == ALWAYS_FAILS or (job.id == FAILS_ONCE and job.attempt == 1):
                    say(f"{name}: {job.id} failed on attempt {job.attempt}: nack")
                    queue.nack(ack_id)  # requeue: comes back with attempt + 1
                    continue
                queue.ack(ack_id)
                with lock:
                    done[job.id] += 1
                    if len(done) == JOBS - 1:
                        all_done.set()

        threads = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in range(WORKERS)]
        for thread in threads:
            thread.start()
        for i in range(JOBS):
            broker.publish_with_ack("jobs", mqkit.AckMessage(f"job-{i}", {"n": i}))

        letter = dead.get(timeout=10)  # the poison job, after 1 + 3 redeliveries
        all_done.wait(timeout=10)
        queue.cancel()
        for thread in threads:
            thread.join(timeout=10)
        metrics = broker.metrics()

    print(f"done: {len(done)} jobs acknowledged, each exactly once: {set(done.values()) == {1}}")
    print(
        f"dead letter: {letter.id} ({letter.meta['x-dead-letter-reason']}, "
        f"{letter.meta['x-attempts']} deliveries)"
    )
    print(
        f"metrics: acked {metrics.total_acked}, nacked {metrics.total_nacked}, "
        f"redelivered {metrics.total_redelivered}, dead-lettered {metrics.total_dead_lettered}"
    )
    ok = (
        len(done) == JOBS - 1
        and set(done.values()) == {1}
        and letter.id == ALWAYS_FAILS
        and letter.meta["x-dead-letter-reason"] == "nacked after 4 attempts"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
