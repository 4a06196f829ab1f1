"""``mqkit inspect --cluster URL``: a cluster's streams, groups and nodes, read-only, on a real
redis-server. The consumer groups are made with redis-py (XGROUP CREATE, XREADGROUP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.cluster import RedisCluster

import mqkit
from mqkit.plugins.cluster.index import index_keys
from mqkit.plugins.cluster.plugin import stream_key

from .conftest import RedisServer, free_port

Make = Callable[..., mqkit.Broker]

ODD = "odd/}{t:x}:stream [bold]é"


def inspect(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mqkit inspect ARGS`` as a user would (wide, so rich does not wrap)."""
    env = dict(os.environ, COLUMNS="250")
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run(
        [sys.executable, "-m", "mqkit", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def changes(client: redis.Redis) -> int:
    """Writes Redis has seen since it started (``--save ""``: never reset by a save)."""
    info: dict[str, Any] = client.info("persistence")
    return int(info["rdb_changes_since_last_save"])


def fill(make: Make, client: redis.Redis) -> None:
    """Two live nodes, three topics, a group with two pending entries, one dead letter."""
    a = make("node-a", cluster_sync_interval=60)  # no heartbeat write during the test
    b = make("node-b", cluster_sync_interval=60)
    a.publish_batch_to_cluster("pay", [mqkit.Message(f"p{i}", data=i) for i in range(5)])
    b.publish_to_cluster("orders/eu", mqkit.Message("o1"))
    b.publish_to_cluster(ODD, mqkit.Message("odd"))
    pay = stream_key("mqkit", "pay")
    client.xgroup_create(pay, "workers", id="0")
    client.xgroup_create(pay, "audit", id="$")
    client.xreadgroup("workers", "w1", {pay: ">"}, count=2)  # two pending, three unread
    client.xadd("mqkit:{t:pay}:dead", {"m": "{}"})


def test_json_report(cluster_broker: Make, redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    fill(cluster_broker, client)
    before = changes(client)
    result = inspect("--cluster", redis_server.url, "--json")
    assert result.returncode == 0, result.stderr
    assert changes(client) == before  # the inspector wrote nothing
    report = json.loads(result.stdout)
    pay_ids = [entry_id.decode() for entry_id, _ in client.xrange(stream_key("mqkit", "pay"))]
    client.close()
    assert (report["url"], report["prefix"], report["mode"]) == (
        redis_server.url,
        "mqkit",
        "standalone",
    )
    assert report["indexed_topics"] == 3
    topics = {t["topic"]: t for t in report["topics"]}
    assert sorted(topics) == sorted(["pay", "orders/eu", ODD])
    pay = topics["pay"]
    assert (pay["key"], pay["kind"], pay["length"]) == (stream_key("mqkit", "pay"), "topic", 5)
    assert (pay["first_id"], pay["last_id"]) == (pay_ids[0], pay_ids[-1])
    audit, workers = pay["groups"]
    assert workers["name"] == "workers"
    assert (workers["consumers"], workers["pending"], workers["lag"]) == (1, 2, 3)
    assert workers["last_delivered_id"] == pay_ids[1]
    assert workers["consumer_list"][0]["name"] == "w1"
    assert workers["consumer_list"][0]["pending"] == 2
    assert (audit["name"], audit["consumers"], audit["pending"], audit["lag"]) == (
        "audit",
        0,
        0,
        0,
    )
    assert topics[ODD]["length"] == 1 and topics[ODD]["groups"] == []
    [dead] = report["dead_letters"]
    assert (dead["topic"], dead["kind"], dead["length"]) == ("pay", "dead", 1)
    [notices] = report["other_streams"]
    assert (notices["key"], notices["kind"], notices["length"]) == (
        index_keys("mqkit")[1],
        "index",
        3,
    )
    nodes = {n["node_id"]: n for n in report["nodes"]}
    assert sorted(nodes) == ["node-a", "node-b"]
    assert all(n["alive"] and n["registered"] and n["expires_in"] > 0 for n in nodes.values())


def test_table_report(cluster_broker: Make, redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    fill(cluster_broker, client)
    client.close()
    result = inspect("--cluster", redis_server.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "3 topic stream(s), 3 indexed topic(s)" in result.stdout
    assert any(line.split()[:2] == ["pay", "5"] for line in lines)
    assert any(ODD in line for line in lines)  # shown as written: not taken as markup
    workers = next(line.split() for line in lines if "workers" in line)
    assert workers[:4] == ["pay", "workers", "1", "2"] and workers[-1] == "3"
    assert "Dead letter streams" in result.stdout
    assert any(line.split()[:2] == ["node-a", "alive"] for line in lines)


def test_a_read_only_redis_user_is_enough(cluster_broker: Make, redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    fill(cluster_broker, client)
    # a user that may only read: any write (or XREADGROUP) would be refused with NOPERM
    client.acl_setuser(
        "viewer", enabled=True, passwords=["+s3cret"], keys=["*"],
        commands=["-@all", "+@read", "+info", "+@connection"],
    )  # fmt: skip
    client.close()
    url = f"redis://viewer:s3cret@127.0.0.1:{redis_server.port}/0"
    result = inspect("--cluster", url, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["url"] == f"redis://viewer:***@127.0.0.1:{redis_server.port}/0"
    assert len(report["topics"]) == 3
    wrong = inspect("--cluster", url.replace("s3cret", "nope"))
    assert wrong.returncode == 1
    assert "refused" in wrong.stderr and "s3cret" not in wrong.stderr + wrong.stdout


def test_the_prefix_selects_one_cluster(cluster_broker: Make, redis_server: RedisServer) -> None:
    cluster_broker("a").publish_to_cluster("mine", mqkit.Message("m"))
    cluster_broker("b", key_prefix="other*").publish_to_cluster("theirs", mqkit.Message("t"))
    ours = json.loads(inspect("--cluster", redis_server.url, "--json").stdout)
    theirs = json.loads(
        inspect("--cluster", redis_server.url, "--prefix", "other*", "--json").stdout
    )
    assert [t["topic"] for t in ours["topics"]] == ["mine"]
    assert [t["topic"] for t in theirs["topics"]] == ["theirs"]
    assert [n["node_id"] for n in ours["nodes"]] == ["a"]
    assert [n["node_id"] for n in theirs["nodes"]] == ["b"]


def test_an_empty_redis(redis_server: RedisServer) -> None:
    result = inspect("--cluster", redis_server.url)
    assert result.returncode == 0, result.stderr
    assert "0 topic stream(s)" in result.stdout
    assert "no nodes" in result.stdout


def test_unreachable_redis_is_a_clear_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = inspect("--cluster", url)
    assert result.returncode == 1
    assert f"Redis at 127.0.0.1:{url.split(':')[2].split('/')[0]} cannot be reached" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_bad_invocations_are_usage_errors(tmp_path: Any) -> None:
    neither = inspect()
    both = inspect(str(tmp_path), "--cluster", "redis://127.0.0.1:1/0")
    bad_prefix = inspect("--cluster", "redis://127.0.0.1:1/0", "--prefix", "a:b")
    not_a_url = inspect("--cluster", "http://example.invalid/")
    for result in (neither, both, bad_prefix):
        assert result.returncode == 2, result.stderr
    assert "give a persistence directory or --cluster URL" in neither.stderr
    assert "cluster.key_prefix" in bad_prefix.stderr
    assert not_a_url.returncode == 1
    assert "not a Redis URL" in not_a_url.stderr


def redis_cluster(redis_factory: Callable[..., RedisServer]) -> list[RedisServer]:
    """Three primaries in cluster mode, the slots split among them, the cluster formed."""
    # the cluster bus port is given: by default it is the port + 10000, which may not exist
    bus = free_port()
    nodes = [redis_factory("--cluster-enabled", "yes", "--cluster-port", str(bus))]
    nodes += [redis_factory("--cluster-enabled", "yes", "--cluster-port", str(free_port()))]
    nodes += [redis_factory("--cluster-enabled", "yes", "--cluster-port", str(free_port()))]
    clients = [redis.Redis.from_url(n.url) for n in nodes]
    bounds = [0, 5461, 10923, 16384]
    for i, client in enumerate(clients):
        client.execute_command("CLUSTER ADDSLOTS", *range(bounds[i], bounds[i + 1]))
    for client in clients[1:]:
        client.execute_command("CLUSTER MEET", "127.0.0.1", nodes[0].port, bus)
    deadline = time.monotonic() + 60
    while not all(c.cluster("info")["cluster_state"] == "ok" for c in clients):
        assert time.monotonic() < deadline, "the Redis Cluster did not form"
    for client in clients:
        client.close()
    return nodes


def test_a_redis_cluster_is_read_on_every_primary(
    redis_factory: Callable[..., RedisServer],
) -> None:
    nodes = redis_cluster(redis_factory)
    client = RedisCluster.from_url(nodes[0].url)
    topics = [f"t/{i}" for i in range(12)]  # hash tags spread over the three shards
    for topic in topics:
        client.xadd(stream_key("mqkit", topic), {"m": "{}"})
    client.xgroup_create(stream_key("mqkit", "t/3"), "workers", id="0")
    client.set("mqkit:node:n1", "token", px=60_000)
    client.sadd("mqkit:nodes", "n1")
    shards = {
        sum(client.keyslot(stream_key("mqkit", t)) >= b for b in (5461, 10923)) for t in topics
    }
    client.close()
    assert len(shards) == 3  # the streams really live on all three primaries
    result = inspect("--cluster", nodes[1].url, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mode"] == "cluster"
    assert sorted(t["topic"] for t in report["topics"]) == sorted(topics)
    [group] = next(t for t in report["topics"] if t["topic"] == "t/3")["groups"]
    assert (group["name"], group["lag"]) == ("workers", 1)
    assert [(n["node_id"], n["alive"]) for n in report["nodes"]] == [("n1", True)]
