"""MQTT persistent sessions across SIGKILL: every acknowledged message reaches its subscriber.

A broker process (``python -m mqkit.protocols.mqtt.serve`` with persistence) has two persistent
subscribers, MQTT 5 (Session Expiry Interval) and MQTT 3.1.1 (``clean_session=0``), subscribed
to ``rel/#`` at QoS 2 and 1 and then offline. A publisher sends QoS 1 and QoS 2 messages; once a
random number of them were acknowledged (PUBACK; PUBCOMP, which follows the PUBREC), and a
random short time later, the broker is SIGKILLed and started again on the same directory. Each
subscriber reconnects: the CONNACK says session present, and every message acknowledged before
the kill arrives (at least once), then the subscription still delivers.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from protocols.mqtt.helpers import Paho
from support.process import Child

from .soak import Soak, trials

pytestmark = pytest.mark.soak

STARTUP = 60.0
"""Seconds the broker process may take to listen (a loaded CI machine)."""
DEADLINE = 10.0
"""Seconds for the acks awaited before the kill, and for the messages after the restart."""
SUBSCRIBERS = {"v5": 5, "v311": 4}
"""Name: MQTT protocol level (the subscription's QoS: 2 for MQTT 5, 1 for 3.1.1)."""
SERVE = [sys.executable, "-m", "mqkit.protocols.mqtt.serve"]
"""The standalone gateway (docs/mqtt.md): it prints ``listening HOST PORT``."""


def start_broker(store: Path) -> tuple[Child, tuple[str, int]]:
    """A broker process with the MQTT gateway on a free port and persistence in ``store``."""
    child = Child([*SERVE, "--port", "0", "--persistence", str(store)])
    line = child.wait_for(lambda text: text.startswith("listening "), STARTUP, "no broker")
    _, host, port = line.split()
    return child, (host, int(port))


def subscriber(address: tuple[str, int], name: str) -> Paho:
    """Connect the persistent subscriber ``name`` (its session kept 300 s after it leaves)."""
    version = SUBSCRIBERS[name]
    session: dict[str, Any] = {}
    if version == 5:
        session["properties"] = PahoProperties(PacketTypes.CONNECT)
        session["properties"].SessionExpiryInterval = 300
    return Paho(
        address, f"durable-{name}", version=version, clean=False, reconnect=False, **session
    )


@pytest.fixture
def cleanup() -> Iterator[list[Child | Paho]]:
    """Whatever a trial started: brokers are killed, clients closed, at the end."""
    started: list[Child | Paho] = []
    yield started
    for thing in reversed(started):
        if isinstance(thing, Child):
            thing.stop_now()
        else:
            thing.close()


def publish_until_killed(
    pub: Paho, broker: Child, count: int, kill_after: int, delay: float
) -> tuple[set[bytes], set[bytes]]:
    """Publish ``count`` QoS 1/2 messages; SIGKILL the broker after ``kill_after`` acks.

    Returns (every payload sent, the payloads acknowledged before the broker died).
    """
    acked: list[int] = []
    changed = threading.Condition()

    def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with changed:
            if not reason.is_failure:
                acked.append(mid)
            changed.notify_all()

    pub.client.on_publish = on_publish
    sent: dict[int, bytes] = {}
    for i in range(count):  # queued in paho: at most its in-flight window unacknowledged
        payload = f"m-{i:04d}".encode()
        qos = 1 + (i % 3 == 2)  # every third message at QoS 2
        sent[pub.client.publish(f"rel/{i % 4}", payload, qos=qos).mid] = payload
    with changed:
        assert changed.wait_for(lambda: len(acked) >= kill_after, DEADLINE), (
            f"{len(acked)} of {count} acknowledged within {DEADLINE} s"
        )
    # The kill instant: a random short time after the chosen ack (not a wait for anything).
    time.sleep(delay)
    broker.kill()
    pub.close()  # its network thread has read every ack the broker sent
    with changed:
        return set(sent.values()), {sent[mid] for mid in acked}


def receive(client: Paho, expected: set[bytes], deadline: float) -> set[bytes]:
    """What ``client`` receives until it has every ``expected`` payload or ``deadline`` ends."""
    got: set[bytes] = set()
    end = time.monotonic() + deadline
    while not expected <= got:
        left = end - time.monotonic()
        if left <= 0:
            break
        try:
            got.add(client.get(timeout=left).payload)
        except queue.Empty:
            break
    return got


@pytest.mark.parametrize("trial", trials(2))
def test_persistent_sessions_get_every_acknowledged_message_after_sigkill(
    tmp_path: Path, soak: Soak, trial: int, cleanup: list[Child | Paho]
) -> None:
    rng = soak.rng()
    store = tmp_path / "store"
    broker, address = start_broker(store)
    cleanup.append(broker)
    for name in SUBSCRIBERS:
        sub = subscriber(address, name)
        cleanup.append(sub)
        qos = 2 if SUBSCRIBERS[name] == 5 else 1
        assert [r.value for r in sub.subscribe("rel/#", qos)] == [qos]
        sub.close()  # DISCONNECT: the session stays, offline, and queues QoS 1/2 messages

    count = rng.randint(5, 60)
    kill_after = rng.randint(1, count)
    delay = rng.choice([0.0, rng.uniform(0, 0.002), rng.uniform(0, 0.02)])
    pub = Paho(address, "publisher", version=rng.choice([4, 5]), reconnect=False)
    cleanup.append(pub)
    sent, acked = publish_until_killed(pub, broker, count, kill_after, delay)

    broker, address = start_broker(store)
    cleanup.append(broker)
    subs = {name: subscriber(address, name) for name in SUBSCRIBERS}
    cleanup.extend(subs.values())
    present = {
        name: bool(sub.connack and sub.connack[0].session_present) for name, sub in subs.items()
    }
    end = time.monotonic() + DEADLINE
    got = {name: receive(sub, acked, end - time.monotonic()) for name, sub in subs.items()}
    summary = {
        name: f"session present {present[name]}, {len(acked & got[name])} of {len(acked)} "
        "acknowledged messages"
        for name in subs
    }
    assert all(present.values()) and all(acked <= got[name] for name in subs), (
        f"{soak.replay}: broker SIGKILLed {delay * 1000:.2f} ms after ack {kill_after} of "
        f"{count}; after the restart: {summary}"
    )
    assert all(got[name] <= sent for name in subs), got  # nothing that was never published

    # The subscriptions came back too: a new message reaches both.
    live = Paho(address, "publisher-2", reconnect=False)
    cleanup.append(live)
    live.publish("rel/live", b"after the restart", 1)
    for name, sub in subs.items():
        assert b"after the restart" in receive(sub, {b"after the restart"}, DEADLINE), name
