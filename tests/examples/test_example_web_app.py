"""The FastAPI example: requests publish events; background consumers handle them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from fastapi.testclient import TestClient

from .conftest import EXAMPLES, ROOT, load_example

DEADLINE = 15.0


def wait_for(predicate: Any, what: str, deadline: float = DEADLINE) -> Any:
    """Poll ``predicate()`` until it returns something truthy; fail after ``deadline`` s."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_web_app_in_process() -> None:
    module = load_example("web_app.py")
    with TestClient(module.app) as client:
        ids = []
        for sku, qty in (("A-42", 3), ("B-7", 1), ("A-42", 2)):
            response = client.post("/orders", json={"sku": sku, "qty": qty})
            assert response.status_code == 202
            ids.append(response.json()["id"])
        assert client.post("/orders", json={"sku": "", "qty": 1}).status_code == 422
        assert client.post("/orders", json={"sku": "BROKEN", "qty": 1}).status_code == 202

        stats = wait_for(
            lambda: (
                (s := client.get("/stats").json())["dead_letters"] and len(s["emails"]) == 3 and s
            ),
            "the consumers",
        )
        assert stats["emails"] == [f"customer@example.com: order {i} confirmed" for i in ids]
        assert stats["stock"] == {"A-42": -5, "B-7": -1, "BROKEN": -1}
        assert stats["dead_letters"] == [{"id": "order-4", "reason": "nacked after 3 attempts"}]
        assert stats["health"] == "healthy"
        shop = module.shop_of(module.app)
    assert shop.broker.closed  # the lifespan closed the broker with the app


def test_web_app_served_by_uvicorn() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "web_app.py"), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Uvicorn running on" in line:
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(DEADLINE), "".join(lines)
        url = re.search(r"http://127\.0\.0\.1:\d+", "".join(lines))
        assert url is not None
        base = url.group(0)
        request = urllib.request.Request(
            f"{base}/orders",
            data=json.dumps({"sku": "C-1", "qty": 4}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202

        def stats() -> dict[str, Any]:
            with urllib.request.urlopen(f"{base}/stats", timeout=10) as response:
                data: dict[str, Any] = json.load(response)
            return data

        done = wait_for(lambda: (s := stats())["emails"] and s["stock"] and s, "the consumers")
        assert done["stock"] == {"C-1": -4}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert "Application shutdown complete" in "".join(lines)
