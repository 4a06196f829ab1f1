"""Helpers for the command-line tests: run ``python -m mqkit`` as a user would."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.process import Child

ROOT = Path(__file__).resolve().parents[2]
MQKIT = [sys.executable, "-m", "mqkit"]
STARTUP_DEADLINE = 30.0
"""Seconds a started ``mqkit serve`` may take to print its URL (generous: CI machines vary)."""


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: wide enough that rich does not truncate tables."""
    env = dict(os.environ)
    env["COLUMNS"] = "200"
    env.pop("MQKIT_AUTOLOAD_PLUGINS", None)
    env.update(extra)
    return env


def flat(text: str) -> str:
    """``text`` with every run of white space made one space (rich wraps long lines)."""
    return " ".join(text.split())


def run_mqkit(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mqkit ARGS`` to completion and return what it printed."""
    return subprocess.run(
        [*MQKIT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=cwd,
        check=False,
    )


class Server(Child):
    """A ``mqkit serve`` subprocess whose output is read by a thread, line by line."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        super().__init__([*MQKIT, "serve", *args], env=env or cli_env())
        self.url = ""

    def wait_for_url(self, deadline: float = STARTUP_DEADLINE) -> str:
        """Wait until the server printed ``listening on http://...``; return that URL."""
        line = self.wait_for(
            lambda text: text.startswith("listening on "), deadline, "mqkit serve did not come up"
        )
        self.url = line.split()[2]
        return self.url


@pytest.fixture
def start_server() -> Iterator[Any]:
    """``start_server(args, env=None) -> Server``; every server is killed at the end if alive."""
    started: list[Server] = []

    def start(args: Sequence[str], env: dict[str, str] | None = None) -> Server:
        server = Server(args, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop_now()


def http(
    method: str, url: str, body: Any = None, timeout: float = 10
) -> tuple[int, str, dict[str, str]]:
    """Send one HTTP request; return (status, body text, headers) - errors included."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(), dict(exc.headers)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | list):
        return json.dumps(value)
    return repr(value)


def write_toml(path: Path, **values: Any) -> Path:
    """Write a TOML file of ``values`` (str, bool, int, float, list of str); a dict value is a
    table (a plugin's settings section: ``http={"port": 0}`` writes ``[http]``)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for key, table in values.items():
        if isinstance(table, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


MQTT_DEADLINE = 15.0
"""Seconds an MQTT exchange with the gateway may take (CONNACK, SUBACK, a message)."""


class MQTTClient:
    """A paho-mqtt 2.x client (MQTT 5) on its own network thread; what it receives is queued."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,  # a closed gateway stays closed for this client
        )
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.client.on_connect = lambda _c, _u, _f, _r, _p: self.connected.set()
        self.client.on_disconnect = lambda _c, _u, _f, _r, _p: self.disconnected.set()
        self.client.on_subscribe = lambda _c, _u, _m, _r, _p: self.subscribed.set()
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.connected.wait(MQTT_DEADLINE), f"no CONNACK from {host}:{port}"

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK."""
        self.subscribed.clear()
        self.client.subscribe(topic_filter, qos)
        assert self.subscribed.wait(MQTT_DEADLINE), "no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish and wait until the gateway acknowledged it (QoS 1)."""
        self.client.publish(topic, payload, qos).wait_for_publish(MQTT_DEADLINE)

    def get(self, deadline: float = MQTT_DEADLINE) -> paho.MQTTMessage:
        """The next message received (fails after ``deadline`` seconds)."""
        try:
            return self.messages.get(timeout=deadline)
        except queue.Empty:
            raise AssertionError(f"no MQTT message within {deadline} s") from None

    def close(self) -> None:
        """Disconnect (if still connected) and stop the network thread."""
        if self.connected.is_set() and not self.disconnected.is_set():
            self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_client() -> Iterator[Any]:
    """``mqtt_client(host, port, client_id) -> MQTTClient``; every client is closed at the end."""
    made: list[MQTTClient] = []

    def connect(host: str, port: int, client_id: str) -> MQTTClient:
        client = MQTTClient(host, port, client_id)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def mqtt_gateway(output: str) -> tuple[str, int]:
    """Where ``mqkit serve`` says its MQTT gateway listens (startup panel: ``mqtt HOST:PORT``)."""
    found = re.search(r"\bmqtt\s+(127\.0\.0\.1):(\d+)", flat(output))
    assert found is not None, f"no MQTT gateway in the startup output:\n{output}"
    return found[1], int(found[2])
