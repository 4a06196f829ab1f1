"""The ``transactions`` plugin: held until commit, delivered together, ended exactly once."""

from __future__ import annotations

import contextlib
import threading

import pytest

import mqkit
from mqkit import (
    AckMessage,
    Config,
    Message,
    MessageExpiredError,
    PriorityMessage,
    TransactionNotFoundError,
    TTLMessage,
)
from mqkit.testing import FakeClock

from .helpers import drain, drain_ids, in_

TX_TIMEOUT = 10.0
TX = Config(transaction_timeout=TX_TIMEOUT)


@pytest.fixture
def broker(make_broker, hook_recorder) -> mqkit.Broker:
    """Transactions (timeout 10 s), TTL, ack and metrics on; FIFO buffers (no priority)."""
    return make_broker("transactions", "ttl", "ack", "metrics", config=TX, objects=[hook_recorder])


def test_messages_are_held_until_commit(broker: mqkit.Broker, hook_recorder) -> None:
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("a"), "tx")
    broker.publish_with_transaction("t", Message("b"), "tx")
    assert sub.stats().queue_len == 0
    assert hook_recorder.of("mqkit_published") == []
    assert broker.metrics().total_published == 0
    broker.commit_transaction("tx")
    assert drain_ids(sub) == ["a", "b"]


def test_commit_delivers_all_together_in_publish_order_across_topics_and_kinds(
    broker: mqkit.Broker, fake_clock: FakeClock, hook_recorder
) -> None:
    everything = broker.subscribe_pattern("orders.*")
    created = broker.subscribe("orders.created")
    paid = broker.subscribe("orders.paid")
    held = [
        ("orders.created", Message("plain", {"n": 1})),
        ("orders.paid", PriorityMessage("prio", priority=99)),
        ("orders.created", TTLMessage("ttl", expires_at=in_(fake_clock, 60))),
        ("orders.paid", AckMessage("ack", ack_id="tx-ack")),
    ]
    for topic, msg in held:
        broker.publish_with_transaction(topic, msg, "tx")
    hook_recorder.clear()
    broker.commit_transaction("tx")
    accepted = hook_recorder.of("mqkit_accept")
    published = hook_recorder.of("mqkit_published")
    assert len(accepted) == len(published) == 1  # one delivery step for the whole transaction
    assert [(m.topic, m.id) for m in accepted[0].messages] == [(t, m.id) for t, m in held]
    assert list(published[0].copies) == [2, 2, 2, 2]
    got = drain(everything)
    assert [(m.topic, m.id) for m in got] == [(t, m.id) for t, m in held]
    assert [type(m) for m in got] == [type(m) for _, m in held]
    assert drain_ids(created) == ["plain", "ttl"]
    assert drain_ids(paid) == ["prio", "ack"]
    assert broker.metrics().total_published == 4


def test_transactions_are_independent(broker: mqkit.Broker) -> None:
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("a1"), "a")
    broker.publish_with_transaction("t", Message("b1"), "b")
    broker.publish_with_transaction("t", Message("a2"), "a")
    broker.commit_transaction("b")
    assert drain_ids(sub) == ["b1"]
    broker.rollback_transaction("a")
    assert drain(sub) == []


def test_rollback_discards(broker: mqkit.Broker, fake_clock: FakeClock) -> None:
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("a"), "tx")
    broker.rollback_transaction("tx")
    fake_clock.advance(TX_TIMEOUT * 2)
    assert drain(sub) == []
    assert broker.metrics().total_published == 0


def test_timeout_from_the_first_publish_discards(
    broker: mqkit.Broker, fake_clock: FakeClock
) -> None:
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("a"), "tx")
    fake_clock.advance(TX_TIMEOUT - 1)
    broker.publish_with_transaction("t", Message("b"), "tx")  # does not extend the deadline
    fake_clock.advance(1)
    with pytest.raises(
        mqkit.TransactionTimeoutError, match="mq: transaction timeout: tx \\(timed out"
    ):
        broker.commit_transaction("tx")
    assert drain(sub) == []


def test_commit_just_before_the_timeout_delivers(broker: mqkit.Broker, fake_clock) -> None:
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("a"), "tx")
    fake_clock.advance(TX_TIMEOUT - 0.001)
    broker.commit_transaction("tx")
    fake_clock.advance(TX_TIMEOUT)
    assert drain_ids(sub) == ["a"]


def end(broker: mqkit.Broker, clock: FakeClock, how: str, tx_id: str) -> None:
    if how == "commit":
        broker.commit_transaction(tx_id)
    elif how == "rollback":
        broker.rollback_transaction(tx_id)
    else:
        clock.advance(TX_TIMEOUT)


@pytest.mark.parametrize("how", ["commit", "rollback", "timeout"])
@pytest.mark.parametrize("then", ["commit", "rollback"])
def test_an_ended_transaction_is_not_found(
    broker: mqkit.Broker, fake_clock: FakeClock, how: str, then: str
) -> None:
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("a"), "tx")
    end(broker, fake_clock, how, "tx")
    delivered = drain_ids(sub)
    # After a timeout the error is the subclass that says so (the seed's "not found" still holds).
    error = mqkit.TransactionTimeoutError if how == "timeout" else TransactionNotFoundError
    text = "timeout" if how == "timeout" else "not found"
    with pytest.raises(error, match=f"mq: transaction {text}: tx") as caught:
        getattr(broker, f"{then}_transaction")("tx")
    assert isinstance(caught.value, TransactionNotFoundError)
    assert delivered == (["a"] if how == "commit" else [])
    assert drain(sub) == []  # a second commit delivers nothing more


@pytest.mark.parametrize("op", ["commit_transaction", "rollback_transaction"])
def test_unknown_transaction_is_not_found(broker: mqkit.Broker, op: str) -> None:
    with pytest.raises(TransactionNotFoundError):
        getattr(broker, op)("never-begun")
    assert broker.metrics().total_errors == 1


def test_a_later_publish_with_an_ended_id_begins_a_new_transaction(broker: mqkit.Broker) -> None:
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("first"), "tx")
    broker.rollback_transaction("tx")
    broker.publish_with_transaction("t", Message("second"), "tx")
    broker.commit_transaction("tx")
    assert drain_ids(sub) == ["second"]


# -- the context manager ---------------------------------------------------------------------------


def test_with_block_commits_on_exit(broker: mqkit.Broker) -> None:
    sub = broker.subscribe("t")
    with broker.transaction() as tx:
        assert isinstance(tx, mqkit.Transaction) and tx.id
        tx.publish("t", Message("a"))
        tx.publish("t", Message("b"))
        assert sub.stats().queue_len == 0
    assert drain_ids(sub) == ["a", "b"]
    with pytest.raises(TransactionNotFoundError):
        broker.commit_transaction(tx.id)


def test_with_block_uses_the_given_id(broker: mqkit.Broker) -> None:
    sub = broker.subscribe("t")
    with broker.transaction("named") as tx:
        assert tx.id == "named"
        broker.publish_with_transaction("t", Message("direct"), "named")
        tx.publish("t", Message("via-tx"))
    assert drain_ids(sub) == ["direct", "via-tx"]


def test_with_block_rolls_back_on_an_exception(broker: mqkit.Broker) -> None:
    sub = broker.subscribe("t")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), broker.transaction("tx") as tx:
        tx.publish("t", Message("a"))
        raise Boom
    assert drain(sub) == []
    with pytest.raises(TransactionNotFoundError, match="rolled back"):
        broker.commit_transaction("tx")


def test_empty_with_block_is_fine(broker: mqkit.Broker, hook_recorder) -> None:
    sub = broker.subscribe("t")
    with broker.transaction() as tx:
        pass
    assert tx.id
    assert drain(sub) == []
    assert hook_recorder.of("mqkit_error") == []
    assert broker.metrics().total_errors == 0


def test_with_block_that_timed_out_raises_on_exit(
    broker: mqkit.Broker, fake_clock: FakeClock
) -> None:
    sub = broker.subscribe("t")
    with (
        pytest.raises(mqkit.TransactionTimeoutError, match="timed out"),
        broker.transaction() as tx,
    ):
        tx.publish("t", Message("a"))
        fake_clock.advance(TX_TIMEOUT)  # the block takes too long: nothing may look committed
    assert drain(sub) == []


# -- refused messages ------------------------------------------------------------------------------


def test_message_refused_at_publish_with_transaction_is_not_held(
    broker: mqkit.Broker, fake_clock: FakeClock
) -> None:
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("a"), "tx")
    with pytest.raises(MessageExpiredError):
        broker.publish_with_transaction("t", TTLMessage("old", expires_at=fake_clock.now()), "tx")
    with pytest.raises(mqkit.InvalidTopicError):
        broker.publish_with_transaction("", Message("no-topic"), "tx")
    with pytest.raises(mqkit.InvalidMessageError):
        broker.publish_with_transaction("t", Message(""), "tx")
    broker.publish_with_transaction("t", Message("b"), "tx")
    broker.commit_transaction("tx")
    assert drain_ids(sub) == ["a", "b"]
    assert broker.metrics().total_errors == 3


def test_refused_first_message_begins_nothing(broker: mqkit.Broker, fake_clock) -> None:
    with pytest.raises(MessageExpiredError):
        broker.publish_with_transaction("t", TTLMessage("old", expires_at=fake_clock.now()), "tx")
    with pytest.raises(TransactionNotFoundError):
        broker.commit_transaction("tx")


def test_message_expiring_before_commit_is_not_handed_out(
    broker: mqkit.Broker, fake_clock: FakeClock
) -> None:
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", TTLMessage("short", expires_at=in_(fake_clock, 1)), "tx")
    broker.publish_with_transaction("t", Message("plain"), "tx")
    fake_clock.advance(2)
    broker.commit_transaction("tx")
    assert drain_ids(sub) == ["plain"]
    assert broker.metrics().total_expired == 1


def test_closing_the_broker_rolls_back_open_transactions(make_broker, fake_clock) -> None:
    broker = make_broker("transactions", config=TX)
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("a"), "tx")
    broker.close()
    assert drain(sub) == []
    with pytest.raises(mqkit.BrokerClosedError):
        broker.commit_transaction("tx")


def test_with_block_publishing_after_its_timeout_raises(
    broker: mqkit.Broker, fake_clock: FakeClock
) -> None:
    sub = broker.subscribe("t")
    with pytest.raises(TransactionNotFoundError), broker.transaction() as tx:
        tx.publish("t", Message("a"))
        fake_clock.advance(TX_TIMEOUT)
        tx.publish("t", Message("b"))  # must not begin a new transaction in its place
    assert drain(sub) == []
    assert broker.metrics().total_errors == 1


def test_message_over_the_memory_limit_is_not_held(make_broker) -> None:
    broker = make_broker("transactions", "memory", config=TX.replace(max_memory_usage=1000))
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("small", "x" * 100), "tx")
    held = broker.memory_usage()
    with pytest.raises(mqkit.MemoryLimitExceededError):
        broker.publish_with_transaction("t", Message("big", "x" * 2000), "tx")
    assert broker.memory_usage() == held
    broker.commit_transaction("tx")
    assert drain_ids(sub) == ["small"]


# -- a timeout in the middle of a block (issue 13, point 9) ----------------------------------------


class _TimeoutDuring:
    """A real plugin whose ``mqkit_publish`` lets the transaction timeout fire while the
    message with id ``at`` is being held (between the caller's checks and the hold itself)."""

    def __init__(self, clock: FakeClock, at: str) -> None:
        self.clock = clock
        self.at = at

    @mqkit.hookimpl
    def mqkit_publish(self, message: Message) -> None:
        if message.id == self.at:
            self.clock.advance(TX_TIMEOUT)


def _publish_into(broker: mqkit.Broker, via: str, tx: mqkit.Transaction, msg: Message) -> None:
    if via == "tx":
        tx.publish("t", msg)
    else:
        broker.publish_with_transaction("t", msg, tx.id)


@pytest.mark.parametrize("via", ["tx", "publish_with_transaction"])
def test_a_timeout_between_two_publishes_ends_the_block_with_nothing_delivered(
    broker: mqkit.Broker, fake_clock: FakeClock, via: str
) -> None:
    sub = broker.subscribe("t")
    with pytest.raises(mqkit.TransactionTimeoutError) as caught, broker.transaction() as tx:
        _publish_into(broker, via, tx, Message("a"))
        fake_clock.advance(TX_TIMEOUT)
        with pytest.raises(mqkit.TransactionTimeoutError, match="timed out after 10 s"):
            _publish_into(broker, via, tx, Message("b"))
        _publish_into(broker, via, tx, Message("c"))  # still refused: the block exits with it
    assert tx.id in str(caught.value)
    assert drain(sub) == []
    assert broker.get_plugin("transactions").open_count() == (0, 0)


@pytest.mark.parametrize("via", ["tx", "publish_with_transaction"])
def test_a_timeout_firing_inside_a_publish_is_not_reopened(
    make_broker, fake_clock: FakeClock, via: str
) -> None:
    # The timeout fires after the publish's own checks, before the message is held: the
    # publish must not begin a new transaction under the timed-out id (2 of 3 delivered).
    broker = make_broker("transactions", config=TX, objects=[_TimeoutDuring(fake_clock, "b")])
    sub = broker.subscribe("t")
    with pytest.raises(mqkit.TransactionTimeoutError), broker.transaction() as tx:
        _publish_into(broker, via, tx, Message("a"))
        with pytest.raises(mqkit.TransactionTimeoutError):
            _publish_into(broker, via, tx, Message("b"))
        _publish_into(broker, via, tx, Message("c"))
    assert drain(sub) == []
    assert broker.get_plugin("transactions").open_count() == (0, 0)


def test_a_block_timing_out_inside_a_publish_stores_nothing(
    make_broker, fake_clock: FakeClock, tmp_path
) -> None:
    config = TX.replace(persistence_path=str(tmp_path))
    broker = make_broker(
        "transactions", "persistence", config=config, objects=[_TimeoutDuring(fake_clock, "b")]
    )
    with pytest.raises(mqkit.TransactionTimeoutError), broker.transaction() as tx:
        for name in "abc":
            with contextlib.suppress(mqkit.TransactionTimeoutError):
                tx.publish("t", Message(name))
    assert broker.recover_messages("t") == []


def test_a_timeout_firing_inside_a_commit_loses_to_the_commit(
    make_broker, fake_clock: FakeClock
) -> None:
    class TimeoutDuringCommit:
        @mqkit.hookimpl
        def mqkit_accept(self) -> None:
            fake_clock.advance(TX_TIMEOUT)

    broker = make_broker("transactions", config=TX, objects=[TimeoutDuringCommit()])
    sub = broker.subscribe("t")
    with broker.transaction() as tx:
        for name in "abc":
            tx.publish("t", Message(name))
    assert drain_ids(sub) == ["a", "b", "c"]


def test_a_timed_out_id_is_refused_until_its_end_is_reported(
    broker: mqkit.Broker, fake_clock: FakeClock
) -> None:
    sub = broker.subscribe("t")
    broker.publish_with_transaction("t", Message("a"), "tx")
    fake_clock.advance(TX_TIMEOUT)
    for _ in range(2):
        with pytest.raises(mqkit.TransactionTimeoutError, match="tx \\(timed out after 10 s\\)"):
            broker.publish_with_transaction("t", Message("b"), "tx")
    with pytest.raises(mqkit.TransactionTimeoutError):
        broker.rollback_transaction("tx")  # the caller has now been told: the id is free again
    broker.publish_with_transaction("t", Message("again"), "tx")
    broker.commit_transaction("tx")
    assert drain_ids(sub) == ["again"]


def test_a_timed_out_id_is_forgotten_after_a_while(
    broker: mqkit.Broker, fake_clock: FakeClock
) -> None:
    plugin = broker.get_plugin("transactions")
    sub = broker.subscribe("t")
    for n in range(50):  # one timed-out transaction per second: the memory of them stays bounded
        broker.publish_with_transaction("t", Message("a"), f"tx-{n}")
        fake_clock.advance(1)
    fake_clock.advance(TX_TIMEOUT)
    assert 0 < plugin.timed_out_count() <= 50
    fake_clock.advance(max(TX_TIMEOUT, 60))
    assert plugin.timed_out_count() == 0
    broker.publish_with_transaction("t", Message("new"), "tx-0")  # a new transaction
    broker.commit_transaction("tx-0")
    assert drain_ids(sub) == ["new"]


def test_with_blocks_racing_their_timeout_deliver_all_or_nothing() -> None:
    # Real clock and timer thread: the timeout lands anywhere in the blocks, also between the
    # three publishes and inside commit. Each block delivers its three messages or none.
    blocks, threads = 250, 2
    cfg = Config(enable_transactions=True, transaction_timeout=0.0005)
    results: list[tuple[str, str]] = []  # (block id, "committed" or "timed out")
    lock = threading.Lock()
    with mqkit.Broker(cfg) as broker:
        sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=blocks * threads * 3 + 1))

        def work(worker: int) -> None:
            for n in range(blocks):
                block = f"{worker}-{n}"
                try:
                    with broker.transaction() as tx:
                        for part in range(3):
                            tx.publish("t", Message(f"{block}/{part}"))
                except mqkit.TransactionTimeoutError:
                    outcome = "timed out"
                else:
                    outcome = "committed"
                with lock:
                    results.append((block, outcome))

        workers = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        assert not any(w.is_alive() for w in workers)
        got: dict[str, list[str]] = {}
        for m in drain(sub):
            block, part = m.id.split("/")
            got.setdefault(block, []).append(part)
    assert len(results) == blocks * threads
    for block, outcome in results:
        assert got.get(block, []) == (["0", "1", "2"] if outcome == "committed" else []), block
