"""500 concurrent clients on loopback, each publishing (QoS 1) and subscribing for 30 s."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from .helpers import Srv

CLIENTS = 500
SECONDS = 30
RATE = 2.0  # publishes per client per second: 1,000 in and 1,000 out per second in all


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_500_clients_lose_nothing_and_memory_stays_bounded(srv: Srv) -> None:
    script = Path(__file__).with_name("load_client.py")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            srv.host,
            str(srv.port),
            str(CLIENTS),
            str(SECONDS),
            str(RATE),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            samples.append(rss_bytes())

    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert json.loads(first) == {"connected": CLIENTS}, first
        assert len(srv.plugin.server.connections) == CLIENTS
        sampler = threading.Thread(target=sample)
        sampler.start()
        out, err = proc.communicate(timeout=SECONDS + 120)
    finally:
        done.set()
        proc.kill()
    sampler.join()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["acked"] >= CLIENTS * SECONDS * RATE * 0.5, result
    assert result["missing_count"] == 0, result
    # Memory: after the first seconds the gateway holds only what is in flight.
    warm = samples[len(samples) // 4 :]
    assert max(warm) - min(warm) < 64 * 1024 * 1024, [s // 2**20 for s in samples]
