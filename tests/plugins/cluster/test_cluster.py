"""Cluster mode on a real redis-server: fan-out, batches, faults, membership and key safety."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.process import Child

import mqkit
from mqkit.plugins.cluster.plugin import stream_key

from .conftest import CHILD, RedisServer, child_env, cluster_config, free_port

Make = Callable[..., mqkit.Broker]


def test_publish_reaches_every_nodes_subscription(cluster_broker: Make) -> None:
    a, b = cluster_broker("a"), cluster_broker("b")
    sub_a, sub_b = a.subscribe_from_cluster("orders"), b.subscribe_from_cluster("orders")
    a.publish_to_cluster("orders", mqkit.Message("m1", data={"n": 1}))
    b.publish_to_cluster("orders", mqkit.Message("m2", data=b"\x00\xff"))
    for sub in (sub_a, sub_b):
        first, second = sub.get(timeout=10), sub.get(timeout=10)
        assert (first.id, first.data, first.topic) == ("m1", {"n": 1}, "orders")
        assert (second.id, second.data) == ("m2", b"\x00\xff")
        assert sub.stats().received == 2


def test_a_subscription_sees_only_what_was_published_after_it(cluster_broker: Make) -> None:
    a = cluster_broker("a")
    a.publish_to_cluster("t", mqkit.Message("before"))
    sub = a.subscribe_from_cluster("t")
    a.publish_to_cluster("t", mqkit.Message("after"))
    assert sub.get(timeout=10).id == "after"
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.3)


def test_local_publishes_do_not_reach_a_cluster_subscription(cluster_broker: Make) -> None:
    a = cluster_broker("a")
    sub = a.subscribe_from_cluster("t")
    local = a.subscribe("t")
    a.publish("t", mqkit.Message("local"))
    a.publish_to_cluster("t", mqkit.Message("cluster"))
    assert sub.get(timeout=10).id == "cluster"
    assert local.get(timeout=1).id == "local"
    with pytest.raises(TimeoutError):
        local.get(timeout=0.3)


def test_aget_and_cancel(cluster_broker: Make) -> None:
    a = cluster_broker("a")
    sub = a.subscribe_from_cluster("t")
    a.publish_to_cluster("t", mqkit.Message("x"))
    assert asyncio.run(sub.aget(timeout=10)).id == "x"
    sub.cancel()
    with pytest.raises(mqkit.SubscriptionClosedError):
        sub.get(timeout=1)


def test_a_full_buffer_holds_the_reader_back(cluster_broker: Make) -> None:
    a = cluster_broker("a")
    opts = mqkit.SubOptions(
        buffer_size=2, policy=mqkit.Backpressure.BLOCK_WITH_TIMEOUT, block_timeout=30
    )
    sub = a.subscribe_from_cluster("t", opts)
    a.publish_batch_to_cluster("t", [mqkit.Message(str(i), data=i) for i in range(50)])
    first = next(iter(sub))  # iteration, as on any subscription
    assert [first.data] + [sub.get(timeout=10).data for _ in range(49)] == list(range(50))
    stats = sub.stats()
    assert (stats.received, stats.dropped, stats.queue_cap) == (50, 0, 2)


def test_batch_arrives_in_order(cluster_broker: Make) -> None:
    a, b = cluster_broker("a"), cluster_broker("b")
    sub = b.subscribe_from_cluster("batch", mqkit.SubOptions(buffer_size=500))
    a.publish_batch_to_cluster("batch", [mqkit.Message(str(i), data=i) for i in range(200)])
    assert [sub.get(timeout=10).data for _ in range(200)] == list(range(200))


def test_stream_length_is_bounded(cluster_broker: Make, redis_server: RedisServer) -> None:
    a = cluster_broker("a", stream_maxlen=10)
    a.publish_batch_to_cluster("t", [mqkit.Message(str(i)) for i in range(2000)])
    client = redis.Redis.from_url(redis_server.url)
    length = client.xlen(stream_key("mqkit", "t"))
    client.close()
    assert length < 2000  # MAXLEN ~ trims whole macro nodes: about 10, never all


def test_single_publishes_are_bounded_too(cluster_broker: Make, redis_server: RedisServer) -> None:
    a = cluster_broker("a", stream_maxlen=10)
    for i in range(2000):
        a.publish_to_cluster("t", mqkit.Message(str(i)))
    client = redis.Redis.from_url(redis_server.url)
    length = client.xlen(stream_key("mqkit", "t"))
    client.close()
    assert length < 2000


def test_a_refused_publish_raises_and_the_next_one_goes_through(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    # A single publish runs on a connection of its own (not redis-py's pool): an error reply
    # must leave that connection in step with Redis, so the next reply is the next command's.
    a = cluster_broker("a")
    sub = a.subscribe_from_cluster("t")
    a.publish_to_cluster("t", mqkit.Message("first"))
    assert sub.get(timeout=10).id == "first"  # read before its stream is deleted below
    client = redis.Redis.from_url(redis_server.url)
    key = stream_key("mqkit", "t")
    client.delete(key)
    client.set(key, "not a stream")  # XADD now gets WRONGTYPE
    for _ in range(3):
        with pytest.raises(mqkit.ClusterError, match="refused"):
            a.publish_to_cluster("t", mqkit.Message("refused"))
    client.delete(key)
    client.close()
    a.publish_to_cluster("t", mqkit.Message("second"))
    assert sub.get(timeout=10).id == "second"


def test_concurrent_single_publishers_lose_nothing(cluster_broker: Make) -> None:
    a, b = cluster_broker("a"), cluster_broker("b")
    sub = b.subscribe_from_cluster("t", mqkit.SubOptions(buffer_size=2000))
    errors: list[BaseException] = []

    def publish(thread: int) -> None:
        try:
            for i in range(200):
                a.publish_to_cluster("t", mqkit.Message(f"{thread}-{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    got = [sub.get(timeout=10).id for _ in range(800)]
    assert sorted(got) == sorted(f"{t}-{i}" for t in range(4) for i in range(200))
    for t in range(4):  # each publisher's own messages in its order
        mine = [m for m in got if m.startswith(f"{t}-")]
        assert mine == [f"{t}-{i}" for i in range(200)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_forked_child_does_not_share_the_parents_publish_connection(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    # The single publish's connections are the plugin's own, outside redis-py's pool (which
    # starts over in a child): a child that used them would read replies meant for its parent.
    a, b = cluster_broker("a"), cluster_broker("b")
    sub = b.subscribe_from_cluster("t", mqkit.SubOptions(buffer_size=1000))
    a.publish_to_cluster("t", mqkit.Message("parent-first"))  # (registers the topic)
    a.publish_to_cluster("t", mqkit.Message("parent-second"))  # on a connection of its own
    watcher = redis.Redis.from_url(redis_server.url)

    def connections() -> int:
        return sum(1 for c in watcher.client_list() if c["name"] == "mqkit-a")

    before = connections()
    published, release = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: publish through the inherited broker, wait, exit without cleanup
        code = 0
        try:
            for i in range(50):
                a.publish_to_cluster("t", mqkit.Message(f"child-{i}"))
        except BaseException:
            code = 1
        os.write(published[1], b"x")
        os.read(release[0], 1)
        os._exit(code)
    try:
        assert os.read(published[0], 1) == b"x"
        assert connections() == before + 1  # the child's own connection
    finally:
        os.write(release[1], b"x")
        _, status = os.waitpid(pid, 0)
    watcher.close()
    assert os.waitstatus_to_exitcode(status) == 0
    for i in range(50):
        a.publish_to_cluster("t", mqkit.Message(f"parent-{i}"))
    got = {sub.get(timeout=10).id for _ in range(102)}
    first = {"parent-first", "parent-second"}
    assert got == first | {f"{w}-{i}" for w in ("parent", "child") for i in range(50)}


def test_fan_out_across_processes(redis_server: RedisServer, cluster_broker: Make) -> None:
    env = child_env()
    readers = [
        Child([sys.executable, str(CHILD), redis_server.url, f"r{i}", "p", "-50"], env=env)
        for i in range(2)
    ]
    for reader in readers:
        reader.wait_for(lambda line: line.startswith("ready"), 60, "reader not ready")
    writer = Child([sys.executable, str(CHILD), redis_server.url, "w", "p", "50"], env=env)
    writer.wait_for(lambda line: line.startswith("published"), 60, "writer did not publish")
    assert writer.wait(60) == 0
    for reader in readers:
        assert [int(x) for x in reader.read_lines(50, 60)] == list(range(50))
        assert reader.wait(60) == 0


def test_unreachable_redis_fails_fast_and_the_broker_keeps_working(
    cluster_broker: Make,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    broker = cluster_broker("lonely", url=url, connect_timeout=0.5, socket_timeout=0.5)
    assert broker.cluster_status().status == "disconnected"
    started = time.monotonic()
    with pytest.raises(mqkit.ClusterUnavailableError) as info:
        broker.publish_to_cluster("t", mqkit.Message("m"))
    assert time.monotonic() - started < 10  # bounded by the timeouts, not forever
    assert "cannot be reached" in str(info.value)
    with pytest.raises(mqkit.ClusterUnavailableError):
        broker.subscribe_from_cluster("t")
    local = broker.subscribe("t")
    broker.publish("t", mqkit.Message("local"))
    assert local.get(timeout=1).id == "local"
    health = broker.health_check()
    assert health.status == "degraded"
    assert any("cluster" in p for p in health.problems)


def test_a_redis_that_never_answers_fails_within_the_socket_timeout(
    cluster_broker: Make,
) -> None:
    # a listening socket that accepts and never replies: without the timeouts this would hang
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(16)
        url = f"redis://127.0.0.1:{mute.getsockname()[1]}/0"
        broker = cluster_broker("mute", url=url, connect_timeout=0.3, socket_timeout=0.3)
        assert broker.cluster_status().status == "disconnected"
        started = time.monotonic()
        with pytest.raises(mqkit.ClusterUnavailableError):
            broker.publish_to_cluster("t", mqkit.Message("m"))
        assert time.monotonic() - started < 10  # the bound is socket_timeout, not forever
        broker.close()


@pytest.mark.parametrize("fsync", ["everysec", "always"])
def test_reader_resumes_after_a_redis_restart_without_gaps(
    redis_factory: Callable[..., RedisServer], fsync: str
) -> None:
    server = redis_factory("--appendonly", "yes", "--appendfsync", fsync)
    cfg = cluster_config(server.url, "a", connect_timeout=0.5, socket_timeout=0.5, read_block=0.2)
    with mqkit.Broker(cfg) as a, mqkit.Broker(attrs_evolve(cfg, "b")) as b:
        sub = b.subscribe_from_cluster("t")
        a.publish_batch_to_cluster("t", [mqkit.Message(str(i), data=i) for i in range(10)])
        assert [sub.get(timeout=10).data for _ in range(10)] == list(range(10))
        server.stop()
        with pytest.raises(mqkit.ClusterUnavailableError):
            a.publish_to_cluster("t", mqkit.Message("lost"))
        server.start()
        # the reader reconnects on its own; publishes that returned are all delivered, in order
        a.publish_batch_to_cluster("t", [mqkit.Message(str(i), data=i) for i in range(10, 20)])
        assert [sub.get(timeout=20).data for _ in range(10, 20)] == list(range(10, 20))
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.3)


def attrs_evolve(cfg: mqkit.Config, node_id: str) -> mqkit.Config:
    import attrs

    return attrs.evolve(cfg, cluster_node_id=node_id)


def test_a_second_live_node_with_the_same_id_is_refused(cluster_broker: Make) -> None:
    cluster_broker("same")
    with pytest.raises(mqkit.ClusterError) as info:
        cluster_broker("same")
    assert "'same' is already in use" in str(info.value)


def test_a_refused_node_leaves_the_live_one_registered(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    cluster_broker("same", cluster_sync_interval=60)  # no heartbeat re-adds it meanwhile
    with pytest.raises(mqkit.ClusterError):
        cluster_broker("same")
    client = redis.Redis.from_url(redis_server.url)
    members = client.smembers("mqkit:nodes")
    client.close()
    assert members == {b"same"}


def test_an_id_is_free_again_once_its_node_closed(cluster_broker: Make) -> None:
    first = cluster_broker("again")
    first.close()
    second = cluster_broker("again")
    assert second.cluster_status().node_id == "again"


def test_status_lists_the_live_peers_and_the_missing_nodes(cluster_broker: Make) -> None:
    a = cluster_broker("a", cluster_nodes=("a", "b", "c"))
    b = cluster_broker("b")
    deadline = time.monotonic() + 10
    status = a.cluster_status()
    while status.peers != ("b",) and time.monotonic() < deadline:
        status = a.cluster_status()
    assert status.peers == ("b",)
    assert (status.node_id, status.total_nodes, status.healthy_nodes) == ("a", 2, 2)
    assert status.missing_nodes == ("c",)
    assert status.status == "degraded"  # a configured node is missing
    assert status.last_sync_time is not None
    assert b.cluster_status().status == "active"
    assert b.health_check().status == "healthy"
    health = a.health_check()
    assert health.status == "degraded"
    assert "cluster: configured node(s) not alive: c" in health.problems


def test_replication_factor_without_a_replica_times_out(cluster_broker: Make) -> None:
    a = cluster_broker("a", cluster_replication_factor=2, replica_timeout=0.2)
    with pytest.raises(mqkit.ClusterError) as info:
        a.publish_to_cluster("t", mqkit.Message("m"))
    assert "may be on the primary only" in str(info.value)
    assert a.cluster_status().status == "degraded"


def test_replication_factor_waits_for_a_replica(
    redis_factory: Callable[..., RedisServer], cluster_broker: Make
) -> None:
    primary = redis_factory()
    replica = redis_factory("--replicaof", "127.0.0.1", str(primary.port))
    client = redis.Redis.from_url(primary.url)
    deadline = time.monotonic() + 30
    while int(client.execute_command("WAIT", 1, 100)) < 1:  # waits up to 0.1 s for the replica
        assert time.monotonic() < deadline, "the replica did not connect"
    client.close()
    a = cluster_broker("a", url=primary.url, cluster_replication_factor=2, replica_timeout=5)
    a.publish_to_cluster("t", mqkit.Message("m"))  # returns: the replica confirmed it
    assert a.cluster_status().status == "active"
    replica.stop()
    b = cluster_broker("b", url=primary.url, cluster_replication_factor=2, replica_timeout=0.3)
    with pytest.raises(mqkit.ClusterError) as info:
        b.publish_to_cluster("t", mqkit.Message("m2"))
    assert "may be on the primary only" in str(info.value)
    assert b.cluster_status().status == "degraded"
    assert b.health_check().status == "degraded"


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    topic=st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40
    ).filter(lambda t: t.strip() == t and "*" not in t and "?" not in t and "[" not in t),
    payload=st.binary(max_size=200),
)
def test_what_is_published_is_what_is_consumed(
    redis_server: RedisServer, topic: str, payload: bytes
) -> None:
    cfg = cluster_config(redis_server.url, "hyp", read_block=0.1)
    with mqkit.Broker(cfg) as broker:
        try:
            sub = broker.subscribe_from_cluster(topic)
        except mqkit.InvalidTopicError:
            return
        broker.publish_to_cluster(topic, mqkit.Message("p", data=payload))
        got = sub.get(timeout=10)
        assert (got.topic, got.data) == (topic, payload)
        # the stream holds it under the escaped topic: nothing else was written
        client = redis.Redis.from_url(redis_server.url)
        assert client.xlen(stream_key("mqkit", topic)) >= 1
        client.close()


def test_keys_cannot_be_injected_through_topic_text() -> None:
    evil = "a}:stream\r\nDEL x {b"
    key = stream_key("mqkit", evil)
    assert key.count("{") == 1 and key.count("}") == 1
    assert "\r" not in key and " " not in key
    assert stream_key("mqkit", "a/b") != stream_key("mqkit", "a%2Fb")


def test_the_docs_example_runs(redis_server: RedisServer) -> None:
    # docs/cluster.md lists docs/examples/cluster_fanout.py; its Redis comes from the environment
    example = Path(__file__).parents[3] / "docs" / "examples" / "cluster_fanout.py"
    env = child_env()
    env["MQKIT_CLUSTER_URL"] = redis_server.url
    child = Child([sys.executable, str(example)], env=env)
    line = child.wait_for(lambda text: text.startswith("active"), 60, "the example failed")
    assert child.wait(60) == 0
    assert line.startswith("active node-a peers:")
