"""MQTT-style filters in-process: ``subscribe_filter`` and ``@broker.subscriber`` (issue 16.3)."""

from __future__ import annotations

import threading

import pytest

import mqkit

TOPICS = (
    "sensors",
    "sensors/kitchen",
    "sensors/kitchen/temperature",
    "sensors/hall/temperature",
    "sensors/hall/door/temperature",
    "sensorsX/a/temperature",
    "$SYS/load",
    "sensors.kitchen.temperature",
)


def received(sub: mqkit.Subscription) -> list[str]:
    got = []
    while True:
        try:
            got.append(sub.get_nowait().topic)
        except TimeoutError:  # empty
            return got


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("sensors/+/temperature", ["sensors/kitchen/temperature", "sensors/hall/temperature"]),
        (
            "sensors/#",
            [
                "sensors",
                "sensors/kitchen",
                "sensors/kitchen/temperature",
                "sensors/hall/temperature",
                "sensors/hall/door/temperature",
            ],
        ),
        (
            "+/+/temperature",
            [
                "sensors/kitchen/temperature",
                "sensors/hall/temperature",
                "sensorsX/a/temperature",
            ],
        ),
        ("#", [t for t in TOPICS if not t.startswith("$")]),
        ("$SYS/#", ["$SYS/load"]),
        ("sensors/kitchen", ["sensors/kitchen"]),  # no wildcard: an exact topic
    ],
)
def test_a_filter_receives_what_mqtt_would_send(topic_filter: str, expected: list[str]) -> None:
    with mqkit.Broker() as broker:
        sub = broker.subscribe_filter(topic_filter, mqkit.SubOptions(buffer_size=64))
        for topic in TOPICS:
            broker.publish(topic, mqkit.Message(f"m-{topic}"))
        assert received(sub) == expected
        assert sub.topic == topic_filter


@pytest.mark.parametrize("bad", ["a/#/b", "a+/b", "a/b#", "sensors/*/+", "a/[x]/#", "", "  "])
def test_an_invalid_filter_is_refused_and_subscribes_nothing(bad: str) -> None:
    with mqkit.Broker() as broker:
        with pytest.raises(mqkit.InvalidTopicError) as info:
            broker.subscribe_filter(bad)
        assert broker.subscriptions() == []
        if bad.strip():
            assert repr(bad.strip()) in str(info.value)


def test_filters_patterns_and_exact_topics_live_side_by_side() -> None:
    with mqkit.Broker() as broker:
        opts = mqkit.SubOptions(buffer_size=64)
        by_filter = broker.subscribe_filter("orders/+", opts)
        also_filter = broker.subscribe_filter("orders/+", opts)
        by_glob = broker.subscribe_pattern("orders/*", opts)
        exact = broker.subscribe("orders/+", opts)  # a topic that happens to hold "+"
        broker.publish("orders/1", mqkit.Message("a"))
        broker.publish("orders/+", mqkit.Message("b"))
        assert received(by_filter) == ["orders/1", "orders/+"]
        assert received(also_filter) == ["orders/1", "orders/+"]
        assert received(by_glob) == ["orders/1", "orders/+"]
        assert received(exact) == ["orders/+"]
        by_filter.cancel()
        broker.publish("orders/2", mqkit.Message("c"))
        assert received(also_filter) == ["orders/2"]
        assert len(broker.routes("orders/2")) == 2


def test_a_handler_takes_an_mqtt_style_filter() -> None:
    with mqkit.Broker() as broker:
        seen: list[str] = []
        done = threading.Event()

        @broker.subscriber("sensors/+/temperature")
        def record(message: mqkit.Message) -> None:
            seen.append(message.topic)
            if len(seen) == 2:
                done.set()

        worker = threading.Thread(target=broker.run)
        for topic in TOPICS:
            broker.publish(topic, mqkit.Message(f"m-{topic}"))
        worker.start()
        assert done.wait(10)
        broker.close()
        worker.join(10)
        assert seen == ["sensors/kitchen/temperature", "sensors/hall/temperature"]
