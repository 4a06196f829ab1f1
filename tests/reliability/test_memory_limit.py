"""The memory limit under 8 concurrent publisher threads, with persistence on.

Eight threads publish as fast as they can to a broker whose ``max_memory_usage`` holds about
40 messages; a consumer drains a random handful each time a publisher was refused, so the usage
keeps meeting the limit from below while the publishers race for the last bytes. Throughout,
``memory_usage()`` and what the buffers really hold stay at or under the limit plus one call's
messages per publisher (the most that concurrent publishers may overshoot) and never below
zero. Once the publishers stopped, the usage is exactly what the buffers hold; once everything
is drained, it is 0, and the large buffer handed out every accepted message.

The shapes: one subscription with a large buffer, fed single publishes, or batches and
transactions too; and single publishes to the large buffer plus a small priority buffer (random
priorities, never drained while the publishers run) under each backpressure policy, which keeps
evicting, refusing, blocking or closing.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from plugins.helpers import drain

import mqkit

from .soak import Soak, trials

pytestmark = pytest.mark.soak

PUBLISHERS = 8
ATTEMPTS = 150
"""Publish calls per publisher thread (accepted or refused)."""
ROOM = 40
"""The limit, in messages (plus half a message: never an exact multiple)."""
DEADLINE = 60.0
"""Seconds the threads may take to finish (a loaded CI machine)."""
TOPIC = "mem"
MIXED = "batches+transactions"
BIGGEST_CALL = 3
"""The most messages one call publishes in the ``batches+transactions`` shape."""
SHAPES = ["single", MIXED, *(f"small-{policy.name.lower()}" for policy in mqkit.Backpressure)]


def message(publisher: int, i: int, priority: int) -> mqkit.PriorityMessage:
    """Every message has the same size: the id has a fixed width, the payload too."""
    return mqkit.PriorityMessage(f"p{publisher}-{i:05d}", "x" * 100, priority=priority)


def subscribe(broker: mqkit.Broker, shape: str) -> tuple[mqkit.Subscription, ...]:
    """The shape's subscriptions; the first is the large one the consumer drains."""
    subs = [broker.subscribe(TOPIC, mqkit.SubOptions(buffer_size=100_000))]
    if shape.startswith("small-"):
        policy = mqkit.Backpressure[shape.removeprefix("small-").upper()]
        options = mqkit.SubOptions(buffer_size=5, policy=policy, block_timeout=0.001)
        subs.append(broker.subscribe(TOPIC, options))
    return tuple(subs)


def message_bytes(shape: str) -> int:
    """What one published message adds to ``memory_usage()`` (all its buffered copies)."""
    with mqkit.Broker(mqkit.Config(max_memory_usage=10**9)) as broker:
        subs = subscribe(broker, shape)
        broker.publish(TOPIC, message(0, 0, 20))
        one = broker.memory_usage()
        for sub in subs:
            assert [m.id for m in drain(sub)] == ["p0-00000"]
        assert broker.memory_usage() == 0
        return one


def publish_call(broker: mqkit.Broker, messages: list[mqkit.PriorityMessage], how: int) -> None:
    """Publish ``messages``: alone (one message), as a batch (0) or in a transaction (1)."""
    if len(messages) == 1:
        broker.publish(TOPIC, messages[0])
    elif how == 0:
        broker.publish_batch(TOPIC, messages)
    else:
        with broker.transaction() as tx:
            for m in messages:
                tx.publish(TOPIC, m)


@pytest.mark.parametrize("trial", trials(2))
@pytest.mark.parametrize("shape", SHAPES)
def test_memory_limit_holds_under_concurrent_publishers(
    tmp_path: Path, soak: Soak, trial: int, shape: str
) -> None:
    rng = soak.rng()
    one = message_bytes(shape)
    limit = ROOM * one + one // 2
    call = BIGGEST_CALL if shape == MIXED else 1
    bound = limit + PUBLISHERS * call * one
    config = mqkit.Config(
        max_memory_usage=limit,
        enable_persistence=True,
        persistence_path=str(tmp_path),
        enable_transactions=shape == MIXED,
    )
    with mqkit.Broker(config) as broker:
        subs = subscribe(broker, shape)
        big = subs[0]
        copy = one // len(subs)  # the bytes of one buffered copy

        refused = threading.Event()
        stop = threading.Event()
        accepted: defaultdict[int, list[str]] = defaultdict(list)  # ids, by publisher
        samples: list[tuple[int, int]] = []  # (memory_usage(), bytes the buffers hold)
        received: list[mqkit.Message] = []
        refusals: list[int] = []  # the publisher of each refused call
        seeds = [rng.randrange(1 << 30) for _ in range(PUBLISHERS + 1)]

        def held() -> int:
            """The bytes the open buffers hold (a closed one's were given up at its close)."""
            return sum(s.stats().queue_len for s in subs if not s.closed) * copy

        def sample() -> None:
            samples.append((broker.memory_usage(), held()))

        def publish(k: int) -> None:
            chance = random.Random(seeds[k])
            i = 0
            for _ in range(ATTEMPTS):
                size = chance.randint(1, BIGGEST_CALL) if shape == MIXED else 1
                batch = [message(k, i + j, chance.choice([0, 10, 20, 30, 40])) for j in range(size)]
                i += size
                try:
                    publish_call(broker, batch, chance.randint(0, 1))
                except mqkit.MemoryLimitExceededError:
                    refusals.append(k)
                    refused.set()
                else:
                    accepted[k] += [m.id for m in batch]
                sample()

        def consume() -> None:
            chance = random.Random(seeds[-1])
            while not stop.is_set():
                if refused.wait(0.05):  # bounded: the loop also watches ``stop``
                    refused.clear()
                    for _ in range(chance.randint(1, 12)):
                        try:
                            received.append(big.get_nowait())
                        except TimeoutError:
                            break
                    sample()

        consumer = threading.Thread(target=consume)
        publishers = [threading.Thread(target=publish, args=(k,)) for k in range(PUBLISHERS)]
        consumer.start()
        for thread in publishers:
            thread.start()
        for thread in publishers:
            thread.join(DEADLINE)
        stop.set()
        consumer.join(DEADLINE)
        assert not any(t.is_alive() for t in [*publishers, consumer]), "threads still running"

        context = f"{soak.replay}: {shape}, limit {limit} bytes, one message {one} bytes"
        assert refusals, f"{context}: the limit was never reached"
        over = [s for s in samples if max(s) > bound]
        negative = [s for s in samples if s[0] < 0]
        assert over == negative == [], (
            f"{context}: of {len(samples)} samples (usage, bytes held), {len(over)} above the "
            f"limit + {PUBLISHERS * call} messages ({bound} bytes), e.g. {over[:3]}, and "
            f"{len(negative)} with a negative usage, e.g. {negative[:3]}"
        )

        assert broker.memory_usage() == held(), f"{context}: usage is not what the buffers hold"
        received += drain(big)
        for sub in subs[1:]:
            drain(sub)
        assert broker.memory_usage() == 0, f"{context}: usage after draining everything"

        # Nothing accepted was lost by the large buffer; each publisher's messages came out in
        # publish order within each priority level (the buffer orders by priority).
        got: defaultdict[tuple[str, int], list[str]] = defaultdict(list)
        for m in received:
            got[m.id.split("-")[0], m.priority].append(m.id)
        assert sorted(m.id for m in received) == sorted(i for ids in accepted.values() for i in ids)
        unordered = {key: ids for key, ids in got.items() if ids != sorted(ids)}
        assert unordered == {}, f"{context}: out of publish order within a priority level"
