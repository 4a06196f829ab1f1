"""Topologies: a three-primary Redis Cluster, a primary with one replica, and the topology check."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import redis.cluster
from redis.crc import key_slot
from support.system import require_programs

import mqkit
from mqkit.plugins.cluster.plugin import dead_key, stream_key

from .conftest import RedisClusterServers, RedisServer, cluster_config, free_port

Make = Callable[..., mqkit.Broker]


def eventually(check: Callable[[], bool], timeout: float = 20) -> bool:
    """``check()`` until it holds (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0)  # let the broker's threads run; the deadline bounds the wait
    return True


def topics_one_per_shard(servers: RedisClusterServers) -> list[str]:
    """A topic whose stream lands on each shard (the fixture gives shard i the i-th third)."""
    per = 16384 // len(servers.nodes)
    found: dict[int, str] = {}
    for i in range(1000):
        topic = f"orders/{i}"
        shard = min(key_slot(stream_key("mqkit", topic).encode()) // per, len(servers.nodes) - 1)
        found.setdefault(shard, topic)
        if len(found) == len(servers.nodes):
            break
    return [found[i] for i in range(len(servers.nodes))]


def test_fan_out_across_the_shards_of_a_redis_cluster(
    redis_cluster: RedisClusterServers, cluster_broker: Make
) -> None:
    a = cluster_broker("a", url=redis_cluster.url, topology="cluster")
    b = cluster_broker("b", url=redis_cluster.url, topology="cluster")
    topics = topics_one_per_shard(redis_cluster)
    subs = {
        (broker, topic): broker.subscribe_from_cluster(topic, mqkit.SubOptions(buffer_size=100))
        for broker in (a, b)
        for topic in topics
    }
    for n, topic in enumerate(topics):
        a.publish_to_cluster(topic, mqkit.Message(f"{topic}-a", data={"from": "a", "n": n}))
        b.publish_batch_to_cluster(
            topic, [mqkit.Message(f"{topic}-b{i}", data=[n, i]) for i in range(20)]
        )
    for (_, topic), sub in subs.items():
        got = [sub.get(timeout=10) for _ in range(21)]
        assert [m.id for m in got] == [f"{topic}-a"] + [f"{topic}-b{i}" for i in range(20)]
        assert all(m.topic == topic for m in got)
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.2)
    # each topic's stream is on its own shard, and on that shard only
    holders = [redis_cluster.holder(stream_key("mqkit", topic)) for topic in topics]
    assert holders == [0, 1, 2]
    # membership works across slots too: each node sees the other
    assert eventually(lambda: a.cluster_status().peers == ("b",))
    assert eventually(lambda: b.cluster_status().status == "active")
    assert a.health_check().status == "healthy"


def test_a_publish_follows_a_slot_that_moved_to_another_shard(
    redis_cluster: RedisClusterServers, cluster_broker: Make
) -> None:
    a = cluster_broker("a", url=redis_cluster.url, topology="cluster")
    b = cluster_broker("b", url=redis_cluster.url, topology="cluster")
    topic = topics_one_per_shard(redis_cluster)[0]
    key = stream_key("mqkit", topic)
    sub = b.subscribe_from_cluster(topic)
    a.publish_to_cluster(topic, mqkit.Message("before"))
    assert sub.get(timeout=10).id == "before"
    # move the slot to shard 1 the documented way (its stream moves with MIGRATE)
    slot = key_slot(key.encode())
    source, target = (redis.Redis(port=redis_cluster.nodes[i].port) for i in (0, 1))
    try:
        source_id = source.execute_command("CLUSTER MYID").decode()
        target_id = target.execute_command("CLUSTER MYID").decode()
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        source.migrate("127.0.0.1", redis_cluster.nodes[1].port, [key], 0, 5000)
        for client in (target, source):
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    finally:
        source.close()
        target.close()
    # both brokers still have the old slot map: the publish is redirected (MOVED) and lands
    a.publish_to_cluster(topic, mqkit.Message("after"))
    assert redis_cluster.holder(key) == 1
    assert sub.get(timeout=20).id == "after"  # the reader followed the stream, nothing twice
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.3)


def test_standalone_topology_on_a_cluster_node_is_refused_at_start(
    redis_cluster: RedisClusterServers, cluster_broker: Make
) -> None:
    with pytest.raises(mqkit.ClusterError) as info:
        cluster_broker("a", url=redis_cluster.url)
    assert "is a Redis Cluster node: set topology = 'cluster'" in str(info.value)


def test_cluster_topology_on_a_standalone_server_is_refused_at_start(
    redis_server: RedisServer, cluster_broker: Make
) -> None:
    with pytest.raises(mqkit.ClusterError) as info:
        cluster_broker("a", topology="cluster")
    assert "Cluster mode is not enabled" in str(info.value)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"topology": "sentinel"}, "cluster.topology"),
        ({"topology": "cluster", "url": "redis://127.0.0.1:6379/2"}, "cluster.url"),
        ({"url": "redis://127.0.0.1:6379/0?protocol=3"}, "cluster.url"),  # RESP3: refused
    ],
)
def test_topology_settings_are_checked(fields: dict[str, str], field: str) -> None:
    url = fields.pop("url", "redis://127.0.0.1:6379/0")
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Broker(cluster_config(url, "a", **fields))
    assert info.value.field == field


def test_the_topology_comes_from_the_environment(
    redis_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQKIT_ENABLE_CLUSTER", "true")
    monkeypatch.setenv("MQKIT_CLUSTER_NODE_ID", "env")
    monkeypatch.setenv("MQKIT_CLUSTER_URL", redis_cluster.url)
    monkeypatch.setenv("MQKIT_CLUSTER_TOPOLOGY", "cluster")
    with mqkit.Broker(mqkit.Config.from_env()) as broker:
        sub = broker.subscribe_from_cluster("env/t")
        broker.publish_to_cluster("env/t", mqkit.Message("m"))
        assert sub.get(timeout=10).id == "m"
        assert broker.cluster_status().status == "active"


def test_a_replica_holds_what_a_replicated_publish_returned_for(
    primary_with_replica: tuple[RedisServer, RedisServer], cluster_broker: Make
) -> None:
    primary, replica = primary_with_replica
    timeout = 2.0
    a = cluster_broker("a", url=primary.url, cluster_replication_factor=2, replica_timeout=timeout)
    assert a.cluster_status().status == "active"
    a.publish_batch_to_cluster("t", [mqkit.Message(str(i)) for i in range(5)])
    # WAIT returned 1: the replica has applied every entry, readable from it directly
    reader = redis.Redis(port=replica.port)
    try:
        assert reader.xlen(stream_key("mqkit", "t")) == 5
    finally:
        reader.close()

    replica.stop()
    started = time.monotonic()
    with pytest.raises(mqkit.ClusterError) as info:
        a.publish_to_cluster("t", mqkit.Message("unconfirmed"))
    assert time.monotonic() - started < timeout + 10  # bounded by replica_timeout
    assert not isinstance(info.value, mqkit.ClusterUnavailableError)  # the primary has it
    assert "only 0 of 1 replica(s) confirmed" in str(info.value)
    assert a.cluster_status().status == "degraded"
    health = a.health_check()
    assert health.status == "degraded"
    assert "cluster: 0 of 1 replica(s) connected" in health.problems

    replica.start()  # same port, same primary: it syncs again and the publishes confirm
    synced = ("MASTER <-> REPLICA sync: Finished with success", "Successful partial resync")
    replica.wait_for(synced, "the restarted replica did not sync")
    a.publish_to_cluster("t", mqkit.Message("confirmed"))
    assert eventually(lambda: a.cluster_status().status == "active")
    assert a.health_check().status == "healthy"


def test_replicas_are_counted_per_shard_in_a_redis_cluster(
    redis_cluster: RedisClusterServers, cluster_broker: Make
) -> None:
    redis_cluster.add_replica(of=0)  # shard 0 has a replica, shards 1 and 2 have none
    on_0, on_1, _ = topics_one_per_shard(redis_cluster)
    a = cluster_broker(
        "a",
        url=redis_cluster.url,
        topology="cluster",
        cluster_replication_factor=2,
        replica_timeout=1,
    )
    a.publish_to_cluster(on_0, mqkit.Message("confirmed"))  # WAIT ran on shard 0's primary
    with pytest.raises(mqkit.ClusterError) as info:
        a.publish_to_cluster(on_1, mqkit.Message("unconfirmed"))
    assert "only 0 of 1 replica(s) confirmed" in str(info.value)
    assert redis_cluster.holder(stream_key("mqkit", on_1)) == 1  # on the primary only
    # the status counts the replicas of the primary with the fewest: shard 1's none
    assert a.cluster_status().status == "degraded"
    assert "cluster: 0 of 1 replica(s) connected" in a.health_check().problems


def test_a_user_and_password_go_through_the_url(
    redis_factory: Callable[..., RedisServer], cluster_broker: Make
) -> None:
    server = redis_factory("--requirepass", "s3cret")
    a = cluster_broker("a", url=f"redis://default:s3cret@127.0.0.1:{server.port}/0")
    sub = a.subscribe_from_cluster("t")
    a.publish_to_cluster("t", mqkit.Message("m"))
    assert sub.get(timeout=10).id == "m"
    assert a.cluster_status().status == "active"
    wrong = cluster_broker("b", url=f"redis://default:wrong@127.0.0.1:{server.port}/0")
    assert wrong.cluster_status().status == "disconnected"
    with pytest.raises(mqkit.ClusterUnavailableError) as info:
        wrong.publish_to_cluster("t", mqkit.Message("m"))
    assert "password" in str(info.value)  # Redis's reason is kept
    texts = [str(info.value), *wrong.health_check().problems]
    assert not any("wrong" in text or "s3cret" in text for text in texts)  # never the secret


def test_tls_goes_through_a_rediss_url(
    redis_factory: Callable[..., RedisServer], cluster_broker: Make, tmp_path: Path
) -> None:
    require_programs("openssl", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    request += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    made = subprocess.run(
        [*request, "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    port = free_port()
    redis_factory(
        *["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)],
        *["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"],
    )
    url = f"rediss://127.0.0.1:{port}/0"
    a = cluster_broker("a", url=f"{url}?ssl_ca_certs={cert}")  # trusts the server's certificate
    sub = a.subscribe_from_cluster("t")
    a.publish_to_cluster("t", mqkit.Message("over tls"))
    assert sub.get(timeout=10).id == "over tls"
    assert a.cluster_status().status == "active"
    untrusting = cluster_broker("b", url=url)  # the system's CAs do not know this certificate
    with pytest.raises(mqkit.ClusterUnavailableError) as info:
        untrusting.publish_to_cluster("t", mqkit.Message("m"))
    assert "certificate" in str(info.value)


def test_a_shard_stopped_and_restarted(
    redis_cluster: RedisClusterServers, cluster_broker: Make
) -> None:
    fast = {"connect_timeout": 0.5, "socket_timeout": 0.5, "read_block": 0.2}
    a = cluster_broker("a", url=redis_cluster.url, topology="cluster", **fast)
    b = cluster_broker("b", url=redis_cluster.url, topology="cluster", reconnect_max=0.2, **fast)
    topics = topics_one_per_shard(redis_cluster)
    subs = [b.subscribe_from_cluster(topic) for topic in topics]
    for topic in topics:
        a.publish_to_cluster(topic, mqkit.Message("before"))
    for sub in subs:
        assert sub.get(timeout=10).id == "before"
    shard = redis_cluster.nodes[1]  # no AOF here: it comes back empty, with its slots
    shard.stop()
    started = time.monotonic()
    with pytest.raises(mqkit.ClusterUnavailableError):
        a.publish_to_cluster(topics[1], mqkit.Message("lost"))
    assert time.monotonic() - started < 10  # bounded by the timeouts
    assert a.cluster_status().status == "disconnected"
    shard.start()  # same port, same nodes.conf: it rejoins with its slots
    shard.wait_for("Cluster state changed: ok", "the shard did not rejoin")
    deadline = time.monotonic() + 30
    while True:  # the client relearns the cluster once the shard answers again
        try:
            a.publish_to_cluster(topics[1], mqkit.Message("after"))
            break
        except mqkit.ClusterUnavailableError:
            assert time.monotonic() < deadline, "the shard never answered again"
    a.publish_to_cluster(topics[0], mqkit.Message("other shard"))
    assert subs[1].get(timeout=20).id == "after"  # its reader reconnected to the shard
    assert subs[0].get(timeout=20).id == "other shard"
    assert eventually(lambda: a.cluster_status().status == "active")


def test_consumer_groups_across_the_shards_of_a_redis_cluster(
    redis_cluster: RedisClusterServers, cluster_broker: Make
) -> None:
    fields = {"url": redis_cluster.url, "topology": "cluster", "enable_ack_support": True}
    a, b = cluster_broker("a", **fields), cluster_broker("b", **fields)
    topics = topics_one_per_shard(redis_cluster)
    group = mqkit.SubOptions(group="workers", buffer_size=100)
    subs = {
        t: [a.subscribe_from_cluster(t, group), b.subscribe_from_cluster(t, group)] for t in topics
    }
    for t in topics:
        a.publish_batch_to_cluster(t, [mqkit.AckMessage(f"{t}-{i}", data=i) for i in range(20)])
        b.publish_to_cluster(t, mqkit.AckMessage(f"{t}-dead", data=-1))
    for t in topics:
        got: list[int] = []
        deadline = time.monotonic() + 30
        while len(got) < 21:
            assert time.monotonic() < deadline, f"{t}: only {sorted(got)}"
            for sub in subs[t]:
                try:
                    message = sub.get(timeout=0.05)
                except TimeoutError:
                    continue
                assert isinstance(message, mqkit.AckMessage)
                got.append(message.data)
                if message.data == -1:
                    sub.nack(message.ack_id, requeue=False)  # to the topic's dead letter stream
                else:
                    sub.ack(message.ack_id)
        assert sorted(got) == [-1, *range(20)]  # each message to one consumer of the group, once
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        for t in topics:  # every entry settled, on its own shard
            key = stream_key("mqkit", t)
            assert eventually(lambda key=key: client.xpending(key, "workers")["pending"] == 0)
        plugin = a.get_plugin("cluster")
        for shard, t in enumerate(topics):
            dead = plugin.dead_letters(t)  # type: ignore[attr-defined]
            assert [d.message.id for d in dead] == [f"{t}-dead"]
            assert redis_cluster.holder(dead_key("mqkit", t)) == shard  # beside its topic
    finally:
        client.close()
