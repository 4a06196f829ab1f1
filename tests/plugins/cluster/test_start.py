"""Where a fan-out cluster subscription starts: now, the earliest retained, a stream id, a time."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

import mqkit
from mqkit.plugins.cluster.plugin import stream_key

from .conftest import RedisServer

Make = Callable[..., mqkit.Broker]


def entry_ids(server: RedisServer, topic: str) -> list[str]:
    client = redis.Redis.from_url(server.url)
    try:
        return [entry_id.decode() for entry_id, _ in client.xrange(stream_key("mqkit", topic))]
    finally:
        client.close()


def redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def drain(sub: mqkit.Subscription, count: int) -> list[str]:
    got = [sub.get(timeout=10).id for _ in range(count)]
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.3)
    return got


@pytest.mark.parametrize("start", ["now", "$"])
def test_now_is_what_is_published_after_the_subscribe(cluster_broker: Make, start: str) -> None:
    a = cluster_broker("a")
    a.publish_to_cluster("t", mqkit.Message("old"))
    sub = a.subscribe_from_cluster("t", start=start)
    a.publish_to_cluster("t", mqkit.Message("new"))
    assert drain(sub, 1) == ["new"]


def test_earliest_is_every_retained_message_then_the_new_ones(cluster_broker: Make) -> None:
    a, b = cluster_broker("a"), cluster_broker("b")
    a.publish_batch_to_cluster("t", [mqkit.Message(f"old{i}") for i in range(3)])
    sub = b.subscribe_from_cluster("t", start="earliest")
    a.publish_to_cluster("t", mqkit.Message("new"))
    assert drain(sub, 4) == ["old0", "old1", "old2", "new"]


def test_earliest_on_a_topic_nobody_published_to_yet(cluster_broker: Make) -> None:
    a = cluster_broker("a")
    sub = a.subscribe_from_cluster("fresh", start="earliest")
    a.publish_to_cluster("fresh", mqkit.Message("first"))
    assert drain(sub, 1) == ["first"]


def test_a_stream_id_starts_after_that_entry(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a")
    a.publish_batch_to_cluster("t", [mqkit.Message(f"m{i}") for i in range(5)])
    ids = entry_ids(redis_server, "t")
    sub = a.subscribe_from_cluster("t", start=ids[1])  # resume after the second one
    assert drain(sub, 3) == ["m2", "m3", "m4"]


def test_a_time_in_milliseconds_starts_at_that_time(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a")
    a.publish_to_cluster("t", mqkit.Message("m0"))
    first_ms = int(entry_ids(redis_server, "t")[0].split("-")[0])
    client = redis.Redis.from_url(redis_server.url)
    try:  # the next entries get a later millisecond than m0's (ids are Redis's clock)
        while redis_ms(client) <= first_ms:
            pass
    finally:
        client.close()
    for i in range(1, 5):
        a.publish_to_cluster("t", mqkit.Message(f"m{i}"))
    ms = entry_ids(redis_server, "t")[1].split("-")[0]
    sub = a.subscribe_from_cluster("t", start=ms)  # m1 and all after it, m1 included
    assert drain(sub, 4) == ["m1", "m2", "m3", "m4"]


@pytest.mark.parametrize(
    "start",
    ["", "later", "EARLIEST", "1-2-3", "-1", "1-", "-", "abc-1", " 1", "1.5", "١٢", str(2**64)],
)
def test_an_invalid_start_is_refused_before_anything_is_subscribed(
    cluster_broker: Make, start: str
) -> None:
    a = cluster_broker("a")
    with pytest.raises(mqkit.ClusterError) as info:
        a.subscribe_from_cluster("t", start=start)
    assert f"start={start!r} is not 'now', 'earliest', a stream id" in str(info.value)
    assert a.health_check().total_subscribers == 0
    assert a.metrics().active_subscribers == 0


def test_an_unreachable_redis_fails_a_subscribe_from_the_earliest_too(cluster_broker: Make) -> None:
    broker = cluster_broker("lonely", url="redis://127.0.0.1:1/0", connect_timeout=0.5)
    with pytest.raises(mqkit.ClusterUnavailableError):
        broker.subscribe_from_cluster("t", start="earliest")
    assert broker.health_check().total_subscribers == 0
