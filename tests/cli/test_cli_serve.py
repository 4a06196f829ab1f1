"""``mqkit serve`` end to end: a subprocess, scraped over HTTP while messages flow, then stopped."""

from __future__ import annotations

import json
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import mqkit

from .conftest import ROOT, cli_env, flat, http, mqtt_gateway, run_mqkit, write_toml

STOP_DEADLINE = 5.0
"""The issue's bound: after SIGTERM the service exits within 5 s."""


def counts(text: str, counter: str = "published") -> dict[str, float]:
    """``mqkit_messages_<counter>_total`` by topic, from a Prometheus text page."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == f"mqkit_messages_{counter}":
            for sample in family.samples:
                if sample.name == f"mqkit_messages_{counter}_total":
                    found[sample.labels["topic"]] = sample.value
    return found


def serve_config(tmp_path: Path, **extra: Any) -> tuple[Path, Path]:
    store = tmp_path / "store"
    values: dict[str, Any] = {
        "http": {"port": 0},
        "enable_persistence": True,
        "persistence_path": str(store),
        "enable_ack_support": True,
        "enable_dead_letter_queue": True,
        "dead_letter_topic": "dlq",
        # the consumer: an MQTT client subscribed through the gateway serve starts
        "enable_mqtt": True,
        "mqtt_port": 0,
    }
    values.update(extra)
    return write_toml(tmp_path / "mqkit.toml", **values), store


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_scraped_while_messages_flow_then_stopped_without_loss(
    tmp_path: Path, start_server: Any, mqtt_client: Any, stop_signal: signal.Signals
) -> None:
    config, store = serve_config(tmp_path)
    server = start_server(["--config", str(config)])
    url = server.wait_for_url()
    assert url.startswith("http://127.0.0.1:")
    # A consumer: an MQTT client subscribed through the gateway (HTTP publishes, MQTT consumes).
    consumer = mqtt_client(*mqtt_gateway(server.output()), "consumer")
    consumer.subscribe("orders", qos=1)

    total = 150
    accepted: list[str] = []
    failures: list[tuple[int, str]] = []

    def publish() -> None:
        for i in range(total):
            body = {"id": f"o-{i}", "data": {"n": i}, "priority": i % 5 * 10}
            status, text, _ = http("POST", f"{url}/publish/orders", body)
            if status == 201:
                accepted.append(json.loads(text)["id"])
            else:
                failures.append((status, text))

    publisher = threading.Thread(target=publish)
    publisher.start()
    scrapes: list[tuple[float, float]] = []
    while publisher.is_alive() or not scrapes:
        status, text, headers = http("GET", f"{url}/healthz")
        assert status == 200, text
        health = json.loads(text)
        assert health["status"] == "healthy"
        assert headers["Content-Type"] == "application/json"
        status, text, headers = http("GET", f"{url}/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        published, delivered = counts(text), counts(text, "delivered")
        scrapes.append((published.get("orders", 0.0), delivered.get("orders", 0.0)))
    publisher.join()
    assert failures == []
    assert accepted == [f"o-{i}" for i in range(total)]
    # Counters never go back. (While messages flow, a scrape may show delivered a little ahead
    # of published: a consumer can take a message before the publishing thread counted it.)
    assert [p for p, _ in scrapes] == sorted(p for p, _ in scrapes)
    assert [d for _, d in scrapes] == sorted(d for _, d in scrapes)
    # The consumer got every message (priority may reorder what waited in its buffer).
    got = [json.loads(consumer.get().payload) for _ in range(total)]
    assert sorted(m["n"] for m in got) == list(range(total))
    status, text, _ = http("GET", f"{url}/metrics")
    assert counts(text) == {"orders": float(total)}
    assert counts(text, "delivered") == {"orders": float(total)}
    assert "mqkit_health_status" in text and "mqkit_delivery_latency_seconds" in text
    health = json.loads(http("GET", f"{url}/healthz")[1])
    assert health["metrics"]["total_published"] == total
    assert health["metrics"]["total_delivered"] == total

    server.proc.send_signal(stop_signal)
    assert server.wait(timeout=STOP_DEADLINE) == 0, server.stderr
    out = flat(server.output())
    assert f"received {stop_signal.name}" in out
    assert "stopped cleanly" in out and "gateways closed" in out
    assert consumer.disconnected.wait(STOP_DEADLINE)  # the gateway closed its connection

    # Nothing persisted is lost: every accepted message is in the store, in publish order.
    report = json.loads(run_mqkit("inspect", "--json", str(store)).stdout)
    assert report["locked_by"] is None
    assert report["total_messages"] == total
    cfg = mqkit.Config(enable_persistence=True, persistence_path=str(store))
    with mqkit.Broker(cfg) as broker:
        recovered = broker.recover_messages("orders", 0)
    assert [m.id for m in recovered] == accepted
    assert [m.data for m in recovered] == [{"n": i} for i in range(total)]
    assert all(isinstance(m, mqkit.PriorityMessage) for m in recovered)


def test_healthz_answers_503_when_the_broker_is_degraded(tmp_path: Path, start_server: Any) -> None:
    # The sample plugin of tests/fixtures, enabled by name through its entry point, raises in a
    # notification hook when asked to: the broker counts it and reports "degraded".
    fixture = ROOT / "tests" / "fixtures" / "sample_plugin"
    config = write_toml(tmp_path / "mqkit.toml", http={"port": 0}, plugins=["sample"])
    server = start_server(["-c", str(config)], env=cli_env(PYTHONPATH=str(fixture)))
    url = server.wait_for_url()
    assert http("GET", f"{url}/healthz")[0] == 200
    status, _, _ = http(
        "POST", f"{url}/publish/events", {"id": "e-1", "meta": {"sample": "crash-published"}}
    )
    assert status == 201  # a failing notification hook does not fail the publish
    status, text, _ = http("GET", f"{url}/healthz")
    assert status == 503
    health = json.loads(text)
    assert health["status"] == "degraded"
    assert any("sample" in problem for problem in health["problems"])
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait(timeout=STOP_DEADLINE) == 0


def test_publish_endpoint_reports_bad_requests(tmp_path: Path, start_server: Any) -> None:
    server = start_server(["--port", "0"])
    url = server.wait_for_url()
    status, text, _ = http("POST", f"{url}/publish/%20", {"id": "x"})
    assert status == 422 and "invalid topic" in json.loads(text)["error"]
    status, text, _ = http("POST", f"{url}/publish/t", {"id": "x", "colour": "red"})
    assert status == 400 and "colour" in json.loads(text)["error"]
    status, text, _ = http("POST", f"{url}/publish/t", {"ttl": -1})
    assert status == 400 and "ttl" in json.loads(text)["error"]
    status, text, _ = http("GET", f"{url}/nowhere")
    assert status == 404
    status, text, _ = http("POST", f"{url}/publish/t", {"data": [1, 2]})
    assert status == 201 and json.loads(text)["id"]  # an id is generated
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait(timeout=STOP_DEADLINE) == 0


def test_metrics_without_prometheus_client_names_the_extra(
    tmp_path: Path, start_server: Any
) -> None:
    # Make prometheus_client unimportable in the server process, as in an install without
    # the ``metrics`` extra.
    blocker = tmp_path / "block"
    (blocker / "prometheus_client").mkdir(parents=True)
    (blocker / "prometheus_client" / "__init__.py").write_text(
        "raise ImportError('prometheus_client is not installed', name='prometheus_client')\n"
    )
    server = start_server(["--port", "0"], env=cli_env(PYTHONPATH=str(blocker)))
    url = server.wait_for_url()
    status, text, _ = http("GET", f"{url}/metrics")
    assert status == 501
    assert "mqkit[metrics]" in text
    assert http("GET", f"{url}/healthz")[0] == 200
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait(timeout=STOP_DEADLINE) == 0
    assert "mqkit[metrics]" in flat(server.stderr)


def test_invalid_config_names_the_key_and_the_file(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "bad.toml", http={"port": 70000})
    result = run_mqkit("serve", "--config", str(config))
    assert result.returncode == 2
    err = flat(result.stderr)
    assert "http.port" in err and "70000" in err and str(config) in err

    config.write_text("max_topics = 'many'\n")
    result = run_mqkit("serve", "--config", str(config))
    assert result.returncode == 2
    assert "max_topics" in flat(result.stderr) and str(config) in flat(result.stderr)

    result = run_mqkit("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "missing.toml" in flat(result.stderr)


def test_a_port_in_use_is_a_clear_error(tmp_path: Path, start_server: Any) -> None:
    first = start_server(["--port", "0"])
    port = first.wait_for_url().rsplit(":", 1)[1]
    result = run_mqkit("serve", "--port", port)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in flat(result.stderr)
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(timeout=STOP_DEADLINE) == 0


def test_serve_starts_the_gateways_the_config_enables(
    tmp_path: Path, start_server: Any, mqtt_client: Any
) -> None:
    config = write_toml(tmp_path / "mqkit.toml", http={"port": 0}, enable_mqtt=True, mqtt_port=0)
    server = start_server(["--config", str(config)])
    url = server.wait_for_url()
    host, port = mqtt_gateway(server.output())

    # A real MQTT client on the gateway: what it publishes comes back to it, and what is
    # published over HTTP reaches it too.
    client = mqtt_client(host, port, "sensor-1")
    client.subscribe("sensors/#", qos=1)
    client.publish("sensors/kitchen", b"21.5", qos=1)
    message = client.get()
    assert (message.topic, message.payload, message.qos) == ("sensors/kitchen", b"21.5", 1)
    status, _, _ = http("POST", f"{url}/publish/sensors/hall", {"id": "h-1", "data": "19.0"})
    assert status == 201
    message = client.get()
    assert (message.topic, message.payload) == ("sensors/hall", b"19.0")
    status, text, _ = http("GET", f"{url}/metrics")
    assert counts(text) == {"sensors/kitchen": 1.0, "sensors/hall": 1.0}

    server.proc.send_signal(signal.SIGTERM)
    assert server.wait(timeout=STOP_DEADLINE) == 0, server.stderr
    assert "gateways closed" in flat(server.output())
    assert client.disconnected.wait(STOP_DEADLINE)  # the gateway closed the connection...
    with pytest.raises(ConnectionRefusedError):  # ... and no longer listens
        socket.create_connection((host, port), timeout=5).close()
