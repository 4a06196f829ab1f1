"""The four backpressure policies (seed-spec §4.10), exact outcomes and the drop hook."""

from __future__ import annotations

import threading

import pytest

import mqkit

WAIT = 10.0
BP = mqkit.Backpressure


def publish_ids(broker: mqkit.Broker, topic: str, *names: str) -> None:
    for name in names:
        broker.publish(topic, mqkit.Message(name))


def drain(sub: mqkit.Subscription) -> list[str]:
    out = []
    while True:
        try:
            out.append(sub.get_nowait().id)
        except (TimeoutError, mqkit.SubscriptionClosedError):
            return out


def drops(recorder) -> list[tuple[str, str]]:
    return [(c.message.id, c.reason) for c in recorder.of("mqkit_drop")]


def test_policy_values() -> None:
    assert [p.value for p in BP] == [
        "drop_oldest",
        "drop_newest",
        "block_with_timeout",
        "close_subscriber",
    ]
    assert mqkit.SubOptions().policy is BP.DROP_OLDEST
    assert mqkit.SubOptions().block_timeout == pytest.approx(0.05)


# -- DROP_OLDEST -----------------------------------------------------------------------------------


def test_drop_oldest(make_broker, hook_recorder) -> None:
    broker = make_broker(objects=[hook_recorder])
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=2, policy=BP.DROP_OLDEST))
    publish_ids(broker, "t", "m1", "m2", "m3")
    assert sub.stats() == mqkit.SubscriptionStats(received=3, dropped=1, queue_len=2, queue_cap=2)
    assert drain(sub) == ["m2", "m3"]
    assert drops(hook_recorder) == [("m1", "drop_oldest")]
    assert hook_recorder.of("mqkit_drop")[0].subscription is sub


def test_drop_oldest_is_the_default(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=2))
    publish_ids(broker, "t", *(f"m{i}" for i in range(1, 7)))
    assert drain(sub) == ["m5", "m6"]
    assert sub.stats().dropped == 4


# -- DROP_NEWEST -----------------------------------------------------------------------------------


def test_drop_newest(make_broker, hook_recorder) -> None:
    broker = make_broker(objects=[hook_recorder])
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=1, policy=BP.DROP_NEWEST))
    publish_ids(broker, "t", "m1", "m2")
    assert sub.stats() == mqkit.SubscriptionStats(received=1, dropped=1, queue_len=1, queue_cap=1)
    assert drain(sub) == ["m1"]
    assert drops(hook_recorder) == [("m2", "drop_newest")]
    publish_ids(broker, "t", "m3")  # room again
    assert drain(sub) == ["m3"]


# -- BLOCK_WITH_TIMEOUT ----------------------------------------------------------------------------


def test_block_with_timeout_drops_after_the_timeout(make_broker, hook_recorder) -> None:
    broker = make_broker(objects=[hook_recorder])
    opts = mqkit.SubOptions(buffer_size=1, policy=BP.BLOCK_WITH_TIMEOUT, block_timeout=0.03)
    sub = broker.subscribe("t", opts)
    publish_ids(broker, "t", "m1")
    publish_ids(broker, "t", "m2")  # returns (after about 30 ms) without raising
    assert sub.stats() == mqkit.SubscriptionStats(received=1, dropped=1, queue_len=1, queue_cap=1)
    assert drain(sub) == ["m1"]
    assert drops(hook_recorder) == [("m2", "block_with_timeout")]


def test_block_with_timeout_lets_the_message_in_when_a_consumer_frees_space(make_broker) -> None:
    broker = make_broker()
    reached_put = threading.Event()

    def note(message: mqkit.Message) -> bool:  # runs in the publisher's thread, before buffering
        if message.id == "m2":
            reached_put.set()
        return True

    opts = mqkit.SubOptions(
        buffer_size=1, policy=BP.BLOCK_WITH_TIMEOUT, block_timeout=60, filter=note
    )
    sub = broker.subscribe("t", opts)
    publish_ids(broker, "t", "m1")
    published = threading.Event()

    def publisher() -> None:
        publish_ids(broker, "t", "m2")
        published.set()

    thread = threading.Thread(target=publisher)
    thread.start()
    assert reached_put.wait(WAIT)
    # The buffer is full and nobody consumes: the publisher cannot have returned.
    assert not published.wait(0.05)
    assert sub.get(timeout=WAIT).id == "m1"
    assert published.wait(WAIT)
    thread.join(WAIT)
    assert sub.get(timeout=WAIT).id == "m2"
    assert sub.stats() == mqkit.SubscriptionStats(
        received=2, dropped=0, queue_len=0, queue_cap=1, delivered=2
    )


def test_block_with_timeout_unblocks_on_cancel(make_broker, hook_recorder) -> None:
    broker = make_broker(objects=[hook_recorder])
    reached_put = threading.Event()

    def note(message: mqkit.Message) -> bool:
        if message.id == "m2":
            reached_put.set()
        return True

    opts = mqkit.SubOptions(
        buffer_size=1, policy=BP.BLOCK_WITH_TIMEOUT, block_timeout=60, filter=note
    )
    sub = broker.subscribe("t", opts)
    publish_ids(broker, "t", "m1")
    thread = threading.Thread(target=publish_ids, args=(broker, "t", "m2"))
    thread.start()
    assert reached_put.wait(WAIT)
    sub.cancel()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert drain(sub) == ["m1"]
    assert sub.stats().received == 1


def test_block_with_timeout_other_subscribers_still_get_it(make_broker) -> None:
    broker = make_broker()
    blocked = broker.subscribe(
        "t", mqkit.SubOptions(buffer_size=1, policy=BP.BLOCK_WITH_TIMEOUT, block_timeout=0.01)
    )
    free = broker.subscribe("t")
    publish_ids(broker, "t", "m1", "m2", "m3")
    assert drain(blocked) == ["m1"]
    assert drain(free) == ["m1", "m2", "m3"]


# -- CLOSE_SUBSCRIBER ------------------------------------------------------------------------------


def test_close_subscriber(make_broker, hook_recorder) -> None:
    broker = make_broker(objects=[hook_recorder])
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=1, policy=BP.CLOSE_SUBSCRIBER))
    publish_ids(broker, "t", "m1", "m2")
    assert sub.closed
    assert sub.stats() == mqkit.SubscriptionStats(received=1, dropped=1, queue_len=1, queue_cap=1)
    assert sub.get().id == "m1"
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get()
    assert drops(hook_recorder) == [("m2", "close_subscriber")]
    assert [c.subscription for c in hook_recorder.of("mqkit_unsubscribe")] == [sub]
    assert broker.topics() == []
    publish_ids(broker, "t", "m3")
    assert sub.stats().received == 1


def test_close_subscriber_leaves_other_subscribers(make_broker) -> None:
    broker = make_broker()
    fragile = broker.subscribe("t", mqkit.SubOptions(buffer_size=1, policy=BP.CLOSE_SUBSCRIBER))
    other = broker.subscribe("t")
    publish_ids(broker, "t", "m1", "m2", "m3")
    assert fragile.closed and not other.closed
    assert drain(other) == ["m1", "m2", "m3"]
    assert [m.id for m in fragile] == ["m1"]
    assert broker.topics() == ["t"]


def test_close_subscriber_iteration_ends(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=2, policy=BP.CLOSE_SUBSCRIBER))
    publish_ids(broker, "t", "m1", "m2", "m3")
    assert [m.id for m in sub] == ["m1", "m2"]


# -- every policy counts every publish -------------------------------------------------------------


@pytest.mark.parametrize("policy", list(BP), ids=lambda p: p.value)
def test_policies_with_room_drop_nothing(make_broker, policy: mqkit.Backpressure) -> None:
    broker = make_broker()
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=5, policy=policy, block_timeout=0.01))
    publish_ids(broker, "t", *(str(i) for i in range(5)))
    assert sub.stats() == mqkit.SubscriptionStats(received=5, dropped=0, queue_len=5, queue_cap=5)
    assert drain(sub) == [str(i) for i in range(5)]
    assert not sub.closed


@pytest.mark.parametrize(
    ("policy", "kept", "dropped"),
    [
        (BP.DROP_OLDEST, ["3", "4"], 3),
        (BP.DROP_NEWEST, ["0", "1"], 3),
        (BP.BLOCK_WITH_TIMEOUT, ["0", "1"], 3),
        (BP.CLOSE_SUBSCRIBER, ["0", "1"], 1),
    ],
    ids=lambda v: v.value if isinstance(v, BP) else None,
)
def test_policies_buffer_two_five_publishes(
    make_broker, policy: mqkit.Backpressure, kept: list[str], dropped: int
) -> None:
    broker = make_broker()
    sub = broker.subscribe("t", mqkit.SubOptions(buffer_size=2, policy=policy, block_timeout=0.001))
    publish_ids(broker, "t", *(str(i) for i in range(5)))
    assert sub.stats().dropped == dropped
    assert drain(sub) == kept


@pytest.mark.parametrize("priority", [False, True], ids=["fifo", "priority buffer"])
@pytest.mark.parametrize("policy", list(mqkit.Backpressure), ids=lambda p: p.value)
def test_a_dropping_subscription_logs_one_warning(
    policy: mqkit.Backpressure, priority: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The first drop is logged once, naming the topic, policy and buffer size; more drops in
    the same minute log nothing more."""
    config = mqkit.Config(enable_priority_queue=priority)
    opts = mqkit.SubOptions(policy=policy, block_timeout=0.0)
    with mqkit.Broker(config) as broker, caplog.at_level("WARNING", logger="mqkit"):
        sub = broker.subscribe("orders", opts)
        for i in range(16):
            broker.publish("orders", mqkit.Message(f"m{i}"))
        assert caplog.records == []  # a full buffer is not a drop
        for i in range(16, 100):
            broker.publish("orders", mqkit.Message(f"m{i}"))
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        text = warnings[0].getMessage()
        assert "'orders'" in text and "buffer of 16" in text and policy.value in text
        assert sub.stats().dropped >= 1
