"""Side by side: the same pika script against RabbitMQ and mqkit's AMQP gateway.

Each scenario of ``side_by_side.py`` (routing, errors and their reply codes, acks and
redelivery, dead letters, TTL, length limits, priorities, confirms, transactions, ...) runs
against both servers, and each record must equal RabbitMQ's, written down in ``EXPECTED``
from RabbitMQ 3.10.8: the ``rabbitmq`` case checks that record against the session's live
RabbitMQ node, the ``mqkit`` case holds mqkit's gateway (the ``mqkit_amqp`` fixture) to it -
so the client sees the same thing from both, and the mqkit cases need no RabbitMQ to run.
"""

from __future__ import annotations

import pytest

from .side_by_side import EXPECTED, SCENARIOS, run_scenario


def test_every_scenario_has_its_rabbitmq_record() -> None:
    assert len(SCENARIOS) >= 15
    assert sorted(EXPECTED) == sorted(SCENARIOS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("target", ["rabbitmq", "mqkit"])
def test_side_by_side(target: str, name: str, request: pytest.FixtureRequest) -> None:
    # mqkit_amqp: tests/protocols/amqp/conftest.py
    server = request.getfixturevalue("rabbitmq" if target == "rabbitmq" else "mqkit_amqp")
    assert run_scenario(name, server.url) == EXPECTED[name]
