"""Filters and glob patterns over cluster topics (the topic index), on a real redis-server."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot
from support.process import Child

import mqkit
from mqkit.plugins.cluster.index import index_keys
from mqkit.plugins.cluster.plugin import stream_key

from .conftest import RedisClusterServers, RedisServer, child_env

Make = Callable[..., mqkit.Broker]


def drain(sub: mqkit.Subscription, count: int) -> list[tuple[str, object]]:
    """The next ``count`` messages of ``sub`` as (topic, data)."""
    return [(m.topic, m.data) for m in (sub.get(timeout=10) for _ in range(count))]


def assert_nothing_more(sub: mqkit.Subscription) -> None:
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.3)


def test_a_filter_receives_every_matching_topic_across_brokers(cluster_broker: Make) -> None:
    a, b = cluster_broker("a"), cluster_broker("b")
    a.publish_to_cluster("orders/eu/paid", mqkit.Message("before", data=0))  # known topic
    a.publish_to_cluster("orders/eu/open", mqkit.Message("other", data=0))
    sub = b.subscribe_from_cluster_filter("orders/+/paid")
    assert sub.topic == "cluster:orders/+/paid"
    a.publish_to_cluster("orders/eu/paid", mqkit.Message("m1", data=1))
    a.publish_to_cluster("orders/eu/open", mqkit.Message("m2", data=2))  # does not match
    b.publish_to_cluster("orders/us/paid", mqkit.Message("m3", data=3))  # a new topic
    a.publish_to_cluster("orders/us/paid/late", mqkit.Message("m4", data=4))  # one level more
    a.publish_to_cluster("orders/us/paid", mqkit.Message("m5", data=5))
    got = drain(sub, 3)
    assert sorted(got) == [("orders/eu/paid", 1), ("orders/us/paid", 3), ("orders/us/paid", 5)]
    assert [d for t, d in got if t == "orders/us/paid"] == [3, 5]  # in order within a topic
    assert_nothing_more(sub)


def test_each_new_topic_is_read_from_its_first_message(cluster_broker: Make) -> None:
    a, b = cluster_broker("a"), cluster_broker("b")
    sub = b.subscribe_from_cluster_filter("fleet/#", mqkit.SubOptions(buffer_size=500))
    for i in range(40):  # forty topics none of which existed at subscribe time
        a.publish_to_cluster(f"fleet/truck-{i}/gps", mqkit.Message(f"{i}-0", data=0))
        a.publish_to_cluster(f"fleet/truck-{i}/gps", mqkit.Message(f"{i}-1", data=1))
    a.publish_to_cluster("fleet", mqkit.Message("parent", data=9))  # "a/#" matches "a" too
    got = drain(sub, 81)
    expected = [(f"fleet/truck-{i}/gps", d) for i in range(40) for d in (0, 1)]
    assert sorted(got) == sorted([*expected, ("fleet", 9)])
    for i in range(40):
        assert [d for t, d in got if t == f"fleet/truck-{i}/gps"] == [0, 1]
    assert_nothing_more(sub)


def test_a_filter_over_the_shards_of_a_redis_cluster(
    redis_cluster: RedisClusterServers, cluster_broker: Make
) -> None:
    a = cluster_broker("a", url=redis_cluster.url, topology="cluster")
    b = cluster_broker("b", url=redis_cluster.url, topology="cluster")
    a.publish_to_cluster("orders/0/paid", mqkit.Message("before", data=-1))  # known topic
    sub = b.subscribe_from_cluster_filter("orders/+/paid", mqkit.SubOptions(buffer_size=500))
    per_shard: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for i in range(10_000):  # new topics, four on each shard (each has a third of the slots)
        topic = f"orders/r{i}/paid"
        shard = per_shard[min(key_slot(stream_key("mqkit", topic).encode()) // (16384 // 3), 2)]
        if len(shard) < 4:
            shard.append(topic)
    topics = [t for shard in per_shard.values() for t in shard]
    for i, topic in enumerate(topics):
        a.publish_to_cluster(topic, mqkit.Message(f"{topic}-0", data=[i, 0]))
        b.publish_batch_to_cluster(topic, [mqkit.Message(f"{topic}-1", data=[i, 1])])
        a.publish_to_cluster(f"orders/r{i}/open", mqkit.Message("no", data=0))  # no match
    got = drain(sub, 24)
    assert {redis_cluster.holder(stream_key("mqkit", t)) for t in topics} == {0, 1, 2}
    assert sorted(got) == sorted((t, [i, k]) for i, t in enumerate(topics) for k in (0, 1))
    for i, topic in enumerate(topics):
        assert [d for t, d in got if t == topic] == [[i, 0], [i, 1]]  # in order per topic
    assert_nothing_more(sub)


def test_a_glob_pattern_over_cluster_topics(cluster_broker: Make) -> None:
    a, b = cluster_broker("a"), cluster_broker("b")
    sub = b.subscribe_from_cluster_pattern("metrics/*.cpu")
    assert sub.topic == "cluster:metrics/*.cpu"
    for topic in ("metrics/web.cpu", "metrics/web.mem", "metrics/db/x.cpu", "metrics/db.cpu"):
        a.publish_to_cluster(topic, mqkit.Message(topic, data=topic))
    assert sorted(drain(sub, 2)) == [
        ("metrics/db.cpu", "metrics/db.cpu"),
        ("metrics/web.cpu", "metrics/web.cpu"),
    ]
    assert_nothing_more(sub)


def test_without_wildcards_it_is_the_topic_itself(cluster_broker: Make) -> None:
    a = cluster_broker("a")
    by_filter = a.subscribe_from_cluster_filter("plain/topic")
    by_pattern = a.subscribe_from_cluster_pattern("plain/topic")
    assert by_filter.topic == by_pattern.topic == "cluster:plain/topic"
    a.publish_to_cluster("plain/topic", mqkit.Message("m"))
    assert by_filter.get(timeout=10).id == by_pattern.get(timeout=10).id == "m"


def test_a_filter_and_an_exact_subscription_share_nothing(cluster_broker: Make) -> None:
    a = cluster_broker("a")
    wide = a.subscribe_from_cluster_filter("#")
    exact = a.subscribe_from_cluster("x")
    local = a.subscribe_filter("#")
    a.publish_to_cluster("x", mqkit.Message("m1"))
    a.publish_to_cluster("$sys/x", mqkit.Message("m2"))  # "#" does not match "$" topics
    assert wide.get(timeout=10).id == "m1"
    assert exact.get(timeout=10).id == "m1"
    assert_nothing_more(wide)
    with pytest.raises(TimeoutError):
        local.get(timeout=0.1)  # cluster publishes never reach local subscriptions


BAD_FILTERS = ["a/#/b", "a+/b", "a/b#", "a/*/b", "a/[x]", "", "   ", "a\x00b", 42]
BAD_PATTERNS = ["a/[x", "a\\", "a[z-a]", "", 42]


@pytest.mark.parametrize("bad", BAD_FILTERS)
def test_an_invalid_filter_raises_as_in_process(cluster_broker: Make, bad: object) -> None:
    a = cluster_broker("a")
    with pytest.raises(mqkit.InvalidTopicError) as local:
        a.subscribe_filter(bad)  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidTopicError) as cluster:
        a.subscribe_from_cluster_filter(bad)  # type: ignore[arg-type]
    assert str(cluster.value) == str(local.value)


@pytest.mark.parametrize("bad", BAD_PATTERNS)
def test_an_invalid_pattern_raises_as_in_process(cluster_broker: Make, bad: object) -> None:
    a = cluster_broker("a")
    with pytest.raises(mqkit.InvalidTopicError) as local:
        a.subscribe_pattern(bad)  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidTopicError) as cluster:
        a.subscribe_from_cluster_pattern(bad)  # type: ignore[arg-type]
    assert str(cluster.value) == str(local.value)


def test_odd_topic_text_cannot_name_other_keys(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a, b = cluster_broker("a", cluster_sync_interval=60), cluster_broker("b")
    sub = b.subscribe_from_cluster_filter("odd/+/x")
    evil = [
        "odd/a}:stream\r\nDEL mqkit:nodes {b/x",
        "odd/{topics}:index/x",
        "odd/*?[]\\ é 🙂/x",
        "odd/%7Btopics%7D/x",
    ]
    for i, topic in enumerate(evil):
        a.publish_to_cluster(topic, mqkit.Message(str(i), data=i))
    assert sorted(drain(sub, len(evil))) == sorted((t, i) for i, t in enumerate(evil))
    client = redis.Redis.from_url(redis_server.url)
    try:
        index, new = index_keys("mqkit")
        assert {m.decode() for m in client.smembers(index)} == set(evil)
        streams = {k.decode() for k in client.scan_iter(_type="stream")}
        assert streams == {new, *(stream_key("mqkit", t) for t in evil)}
        assert client.scard("mqkit:nodes") == 2  # nothing deleted it
    finally:
        client.close()


def test_a_node_registers_a_topic_once_not_per_message(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a", cluster_sync_interval=60)  # no heartbeat SADD meanwhile
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.config_resetstat()
        for topic in ("t", "u"):
            for i in range(50):
                a.publish_to_cluster(topic, mqkit.Message(str(i)))
        a.publish_batch_to_cluster("t", [mqkit.Message(str(i)) for i in range(50)])
        stats = client.info("commandstats")
        assert stats["cmdstat_sadd"]["calls"] == 2  # one per topic, by the index script
        assert stats["cmdstat_xadd"]["calls"] == 152  # 150 messages + 2 notifications
        index, new = index_keys("mqkit")
        assert client.smembers(index) == {b"t", b"u"}
        assert [e[1][b"t"] for e in client.xrange(new)] == [b"t", b"u"]
    finally:
        client.close()


def test_an_index_lost_with_redis_comes_back(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a", index_refresh=0.2)
    b = cluster_broker("b")
    a.publish_to_cluster("lost/one", mqkit.Message("first"))
    client = redis.Redis.from_url(redis_server.url)
    client.delete(*index_keys("mqkit"))  # as a Redis that restarted without its data would
    client.close()
    sub = b.subscribe_from_cluster_filter("lost/+")
    # a's cache still says "registered" until index_refresh passes; then its next publish
    # registers the topic again and the subscription reads it from the start
    seen: set[str] = set()
    for i in range(200):
        a.publish_to_cluster("lost/one", mqkit.Message(f"again-{i}"))
        try:
            seen.add(sub.get(timeout=0.05).id)
            break
        except TimeoutError:
            continue
    assert seen, "the topic never came back into the index"


def test_topics_missing_from_the_notifications_are_found_by_a_rescan(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a, b = cluster_broker("a"), cluster_broker("b")
    sub = b.subscribe_from_cluster_filter("scan/+")
    client = redis.Redis.from_url(redis_server.url)
    index, _new = index_keys("mqkit")
    client.sadd(index, "scan/quiet")  # in the index, but its notification is gone (trimmed)
    client.close()
    a.publish_to_cluster("scan/quiet", mqkit.Message("q1", data=1))  # already indexed: no notice
    a.publish_to_cluster("scan/loud", mqkit.Message("l1", data=2))  # its notice shows the gap
    assert sorted(drain(sub, 2)) == [("scan/loud", 2), ("scan/quiet", 1)]
    assert_nothing_more(sub)


def test_a_filter_reader_resumes_after_a_redis_restart(
    redis_factory: Callable[..., RedisServer], cluster_broker: Make
) -> None:
    server = redis_factory("--appendonly", "yes", "--appendfsync", "always")
    fast = {"connect_timeout": 0.5, "socket_timeout": 0.5, "read_block": 0.2}
    a = cluster_broker("a", url=server.url, **fast)
    b = cluster_broker("b", url=server.url, **fast)
    sub = b.subscribe_from_cluster_filter("r/+", mqkit.SubOptions(buffer_size=100))
    a.publish_to_cluster("r/old", mqkit.Message("1", data=1))
    assert drain(sub, 1) == [("r/old", 1)]
    server.stop()
    with pytest.raises(mqkit.ClusterUnavailableError):
        a.publish_to_cluster("r/old", mqkit.Message("lost"))
    server.start()
    a.publish_to_cluster("r/old", mqkit.Message("2", data=2))
    a.publish_to_cluster("r/new", mqkit.Message("3", data=3))
    assert sorted(drain(sub, 2)) == [("r/new", 3), ("r/old", 2)]
    assert_nothing_more(sub)


def test_cancel_and_close_end_the_readers_connections(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a")
    client = redis.Redis.from_url(redis_server.url)

    def connections() -> int:
        return sum(1 for c in client.client_list() if c["name"] == "mqkit-a")

    before = connections()
    sub = a.subscribe_from_cluster_filter("c/+")
    a.publish_to_cluster("c/1", mqkit.Message("m"))
    assert sub.get(timeout=10).id == "m"
    assert connections() > before
    sub.cancel()
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get(timeout=1)
    a.close()
    # a cancelled reader ends at its next XREAD timeout (read_block): its connection goes
    deadline = time.monotonic() + 10
    while connections() and time.monotonic() < deadline:
        continue
    remaining = connections()
    client.close()
    assert remaining == 0


def test_cluster_off_refuses_them() -> None:
    with mqkit.Broker(mqkit.Config()) as broker:
        with pytest.raises(mqkit.ClusterDisabledError):
            broker.subscribe_from_cluster_filter("a/+")
        with pytest.raises(mqkit.ClusterDisabledError):
            broker.subscribe_from_cluster_pattern("a.*")


def test_the_docs_example_runs(redis_server: RedisServer) -> None:
    # docs/cluster.md lists docs/examples/cluster_filters.py; its Redis comes from the environment
    example = Path(__file__).parents[3] / "docs" / "examples" / "cluster_filters.py"
    env = child_env()
    env["MQKIT_CLUSTER_URL"] = redis_server.url
    child = Child([sys.executable, str(example)], env=env)
    line = child.wait_for(lambda text: "orders/eu/paid" in text, 60, "the example failed")
    assert child.wait(60) == 0
    assert "('metrics/web.cpu', 0.93)" in line
