"""Consumer groups on a real redis-server: sharing, ack/nack, deadlines, dead letters, resume."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from support.process import Child

import mqkit
from mqkit.plugins.cluster.plugin import dead_key, stream_key

from .conftest import RedisServer, child_env, cluster_config

Make = Callable[..., mqkit.Broker]

GROUP = mqkit.SubOptions(group="workers")


def pending(url: str, topic: str, group: str = "workers") -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xpending(stream_key("mqkit", topic), group)["pending"])
    finally:
        client.close()


def wait_pending(url: str, topic: str, count: int, deadline: float = 20) -> None:
    """Wait (bounded) until the group's pending list of ``topic`` holds ``count`` entries."""
    end = time.monotonic() + deadline
    seen = pending(url, topic)
    while seen != count:
        assert time.monotonic() < end, f"{seen} pending entries, not {count}"
        seen = pending(url, topic)


def drain(subs: list[mqkit.Subscription], count: int, deadline: float = 30) -> list[list[int]]:
    """Take ``count`` messages from ``subs`` together; each list: what one subscription got."""
    got: list[list[int]] = [[] for _ in subs]
    end = time.monotonic() + deadline
    while sum(len(g) for g in got) < count:
        assert time.monotonic() < end, f"only {sum(len(g) for g in got)} of {count} came"
        for i, sub in enumerate(subs):
            with contextlib.suppress(TimeoutError):
                got[i].append(sub.get(timeout=0.05).data)
    return got


def test_a_group_shares_the_messages_across_brokers_without_duplicates(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a, b = cluster_broker("a"), cluster_broker("b")
    opts = mqkit.SubOptions(group="workers", buffer_size=5)
    subs = [a.subscribe_from_cluster("jobs", opts), b.subscribe_from_cluster("jobs", opts)]
    a.publish_batch_to_cluster("jobs", [mqkit.Message(str(i), data=i) for i in range(200)])
    got = drain(subs, 200)
    assert sorted(got[0] + got[1]) == list(range(200))  # each exactly once, none lost
    assert got[0] and got[1]  # both consumers had a share
    for sub in subs:
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.3)
    wait_pending(redis_server.url, "jobs", 0)  # no ack support: settled when handed out


@pytest.mark.parametrize("query", ["", "?protocol=2"])
def test_groups_and_single_publishes_with_resp2_named_or_not(
    cluster_broker: Make, redis_server: RedisServer, query: str
) -> None:
    # The plugin reads RESP2-shaped replies (protocol=3 in the url is refused: test_topology);
    # a single publish sends its XADD itself and reads the reply (Direct).
    url = f"{redis_server.url}{query}"
    a = cluster_broker("a", url=url, enable_ack_support=True)
    sub = a.subscribe_from_cluster("jobs", mqkit.SubOptions(group="workers"))
    for i in range(30):
        a.publish_to_cluster("jobs", mqkit.AckMessage(str(i), data={"n": i}))
    got = [sub.get(timeout=10) for _ in range(30)]
    assert [m.data for m in got] == [{"n": i} for i in range(30)]
    for message in got:
        sub.ack(message.ack_id)  # type: ignore[attr-defined]
    wait_pending(redis_server.url, "jobs", 0)


def test_a_group_starts_at_the_end_of_the_stream(cluster_broker: Make) -> None:
    a = cluster_broker("a")
    a.publish_to_cluster("jobs", mqkit.Message("before"))
    sub = a.subscribe_from_cluster("jobs", GROUP)
    a.publish_to_cluster("jobs", mqkit.Message("after"))
    assert sub.get(timeout=10).id == "after"
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.3)


def test_a_group_and_a_fan_out_subscription_each_get_every_message(cluster_broker: Make) -> None:
    a, b = cluster_broker("a"), cluster_broker("b")
    fan = a.subscribe_from_cluster("jobs", mqkit.SubOptions(buffer_size=50))
    workers = [a.subscribe_from_cluster("jobs", GROUP), b.subscribe_from_cluster("jobs", GROUP)]
    other = b.subscribe_from_cluster("jobs", mqkit.SubOptions(group="audit", buffer_size=50))
    a.publish_batch_to_cluster("jobs", [mqkit.Message(str(i), data=i) for i in range(20)])
    assert [fan.get(timeout=10).data for _ in range(20)] == list(range(20))
    assert [other.get(timeout=10).data for _ in range(20)] == list(range(20))
    first, second = drain(workers, 20)
    assert sorted(first + second) == list(range(20))


def test_ack_is_xack_once(cluster_broker: Make, redis_server: RedisServer) -> None:
    a = cluster_broker("a", enable_ack_support=True)
    sub = a.subscribe_from_cluster("jobs", GROUP)
    a.publish_to_cluster("jobs", mqkit.AckMessage("m", data=1))
    got = sub.get(timeout=10)
    assert isinstance(got, mqkit.AckMessage) and got.ack_id
    assert pending(redis_server.url, "jobs") == 1  # held until the consumer acks
    sub.ack(got.ack_id)
    wait_pending(redis_server.url, "jobs", 0)
    with pytest.raises(mqkit.AckNotFoundError):
        sub.ack(got.ack_id)  # never acked twice


def test_a_plain_message_is_settled_when_handed_out(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a", enable_ack_support=True)
    sub = a.subscribe_from_cluster("jobs", GROUP)
    a.publish_to_cluster("jobs", mqkit.Message("m", data=1))
    assert sub.get(timeout=10).data == 1
    wait_pending(redis_server.url, "jobs", 0)


def test_nack_redelivers_and_raises_the_delivery_count(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a", enable_ack_support=True)
    sub = a.subscribe_from_cluster("jobs", GROUP)
    a.publish_to_cluster("jobs", mqkit.AckMessage("m", data=1))
    first = sub.get(timeout=10)
    sub.nack(first.ack_id)
    again = sub.get(timeout=10)
    assert (again.id, again.attempt, again.ack_id) == ("m", 2, first.ack_id)
    client = redis.Redis.from_url(redis_server.url)
    key = stream_key("mqkit", "jobs")
    end = time.monotonic() + 10
    rows = client.xpending_range(key, "workers", "-", "+", 10)
    while rows[0]["times_delivered"] != 2:  # the redelivery is counted by the stream too
        assert time.monotonic() < end, rows
        rows = client.xpending_range(key, "workers", "-", "+", 10)
    client.close()
    sub.ack(again.ack_id)
    wait_pending(redis_server.url, "jobs", 0)


def test_a_missed_ack_deadline_redelivers(cluster_broker: Make, redis_server: RedisServer) -> None:
    a = cluster_broker("a", enable_ack_support=True, default_ack_timeout=0.3)
    sub = a.subscribe_from_cluster("jobs", GROUP)
    a.publish_to_cluster("jobs", mqkit.AckMessage("m", data=1))
    first = sub.get(timeout=10)
    again = sub.get(timeout=10)  # not acked within 0.3 s
    assert (again.id, again.attempt) == ("m", first.attempt + 1)
    sub.ack(again.ack_id)
    wait_pending(redis_server.url, "jobs", 0)


@pytest.mark.parametrize("local_dlq", [False, True])
def test_dead_letter_stream_after_max_ack_retries(
    cluster_broker: Make, redis_server: RedisServer, local_dlq: bool
) -> None:
    dlq = {"enable_dead_letter_queue": True, "dead_letter_topic": "dlq"} if local_dlq else {}
    a = cluster_broker("a", enable_ack_support=True, max_ack_retries=1, **dlq)
    sub = a.subscribe_from_cluster("jobs", GROUP)
    a.publish_to_cluster("jobs", mqkit.AckMessage("m", data={"n": 1}, meta={"k": "v"}))
    sub.nack(sub.get(timeout=10).ack_id)
    last = sub.get(timeout=10)
    assert last.attempt == 2
    sub.nack(last.ack_id)  # the second delivery was the last: dead-lettered
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.3)
    wait_pending(redis_server.url, "jobs", 0)  # XACKed in the group
    plugin = a.get_plugin("cluster")
    assert plugin is not None
    end = time.monotonic() + 10
    records = plugin.dead_letters("jobs")  # type: ignore[attr-defined]
    while not records:
        assert time.monotonic() < end
        records = plugin.dead_letters("jobs")  # type: ignore[attr-defined]
    [record] = records
    assert (record.reason, record.attempts, record.original_topic) == (
        "nacked after 2 attempts",
        2,
        "jobs",
    )
    assert record.message.data == {"n": 1}
    assert dict(record.message.meta) == {
        "k": "v",
        "x-original-topic": "jobs",
        "x-dead-letter-reason": "nacked after 2 attempts",
        "x-attempts": "2",
    }
    client = redis.Redis.from_url(redis_server.url)
    [(_, fields)] = client.xrange(dead_key("mqkit", "jobs"))
    client.close()
    assert fields[b"reason"] == b"nacked after 2 attempts" and fields[b"group"] == b"workers"
    if local_dlq:  # the node's own dead letter queue has it too
        assert [r.reason for r in a.dead_letters()] == ["nacked after 2 attempts"]


def test_a_closed_broker_gives_its_entries_back_to_the_group(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a", enable_ack_support=True, default_ack_timeout=30)
    b = cluster_broker("b", enable_ack_support=True, default_ack_timeout=30)
    held = a.subscribe_from_cluster("jobs", GROUP)
    a.publish_batch_to_cluster("jobs", [mqkit.AckMessage(str(i), data=i) for i in range(5)])
    taken = [held.get(timeout=10) for _ in range(2)]  # two delivered, three buffered
    assert [m.data for m in taken] == [0, 1]
    survivor = b.subscribe_from_cluster("jobs", GROUP)
    a.close()  # nothing acked: all five go back to the group at once (no ack timeout wait)
    got = [survivor.get(timeout=20) for _ in range(5)]
    assert sorted(m.data for m in got) == list(range(5))
    for message in got:
        survivor.ack(message.ack_id)
    wait_pending(redis_server.url, "jobs", 0)


def test_an_expired_message_is_not_delivered_and_is_dead_lettered(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    clock = mqkit.FakeClock()
    a = cluster_broker("a")
    b = mqkit.Broker(cluster_config(redis_server.url, "b"), clock=clock)
    try:
        sub = b.subscribe_from_cluster("jobs", GROUP)
        soon = clock.now() + timedelta(seconds=60)
        a.publish_to_cluster("jobs", mqkit.TTLMessage("old", data=1, expires_at=soon))
        end = time.monotonic() + 10
        while sub.stats().received < 1:  # buffered before its expiry passes (on b's clock)
            assert time.monotonic() < end
        clock.advance(120)
        a.publish_to_cluster("jobs", mqkit.Message("new", data=2))
        assert sub.get(timeout=10).id == "new"  # the expired one was withheld
        wait_pending(redis_server.url, "jobs", 0)
        plugin = b.get_plugin("cluster")
        records = plugin.dead_letters("jobs")  # type: ignore[union-attr]
        while not records:
            assert time.monotonic() < end
            records = plugin.dead_letters("jobs")  # type: ignore[union-attr]
        assert [(r.message.id, r.reason) for r in records] == [("old", "expired")]
    finally:
        b.close()


def test_priority_ranks_a_cluster_subscription_per_node(cluster_broker: Make) -> None:
    a = cluster_broker("a", enable_priority_queue=True)
    sub = a.subscribe_from_cluster("jobs")
    a.publish_batch_to_cluster(
        "jobs", [mqkit.PriorityMessage(str(p), data=p, priority=p) for p in (1, 5, 3)]
    )
    end = time.monotonic() + 10
    while sub.stats().received < 3:  # all three buffered on this node
        assert time.monotonic() < end
    assert [sub.get(timeout=1).data for _ in range(3)] == [5, 3, 1]


def test_a_local_subscription_refuses_a_group(cluster_broker: Make) -> None:
    a = cluster_broker("a")
    with pytest.raises(mqkit.InvalidConfigError) as info:
        a.subscribe("jobs", GROUP)
    assert "cluster subscriptions" in str(info.value) and info.value.field == "group"
    with pytest.raises(mqkit.InvalidConfigError) as bad:
        a.subscribe_from_cluster("jobs", mqkit.SubOptions(group="two words"))
    assert bad.value.field == "group"


@pytest.mark.parametrize("fsync", ["everysec", "always"])
def test_a_group_resumes_its_pending_entries_after_a_redis_restart(
    redis_factory: Callable[..., RedisServer], fsync: str
) -> None:
    server = redis_factory("--appendonly", "yes", "--appendfsync", fsync)
    fields = {"connect_timeout": 0.5, "socket_timeout": 0.5, "read_block": 0.2}
    cfg = cluster_config(server.url, "a", enable_ack_support=True, **fields)
    with mqkit.Broker(cfg) as a:
        sub = a.subscribe_from_cluster("jobs", GROUP)
        a.publish_batch_to_cluster("jobs", [mqkit.AckMessage(str(i), data=i) for i in range(5)])
        first = [sub.get(timeout=10) for _ in range(2)]
        sub.ack(first[0].ack_id)
        wait_pending(server.url, "jobs", 4)
        server.stop()
        sub.ack(first[1].ack_id)  # sent once Redis is back
        server.start()
        a.publish_batch_to_cluster("jobs", [mqkit.AckMessage(str(i), data=i) for i in range(5, 10)])
        rest = [sub.get(timeout=20) for _ in range(8)]
        assert [m.data for m in rest] == list(range(2, 10))  # no gap, no duplicate
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.3)
        for message in rest:
            sub.ack(message.ack_id)
        wait_pending(server.url, "jobs", 0)


def test_handlers_consume_a_cluster_topic_as_a_group(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    done: queue.Queue[tuple[str, int, int]] = queue.Queue()
    brokers = [cluster_broker(n, enable_ack_support=True) for n in ("a", "b")]
    for broker in brokers:
        name = broker.cluster_status().node_id

        @broker.subscriber("jobs", group="workers", cluster=True)
        def work(n: int, message: mqkit.Message, name: str = name) -> None:
            if n == 7 and message.attempt == 1:
                raise RuntimeError("first try fails")  # nack: redelivered
            done.put((name, n, message.attempt))

    threads = [threading.Thread(target=b.run, daemon=True) for b in brokers]
    for thread in threads:
        thread.start()
    brokers[0].publish_batch_to_cluster(
        "jobs", [mqkit.AckMessage(str(i), data=i) for i in range(20)]
    )
    got = [done.get(timeout=30) for _ in range(20)]
    assert sorted(n for _, n, _ in got) == list(range(20))
    assert [attempt for _, n, attempt in got if n == 7] == [2]
    wait_pending(redis_server.url, "jobs", 0)
    for broker in brokers:
        broker.close()
    for thread in threads:
        thread.join(30)
    assert done.empty()


def test_cluster_handlers_need_the_cluster(cluster_broker: Make) -> None:
    local = mqkit.Broker()
    try:
        with pytest.raises(mqkit.ClusterDisabledError):
            local.subscriber("jobs", group="workers", cluster=True)(lambda n: None)
    finally:
        local.close()


GROUP_CHILD = Path(__file__).with_name("group_child.py")


def spawn(url: str, node: str, mode: str, env: dict[str, str]) -> Child:
    child = Child([sys.executable, str(GROUP_CHILD), url, node, mode], env=env)
    child.wait_for(lambda line: line.startswith("ready"), 60, f"{node} not ready")
    return child


def collect(children: list[Child], word: str, count: int, deadline: float = 60) -> list[str]:
    """The lines starting with ``word`` that ``children`` print, until ``count`` of them."""
    found: list[str] = []
    end = time.monotonic() + deadline
    while len(found) < count:
        assert time.monotonic() < end, f"{len(found)} of {count} {word!r} lines: {found}"
        for child in children:
            with contextlib.suppress(queue.Empty):
                line = child.lines.get(timeout=0.05)
                if line.startswith(word + " "):
                    found.append(line.split()[1])
    return found


def quiet(children: list[Child], word: str) -> None:
    """No child prints another ``word`` line within half a second (a bounded look)."""
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        for child in children:
            with contextlib.suppress(queue.Empty):
                line = child.lines.get(timeout=0.05)
                assert not line.startswith(word + " "), line


def test_three_broker_processes_on_one_redis(
    redis_server: RedisServer, cluster_broker: Make
) -> None:
    env = child_env()
    env["ACK_TIMEOUT"] = "5"  # no process is starved that long: no claim, no duplicate
    children = [spawn(redis_server.url, f"p{i}", "all", env) for i in range(3)]
    try:
        publisher = cluster_broker("publisher", enable_ack_support=True)
        publisher.publish_batch_to_cluster(
            "fan", [mqkit.Message(str(i), data=i) for i in range(20)]
        )
        fan = collect(children, "fan", 60)  # fan-out: every process gets all 20
        assert sorted(fan) == sorted(str(i) for i in range(20) for _ in range(3))
        publisher.publish_batch_to_cluster(
            "jobs", [mqkit.AckMessage(str(i), data=i) for i in range(60)]
        )
        acked = collect(children, "acked", 60)  # a group: each message once, none lost
        assert sorted(acked, key=int) == [str(i) for i in range(60)]
        publisher.publish_batch_to_cluster(
            "work", [mqkit.AckMessage(str(i), data=i) for i in range(60)]
        )
        handled = collect(children, "handled", 60)  # handlers of a group, three processes
        assert sorted(handled, key=int) == [str(i) for i in range(60)]
        wait_pending(redis_server.url, "jobs", 0)
        wait_pending(redis_server.url, "work", 0)
        quiet(children, "acked")
        quiet(children, "handled")
    finally:
        for child in children:
            child.stop_now()


def test_a_killed_consumer_process_leaves_its_messages_to_the_survivors(
    redis_server: RedisServer, cluster_broker: Make
) -> None:
    env = child_env()
    env["ACK_TIMEOUT"] = "3"
    victim = spawn(redis_server.url, "victim", "hold", env)
    publisher = cluster_broker("publisher", enable_ack_support=True)
    publisher.publish_batch_to_cluster(
        "kill", [mqkit.AckMessage(str(i), data=i) for i in range(10)]
    )
    held = collect([victim], "held", 10)  # all ten delivered to the victim, none acked
    assert sorted(held, key=int) == [str(i) for i in range(10)]
    survivors = [spawn(redis_server.url, f"s{i}", "claim", env) for i in range(2)]
    try:
        assert pending(redis_server.url, "kill") == 10
        victim.kill()  # kill -9 while it holds ten unacked messages
        acked = collect(survivors, "acked", 10)
        assert sorted(acked, key=int) == [str(i) for i in range(10)]  # every one, once
        wait_pending(redis_server.url, "kill", 0)
        quiet(survivors, "acked")  # no message acked twice
    finally:
        for child in survivors:
            child.stop_now()


def test_the_docs_group_example_runs(redis_server: RedisServer) -> None:
    example = Path(__file__).parents[3] / "docs" / "examples" / "cluster_group.py"
    env = child_env()
    env["MQKIT_CLUSTER_URL"] = redis_server.url
    child = Child([sys.executable, str(example)], env=env)
    line = child.wait_for(lambda text: text.startswith("done"), 60, "the example failed")
    assert child.wait(60) == 0
    assert line.strip() == "done 20 jobs"
    assert pending(redis_server.url, "jobs") == 0


def test_a_group_is_made_again_when_its_stream_was_deleted(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a", read_block=0.2)
    sub = a.subscribe_from_cluster("jobs", GROUP)
    a.publish_to_cluster("jobs", mqkit.Message("first", data=1))
    assert sub.get(timeout=10).id == "first"
    client = redis.Redis.from_url(redis_server.url)
    client.delete(stream_key("mqkit", "jobs"))  # the group goes with it
    client.close()
    a.publish_to_cluster("jobs", mqkit.Message("second", data=2))  # a new stream, no group
    assert sub.get(timeout=20).id == "second"  # the reader made the group again, from the start
    wait_pending(redis_server.url, "jobs", 0)


def make_group(url: str, topic: str) -> None:
    client = redis.Redis.from_url(url)
    client.xgroup_create(stream_key("mqkit", topic), "workers", id="$", mkstream=True)
    client.close()


def ghost_read(url: str, topic: str, count: int) -> None:
    """A consumer of the group that reads ``count`` entries and dies without acking them."""
    client = redis.Redis.from_url(url)
    client.xreadgroup("workers", "ghost", {stream_key("mqkit", topic): ">"}, count=count)
    client.close()


def test_a_dead_consumers_entries_are_claimed_after_the_ack_timeout(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a", enable_ack_support=True, default_ack_timeout=0.5)
    make_group(redis_server.url, "jobs")
    a.publish_batch_to_cluster("jobs", [mqkit.AckMessage(str(i), data=i) for i in range(3)])
    ghost_read(redis_server.url, "jobs", 3)  # read by "ghost", which never acks
    sub = a.subscribe_from_cluster("jobs", GROUP)
    got = [sub.get(timeout=20) for _ in range(3)]  # claimed once idle for 0.5 s
    assert sorted(m.data for m in got) == [0, 1, 2]
    assert {m.attempt for m in got} == {2}  # the stream's delivery count
    for message in got:
        sub.ack(message.ack_id)
    wait_pending(redis_server.url, "jobs", 0)


def test_an_entry_delivered_too_often_is_dead_lettered_when_claimed(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a", enable_ack_support=True, default_ack_timeout=0.5, max_ack_retries=0)
    make_group(redis_server.url, "jobs")
    a.publish_to_cluster("jobs", mqkit.AckMessage("m", data=1))
    ghost_read(redis_server.url, "jobs", 1)  # its one delivery: max_ack_retries=0 allows no more
    sub = a.subscribe_from_cluster("jobs", GROUP)
    wait_pending(redis_server.url, "jobs", 0)  # claimed, dead-lettered and XACKed
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.3)
    plugin = a.get_plugin("cluster")
    [record] = plugin.dead_letters("jobs")  # type: ignore[union-attr]
    assert (record.message.id, record.reason, record.attempts) == (
        "m",
        "ack timeout after 1 attempts",
        1,
    )


def test_a_second_entry_with_the_same_ack_id_waits_for_the_first(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    # a publisher that retried a publish which had been stored: two entries, one ack id
    a = cluster_broker("a", enable_ack_support=True)
    sub = a.subscribe_from_cluster("jobs", GROUP)
    twice = [mqkit.AckMessage("m", data=n, ack_id="job-1") for n in (1, 2)]
    a.publish_batch_to_cluster("jobs", [*twice, mqkit.AckMessage("other", data=3)])
    first, other = sub.get(timeout=10), sub.get(timeout=10)
    assert [(first.data, first.ack_id), (other.data, other.id)] == [(1, "job-1"), (3, "other")]
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.3)  # the second copy of job-1 is held back while the first is unacked
    sub.ack("job-1")
    second = sub.get(timeout=10)
    assert (second.data, second.ack_id) == (2, "job-1")
    sub.ack("job-1")
    sub.ack(other.ack_id)
    wait_pending(redis_server.url, "jobs", 0)


def blocked_reads(url: str) -> int:
    """How many clients wait in a blocking XREADGROUP now (CLIENT LIST)."""
    client = redis.Redis.from_url(url)
    try:
        return sum(
            1 for c in client.client_list() if c["cmd"] == "xreadgroup" and "b" in c["flags"]
        )
    finally:
        client.close()


def test_an_entry_a_full_buffer_drops_goes_back_to_the_group(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a", enable_ack_support=True)
    opts = mqkit.SubOptions(group="workers", buffer_size=1, policy=mqkit.Backpressure.DROP_NEWEST)
    sub = a.subscribe_from_cluster("jobs", opts)
    a.publish_to_cluster("jobs", mqkit.AckMessage("0", data=0))
    first = sub.get(timeout=10)
    end = time.monotonic() + 10
    while blocked_reads(redis_server.url) < 1:  # the reader waits for one more entry
        assert time.monotonic() < end
    sub.nack(first.ack_id)  # back in the buffer (a redelivery ignores the bound): it is full
    a.publish_to_cluster("jobs", mqkit.AckMessage("1", data=1))  # read, dropped, given back
    while sub.stats().dropped < 1:
        assert time.monotonic() < end
    got = []
    for _ in range(2):
        message = sub.get(timeout=20)
        got.append((message.data, message.attempt))
        sub.ack(message.ack_id)
    assert sorted(got) == [(0, 2), (1, 2)]  # the dropped one came back, claimed: attempt 2
    wait_pending(redis_server.url, "jobs", 0)


def test_start_says_where_a_new_group_begins(
    cluster_broker: Make, redis_server: RedisServer
) -> None:
    a = cluster_broker("a")
    for i in range(3):
        a.publish_to_cluster("jobs", mqkit.Message(f"old{i}", data=i))
    early = a.subscribe_from_cluster("jobs", mqkit.SubOptions(group="replay"), start="earliest")
    late = a.subscribe_from_cluster("jobs", GROUP)  # a new group: from now on
    joined = a.subscribe_from_cluster("jobs", mqkit.SubOptions(group="replay"), start="now")
    a.publish_to_cluster("jobs", mqkit.Message("new", data=3))
    first, second = drain([early, joined], 4)  # "replay" began at the stream's start
    assert sorted(first + second) == [0, 1, 2, 3]
    assert late.get(timeout=10).data == 3  # "workers" began at its first subscription
    for sub in (early, joined, late):
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.2)
    with pytest.raises(mqkit.ClusterError, match="start="):
        a.subscribe_from_cluster("jobs", mqkit.SubOptions(group="other"), start="yesterday")
