"""A broker run as a long-lived service: what ``mqkit serve`` runs.

:class:`Service` builds a :class:`~mqkit.Broker` from a :class:`~mqkit.Config`, starts the
protocol gateways the config enables (``enable_mqtt``, ``enable_amqp``, through
``Broker.start_mqtt_server()``/``start_amqp_server()``), and serves HTTP on the ``[http]``
section's ``host``:``port`` (:class:`HTTPSettings`; loopback by default) from a thread:

- ``GET /healthz``: the :class:`~mqkit.HealthStatus` as JSON; HTTP 200 when ``healthy``,
  503 otherwise (``degraded``, ``closed``).
- ``GET /metrics``: the broker's metrics in the Prometheus text format (needs
  ``prometheus_client``: ``pip install 'mqkit[metrics]'``; without it the endpoint answers 501).
- ``POST /publish/<topic>``: publish one message given as JSON, ``{"id": ..., "data": ...,
  "type": ..., "meta": {...}, "priority": 30, "ttl": 60}`` (every key optional; an id is
  generated when missing). HTTP 201 once the broker accepted it - with persistence on, once it
  is stored; 400 for malformed JSON, 422 when the broker refuses the message, 503 when it is
  closed.

:meth:`Service.close` stops accepting requests, waits for the ones in flight, then closes the
broker (persistence flushed and released, gateways closed). :meth:`Service.run_until_signal`
does that on SIGINT or SIGTERM.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs

from mqkit.core.broker import Broker
from mqkit.core.config import Config
from mqkit.core.convert import unstructure
from mqkit.core.errors import BrokerClosedError, MQError
from mqkit.core.message import Message, PriorityMessage, PriorityTTLMessage, TTLMessage
from mqkit.core.plugins import PluginInfo
from mqkit.core.settings import Settings

__all__ = [
    "METRICS_EXTRA_HINT",
    "HTTPEndpoint",
    "HTTPSettings",
    "Service",
    "json_ready",
    "message_from_json",
    "prometheus_text",
]

log = logging.getLogger("mqkit.serve")

METRICS_EXTRA_HINT = "/metrics needs prometheus_client: pip install 'mqkit[metrics]'"
"""What ``/metrics`` answers (HTTP 501) when ``prometheus_client`` is not installed."""


@attrs.frozen(slots=True, kw_only=True)
class HTTPSettings(Settings):
    """The ``[http]`` section: where ``mqkit serve`` serves its HTTP endpoint."""

    host: str = "127.0.0.1"
    """Address of the HTTP endpoint (``/healthz``, ``/metrics``); loopback by default."""
    port: int = 8080
    """Port of the HTTP endpoint; ``0``: any free port."""

    def rules(self) -> list[tuple[str, bool, str]]:
        """The endpoint's checks (see :meth:`mqkit.Settings.rules`)."""
        return [
            ("host", not self.host.strip(), "cannot be empty"),
            ("port", not 0 <= self.port <= 65535, "must be between 0 (any free port) and 65535"),
        ]


class HTTPEndpoint:
    """The plugin that owns the ``[http]`` section; it has no hooks.

    :class:`Service` registers it, so that its broker builds and checks the section; the
    ``http`` entry point makes the section known to every broker (a config file read by
    ``mqkit serve`` may be used by ``Broker(...)`` too).
    """

    plugin_info = PluginInfo(
        name="http",
        description="the HTTP endpoint of mqkit serve",
        settings=HTTPSettings,
        section="http",
    )


_COUNTERS = (
    ("published", "Messages routed to subscriptions"),
    ("delivered", "Messages handed to a consumer"),
    ("dropped", "Messages dropped by a backpressure policy"),
    ("expired", "Messages whose TTL ran out before delivery"),
    ("acked", "Acknowledged deliveries"),
    ("nacked", "Rejected deliveries"),
    ("redelivered", "Redeliveries after a nack or a missed ack deadline"),
    ("dead_lettered", "Messages given up to the dead letter queue (by original topic)"),
    ("errors", "Failed broker operations"),
)
_HEALTH_STATES = ("healthy", "degraded", "closed")


def json_ready(value: Any) -> Any:
    """``value`` (a status record, say) as plain JSON-ready data, nested records included."""
    return unstructure(value)


def prometheus_text(broker: Broker) -> tuple[bytes, str]:
    """The broker's metrics in the Prometheus text exposition format, and its content type.

    Raises ``ImportError`` when ``prometheus_client`` (the ``metrics`` extra) is missing.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(broker))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Collector:
    """A prometheus_client collector reading the broker at each scrape."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Any]:
        """Yield every metric family, read from one metrics snapshot and one health check."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            Metric,
        )

        broker = self._broker
        health = broker.health_check()
        snap = broker.metrics()
        for name, doc in _COUNTERS:
            family = CounterMetricFamily(
                f"mqkit_messages_{name}", f"{doc}, by topic", labels=["topic"]
            )
            for topic, row in snap.topics.items():
                family.add_metric([topic], getattr(row, name))
            yield family
        latency = Metric(
            "mqkit_delivery_latency_seconds",
            "Publish-to-delivery latency (quantiles over the recent deliveries)",
            "summary",
        )
        for quantile, value in (("0.5", snap.p50_latency), ("0.99", snap.p99_latency)):
            latency.add_sample(
                "mqkit_delivery_latency_seconds", {"quantile": quantile}, float(value)
            )
        latency.add_sample(
            "mqkit_delivery_latency_seconds_sum",
            {},
            float(snap.average_latency * snap.total_delivered),
        )
        latency.add_sample("mqkit_delivery_latency_seconds_count", {}, float(snap.total_delivered))
        yield latency
        yield GaugeMetricFamily(
            "mqkit_delivery_latency_max_seconds", "Largest publish-to-delivery latency seen",
            value=snap.max_latency,
        )  # fmt: skip
        gauges: tuple[tuple[str, str, float], ...] = (
            ("mqkit_active_topics", "Topics and patterns with a subscription", snap.active_topics),
            ("mqkit_active_subscribers", "Live subscriptions", snap.active_subscribers),
            ("mqkit_memory_usage_bytes", "Estimated bytes the broker holds", health.memory_usage),
            ("mqkit_memory_limit_bytes", "max_memory_usage (0: no limit)", health.memory_limit),
            ("mqkit_uptime_seconds", "Seconds since the broker started", health.uptime),
        )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        dlq = broker.dead_letter_stats()
        yield GaugeMetricFamily(
            "mqkit_dead_letters", "Dead letters kept in the queue now", value=dlq.current_count
        )
        status = GaugeMetricFamily(
            "mqkit_health_status", "1 for the broker's health status", labels=["status"]
        )
        for state in _HEALTH_STATES:
            status.add_metric([state], 1.0 if health.status == state else 0.0)
        yield status
        yield GaugeMetricFamily(
            "mqkit_health_problems", "Problems health_check() reports", value=len(health.problems)
        )


def message_from_json(body: Mapping[str, Any], now: Callable[[], Any]) -> Message:
    """Build the message ``POST /publish/<topic>`` describes (see the module docstring).

    ``priority`` makes a :class:`~mqkit.PriorityMessage`, ``ttl`` (seconds) a
    :class:`~mqkit.TTLMessage`, both a :class:`~mqkit.PriorityTTLMessage`. Raises ``ValueError``
    for a malformed body.
    """
    known = {"id", "data", "type", "meta", "priority", "ttl"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; expected {sorted(known)}")
    msg_id = body.get("id") or uuid.uuid4().hex
    kind = body.get("type", "")
    meta = body.get("meta") or {}
    if not isinstance(msg_id, str) or not isinstance(kind, str):
        raise ValueError("id and type must be strings")
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise ValueError("meta must be an object of strings")
    priority, ttl = body.get("priority"), body.get("ttl")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise ValueError("priority must be an integer")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
        raise ValueError("ttl must be a positive number of seconds")
    fields: dict[str, Any] = {"type": kind, "meta": meta}
    data = body.get("data")
    if ttl is not None:
        expires = now() + timedelta(seconds=float(ttl))
        if priority is not None:
            return PriorityTTLMessage(msg_id, data, priority=priority, expires_at=expires, **fields)
        return TTLMessage(msg_id, data, expires_at=expires, **fields)
    if priority is not None:
        return PriorityMessage(msg_id, data, priority=priority, **fields)
    return Message(msg_id, data, **fields)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in flight
    block_on_close = True
    service: Service


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "mqkit"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        body = (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()
        self._send(status, body, "application/json")

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        broker = self.server.service.broker
        if path == "/healthz":
            health = broker.health_check()
            status = HTTPStatus.OK if health.status == "healthy" else HTTPStatus.SERVICE_UNAVAILABLE
            self._json(status, json_ready(health))
        elif path == "/metrics":
            try:
                body, content_type = prometheus_text(broker)
            except ImportError:
                self._send(
                    HTTPStatus.NOT_IMPLEMENTED, (METRICS_EXTRA_HINT + "\n").encode(), "text/plain"
                )
                return
            self._send(HTTPStatus.OK, body, content_type)
        elif path == "/":
            self._json(
                HTTPStatus.OK, {"endpoints": ["/healthz", "/metrics", "POST /publish/<topic>"]}
            )
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if not path.startswith("/publish/") or len(path) <= len("/publish/"):
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {path}"})
            return
        topic = unquote(path[len("/publish/") :])
        broker = self.server.service.broker
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            message = message_from_json(body, broker.clock.now)
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        try:
            broker.publish(topic, message)
        except BrokerClosedError as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        except MQError as exc:
            self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(exc)})
            return
        self._json(HTTPStatus.CREATED, {"id": message.id, "topic": topic.strip()})


class Service:
    """A broker, its enabled gateways and its HTTP endpoint; see the module docstring.

    ``Service(config)`` builds the broker (it raises what ``Broker(config)`` raises), or
    serves the given ``broker`` (``mqkit run``: an application's own);
    :meth:`start` starts the gateways and the HTTP server; :meth:`close` stops everything.
    """

    def __init__(
        self, config: Config, *, broker: Broker | None = None, http: HTTPSettings | None = None
    ) -> None:
        self.config = config
        """The configuration the service runs with."""
        self.broker = Broker(config, plugins=[HTTPEndpoint()]) if broker is None else broker
        """The broker the service runs."""
        self.http = self.broker.settings(HTTPSettings) if http is None else http
        """The ``[http]`` section the endpoint is served with."""
        self.gateways: dict[str, tuple[str, int]] = {}
        """Started gateways: protocol name -> bound ``(host, port)``."""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self.signal_name = ""
        """The name of the signal that stopped :meth:`run_until_signal`, if any."""

    def start(self) -> None:
        """Start the enabled gateways and the HTTP endpoint; on failure, close everything."""
        try:
            if self.config.enable_mqtt:
                self.gateways["mqtt"] = self.broker.start_mqtt_server()
            if self.config.enable_amqp:
                self.gateways["amqp"] = self.broker.start_amqp_server()
            server = _Server((self.http.host, self.http.port), _Handler)
            server.service = self
            thread = threading.Thread(
                target=server.serve_forever, name="mqkit-http", kwargs={"poll_interval": 0.1}
            )
            try:
                thread.start()
            except BaseException:
                server.server_close()
                raise
            self._server, self._thread = server, thread
        except BaseException:
            self.close()
            raise

    @property
    def http_address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` of the HTTP endpoint (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the service is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The base URL of the HTTP endpoint, ``http://127.0.0.1:8080``."""
        host, port = self.http_address
        return f"http://{host}:{port}"

    def request_stop(self, reason: str = "") -> None:
        """Ask :meth:`run_until_signal` to return (thread- and signal-safe)."""
        self.signal_name = self.signal_name or reason
        self._stop.set()

    def run_until_signal(self, ready: Callable[[], None] | None = None) -> str:
        """Block until SIGINT or SIGTERM (or :meth:`request_stop`); return the signal's name.

        ``ready`` is called once the signal handlers are installed: announce the service
        there, so a supervisor that reacts to the announcement with SIGTERM gets a clean
        stop rather than the default (fatal) signal action. Must be called from the main
        thread. The service is *not* closed here: call :meth:`close` afterwards.
        """

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if ready is not None:
                ready()
            while not self._stop.wait(0.5):
                pass
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        return self.signal_name

    def close(self) -> None:
        """Stop the HTTP endpoint (waiting for requests in flight), then close the broker.

        Closing the broker stops its plugins: the persistence store is flushed and its
        directory released, and the gateways close. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
        self.broker.close()
