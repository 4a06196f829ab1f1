"""``mqkit run module:broker``: an application's handlers as a service, stopped by a signal."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest
from support.process import Child

from .conftest import MQKIT, STARTUP_DEADLINE, cli_env, http, run_mqkit

STOP_DEADLINE = 30.0
"""Seconds the stopped service may take to exit (generous: CI machines vary)."""

APP = """
import attrs

import mqkit


@attrs.frozen
class Order:
    id: str
    qty: int


broker = mqkit.Broker()


@broker.subscriber("orders")
def on_order(order: Order) -> None:
    print(f"handled {order.id} x{order.qty}", flush=True)


@broker.subscriber("slow")
async def slow(name: str) -> None:
    print(f"slow started {name}", flush=True)
    with open("gate") as gate:  # a FIFO: blocks until the test writes to it
        gate.read()
    print(f"slow finished {name}", flush=True)


not_a_broker = Order("x", 1)
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "orderapp.py").write_text(textwrap.dedent(APP), encoding="utf-8")
    os.mkfifo(tmp_path / "gate")
    return tmp_path


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_the_handlers_answers_healthz_and_stops_on_a_signal(
    app_dir: Path, stop_signal: signal.Signals
) -> None:
    child = Child([*MQKIT, "run", "orderapp:broker", "--port", "0"], env=cli_env(), cwd=app_dir)
    try:
        line = child.wait_for(
            lambda text: text.startswith("listening on "), STARTUP_DEADLINE, "no URL"
        )
        url = line.split()[2]
        status, body, _ = http("GET", f"{url}/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "healthy"
        assert "handlers  2" in child.output()  # the startup panel counts them

        status, _, _ = http("POST", f"{url}/publish/orders", {"data": {"id": "a", "qty": 2}})
        assert status == 201
        child.wait_for(lambda text: text == "handled a x2\n", STARTUP_DEADLINE, "not handled")

        status, _, _ = http("POST", f"{url}/publish/slow", {"data": "s-1"})
        assert status == 201
        child.wait_for(lambda text: text.startswith("slow started"), STARTUP_DEADLINE, "no start")
        child.proc.send_signal(stop_signal)  # with a message in flight
        with open(app_dir / "gate", "w") as gate:  # let it finish
            gate.write("go\n")
        assert child.wait(STOP_DEADLINE) == 0, child.stderr
    finally:
        child.stop_now()
    output = child.output()
    assert "slow finished s-1" in output
    assert f"{stop_signal.name}: handlers stopped, in-flight messages finished" in output
    assert output.index("slow finished s-1") < output.index("stopped cleanly")
    assert "stopped cleanly: HTTP closed, broker closed" in " ".join(output.split())


@pytest.mark.parametrize(
    ("target", "text"),
    [
        ("nosuchmodule:broker", "cannot import 'nosuchmodule'"),
        ("orderapp:not_a_broker", "orderapp:not_a_broker is not a mqkit.Broker (got Order)"),
        ("orderapp:missing", "orderapp:missing is not a mqkit.Broker (no such attribute)"),
        ("orderapp:1x", "expected MODULE:BROKER (myapp:broker), got 'orderapp:1x'"),
    ],
)
def test_run_refuses_a_target_that_is_no_broker(app_dir: Path, target: str, text: str) -> None:
    done = run_mqkit("run", target, cwd=app_dir)
    assert done.returncode == 2, done.stderr
    assert text in " ".join(done.stderr.split())
