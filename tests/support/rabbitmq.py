"""The ``rabbitmq`` fixture: a private RabbitMQ node for the session (the AMQP reference server).

The node is :class:`RabbitMQNode` of ``benchmarks/servers.py`` (loaded from that file: the
benchmarks start the same node, and ``benchmarks/`` imports nothing from the tests). It boots
once per session (about 5 s) on free ports of 127.0.0.1 with its own directory, node name and
epmd, and is stopped, with everything it started, at the end. It has ``host``, ``port`` and
``url`` like the gateway's ``mqkit_amqp`` fixture, so a test can take either. Without Debian's
``rabbitmq-server`` the tests that use it are skipped (failed under ``.ci/run``).

Registered for the whole suite by ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from support.system import require_programs

__all__ = ["RabbitMQNode", "rabbitmq", "servers"]


def _load_servers() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "servers.py"
    name = "mqkit_benchmarks_servers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


servers = _load_servers()
RabbitMQNode = servers.RabbitMQNode


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQNode]:
    """A RabbitMQ node of this session: ``.host``, ``.port``, ``.url`` (guest/guest, vhost /)."""
    require_programs("rabbitmq-server", "rabbitmq-server", "epmd")
    node = RabbitMQNode()
    node.start()
    try:
        yield node
    finally:
        node.stop()
