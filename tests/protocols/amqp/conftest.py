"""Fixtures of the AMQP gateway tests: a running mqkit broker with ``enable_amqp=True``.

``mqkit_amqp`` yields a :class:`AMQPServer` (``host``, ``port``, ``broker``, ``url``) of a broker
whose gateway listens on 127.0.0.1, port 0; ``amqp_server_factory`` makes more (other
settings, another config) and closes them all at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

import mqkit


@attrs.frozen
class AMQPServer:
    """A broker with its AMQP gateway started."""

    broker: mqkit.Broker
    host: str
    port: int

    @property
    def url(self) -> str:
        """The client URL of the default vhost as ``guest``."""
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"


def start_amqp(amqp: dict[str, Any] | None = None, **config: Any) -> AMQPServer:
    """A broker on port 0 with ``[amqp]`` settings ``amqp`` and ``Config`` fields ``config``."""
    settings = dict(config.pop("settings", {}))
    if amqp:
        settings["amqp"] = amqp
    cfg = mqkit.Config(enable_amqp=True, amqp_port=0, settings=settings, **config)
    broker = mqkit.Broker(cfg)
    try:
        host, port = broker.start_amqp_server()
    except BaseException:
        broker.close()
        raise
    return AMQPServer(broker, host, port)


@pytest.fixture
def amqp_server_factory() -> Iterator[Callable[..., AMQPServer]]:
    """``make(amqp=None, **config)``: more gateways; every one is closed at the end."""
    made: list[AMQPServer] = []

    def make(amqp: dict[str, Any] | None = None, **config: Any) -> AMQPServer:
        server = start_amqp(amqp, **config)
        made.append(server)
        return server

    yield make
    for server in made:
        server.broker.close()


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    """Close the raw test clients (``helpers.Raw``) a test made."""
    from .helpers import Raw

    yield
    while Raw.opened:
        Raw.opened.pop().close()


@pytest.fixture
def mqkit_amqp(amqp_server_factory: Callable[..., AMQPServer]) -> AMQPServer:
    """A running mqkit broker with its AMQP gateway on 127.0.0.1 (port 0)."""
    return amqp_server_factory()


@pytest.fixture
def conn(mqkit_amqp: AMQPServer) -> Iterator[pika.BlockingConnection]:
    """A pika connection to ``mqkit_amqp``, closed after the test."""
    from .helpers import connect

    c = connect(mqkit_amqp)
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn: pika.BlockingConnection) -> BlockingChannel:
    """A channel of ``conn``."""
    return conn.channel()
