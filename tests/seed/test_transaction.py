"""Port of the seed's ``transaction_test.go`` (seed-spec §4.6).

The Go tests read ``txManager.stats()`` (active transactions, buffered messages); here the same
numbers come from ``broker.get_plugin("transactions").open_count()``. Timeouts run on the fake
clock.
"""

from __future__ import annotations

import pytest

import mqkit
from mqkit.testing import FakeClock


@pytest.fixture
def tx_broker(make_broker) -> mqkit.Broker:
    return make_broker("transactions")


def open_count(broker: mqkit.Broker) -> tuple[int, int]:
    return broker.get_plugin("transactions").open_count()


def test_transaction_manager_basic(tx_broker: mqkit.Broker, drain) -> None:
    broker = tx_broker
    broker.publish_with_transaction("test-topic", mqkit.Message("msg-1"), "tx-1")
    broker.publish_with_transaction("test-topic", mqkit.Message("msg-2"), "tx-1")
    assert open_count(broker) == (1, 2)
    sub = broker.subscribe("test-topic")
    assert drain(sub) == []  # nothing before the commit
    broker.commit_transaction("tx-1")
    assert open_count(broker) == (0, 0)
    assert [m.id for m in drain(sub)] == ["msg-1", "msg-2"]  # publish order


def test_transaction_rollback(tx_broker: mqkit.Broker, drain) -> None:
    broker = tx_broker
    sub = broker.subscribe("test-topic")
    broker.publish_with_transaction("test-topic", mqkit.Message("msg-1"), "tx-rollback")
    broker.publish_with_transaction("test-topic", mqkit.Message("msg-2"), "tx-rollback")
    broker.rollback_transaction("tx-rollback")
    assert open_count(broker) == (0, 0)
    assert drain(sub) == []
    with pytest.raises(mqkit.TransactionNotFoundError):
        broker.commit_transaction("tx-rollback")


def test_transaction_timeout(make_broker, fake_clock: FakeClock, drain) -> None:
    broker = make_broker("transactions", config=mqkit.Config(transaction_timeout=0.1))
    sub = broker.subscribe("test-topic")
    broker.publish_with_transaction("test-topic", mqkit.Message("msg-1"), "tx-timeout")
    fake_clock.advance(0.09)
    assert open_count(broker) == (1, 1)
    fake_clock.advance(0.11)
    assert open_count(broker) == (0, 0)
    with pytest.raises(mqkit.TransactionNotFoundError, match="tx-timeout"):
        broker.commit_transaction("tx-timeout")
    assert drain(sub) == []


def test_transaction_not_found(tx_broker: mqkit.Broker) -> None:
    broker = tx_broker
    with pytest.raises(
        mqkit.TransactionNotFoundError, match=r"^mq: transaction not found: non-existent"
    ):
        broker.commit_transaction("non-existent")
    with pytest.raises(mqkit.TransactionNotFoundError):
        broker.rollback_transaction("non-existent")


def test_transaction_double_commit(tx_broker: mqkit.Broker, drain) -> None:
    broker = tx_broker
    sub = broker.subscribe("test-topic")
    broker.publish_with_transaction("test-topic", mqkit.Message("msg-1"), "tx-double")
    broker.commit_transaction("tx-double")
    with pytest.raises(mqkit.TransactionNotFoundError):
        broker.commit_transaction("tx-double")
    assert [m.id for m in drain(sub)] == ["msg-1"]  # delivered once


def test_transaction_disabled(make_broker) -> None:
    broker = make_broker()
    with pytest.raises(mqkit.TransactionNotSupportedError):
        broker.publish_with_transaction("test-topic", mqkit.Message("msg-1"), "tx-1")
    with pytest.raises(mqkit.TransactionNotSupportedError):
        broker.commit_transaction("tx-1")
    with pytest.raises(mqkit.TransactionNotSupportedError):
        broker.rollback_transaction("tx-1")


def test_transaction_concurrent(tx_broker: mqkit.Broker, run_concurrently, drain) -> None:
    broker = tx_broker
    sub = broker.subscribe("test-topic", mqkit.SubOptions(buffer_size=100))
    tx_ids = list("abcdefghij")

    def work(i: int) -> None:
        tx = tx_ids[i]
        for j in range(5):
            broker.publish_with_transaction("test-topic", mqkit.Message(f"{tx}-{j}"), tx)
        broker.commit_transaction(tx)

    run_concurrently(10, work)
    assert open_count(broker) == (0, 0)
    got = [m.id for m in drain(sub)]
    assert len(got) == 50
    for tx in tx_ids:  # each transaction's messages in its publish order
        assert [g for g in got if g.startswith(f"{tx}-")] == [f"{tx}-{j}" for j in range(5)]


def test_transaction_close(tx_broker: mqkit.Broker) -> None:
    broker = tx_broker
    sub = broker.subscribe("test-topic")
    broker.publish_with_transaction("test-topic", mqkit.Message("msg-1"), "tx-close")
    broker.close()
    # Go: ErrTransactionNotFound after Close (defect §5.16); mqkit: BrokerClosedError.
    with pytest.raises(mqkit.BrokerClosedError):
        broker.publish_with_transaction("test-topic", mqkit.Message("msg-2"), "tx-close")
    with pytest.raises(mqkit.BrokerClosedError):
        broker.commit_transaction("tx-close")
    with pytest.raises(mqkit.BrokerClosedError):
        broker.rollback_transaction("tx-close")
    assert open_count(broker) == (0, 0)  # the open transaction was rolled back
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get_nowait()  # and nothing of it was delivered


class _RefuseBatchWith:
    """A plugin that refuses, at the store step (``mqkit_accept``), any batch holding ``bad``."""

    def __init__(self, bad: str) -> None:
        self.bad = bad

    @mqkit.hookimpl
    def mqkit_accept(self, messages) -> None:
        if any(m.id == self.bad for m in messages):
            raise mqkit.PersistenceError.because(f"cannot store {self.bad!r}")


def test_transaction_commit_is_atomic(make_broker, drain) -> None:
    # Not a Go test: seed defect §5.6 (a failing commit had already delivered the messages
    # before the failure). mqkit checks every message before delivering any: a commit that
    # fails delivers nothing, and ends the transaction.
    broker = make_broker("transactions", objects=[_RefuseBatchWith("msg-2")])
    sub = broker.subscribe("test-topic")
    for name in ("msg-1", "msg-2", "msg-3"):
        broker.publish_with_transaction("test-topic", mqkit.Message(name), "tx-atomic")
    with pytest.raises(mqkit.PersistenceError):
        broker.commit_transaction("tx-atomic")
    assert drain(sub) == []
    assert open_count(broker) == (0, 0)
    with pytest.raises(mqkit.TransactionNotFoundError, match="commit failed"):
        broker.commit_transaction("tx-atomic")
