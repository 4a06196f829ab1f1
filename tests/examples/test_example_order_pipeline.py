"""The order pipeline example: its scripted demo, and the same module run by ``mqkit run``."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request

from support.process import Child

from .conftest import EXAMPLES, run_example

DEADLINE = 30.0


def test_the_demo_ships_good_orders_and_dead_letters_the_others() -> None:
    result = run_example("order_pipeline.py")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert "shipped o-1: 2 x A-42 for 19.00" in out
    assert "shipped o-2: 1 x B-7 for 120.00" in out
    assert (
        "dead letter o-3: payload does not structure as Order: qty: expected an integer, got 'two'"
    ) in out
    assert "dead letter o-4: nacked after 3 attempts" in out
    assert out[-1] == "done: 4 orders, broker closed: True"
    # The failing order was logged with its traceback on each attempt.
    assert result.stderr.count("quantity must be positive, not 0") >= 3


def test_mqkit_run_serves_the_pipeline_and_stops_on_sigterm() -> None:
    env = dict(os.environ, COLUMNS="200")
    child = Child(
        [sys.executable, "-m", "mqkit", "run", "order_pipeline:broker", "--port", "0"],
        env=env,
        cwd=EXAMPLES,
    )
    try:
        line = child.wait_for(lambda text: text.startswith("listening on "), DEADLINE, "no URL")
        url = line.split()[2]
        body = json.dumps({"data": {"id": "o-9", "sku": "A-42", "qty": 3}}).encode()
        request = urllib.request.Request(f"{url}/publish/orders.new", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=DEADLINE) as response:
            assert response.status == 201
        child.wait_for(
            lambda text: text == "shipped o-9: 3 x A-42 for 28.50\n", DEADLINE, "not shipped"
        )
        child.proc.send_signal(signal.SIGTERM)
        assert child.wait(DEADLINE) == 0, child.stderr
    finally:
        child.stop_now()
    assert "stopped cleanly" in child.output()
