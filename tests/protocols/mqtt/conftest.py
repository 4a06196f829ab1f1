from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.system import require_programs

from .helpers import Paho, Srv, make_server


@pytest.fixture
def server_factory() -> Iterator[Callable[..., Srv]]:
    made: list[Srv] = []

    def make(**config: Any) -> Srv:
        srv = make_server(**config)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.broker.close()


@pytest.fixture
def srv(server_factory: Callable[..., Srv]) -> Srv:
    return server_factory()


@pytest.fixture
def paho_factory() -> Iterator[Callable[..., Paho]]:
    made: list[Paho] = []

    def make(srv: Srv, client_id: str = "", **kw: Any) -> Paho:
        client = Paho(srv, client_id, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def mosquitto_clients() -> None:
    """The test drives ``mosquitto_pub``/``mosquitto_sub`` (a skip naming the package if absent)."""
    require_programs("mosquitto-clients", "mosquitto_pub", "mosquitto_sub")
