"""Redis stopped (SIGTERM) or killed (SIGKILL) and restarted mid-stream, with AOF on.

A publisher thread publishes 0, 1, 2, ... without pause all along; what ``publish_to_cluster``
returned for must reach a fan-out reader on another broker once Redis is back - in order,
each once - and nothing is read that was never published.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import attrs
import pytest

import mqkit

from .conftest import RedisServer, cluster_config


def eventually(check: Callable[[], bool], timeout: float = 20) -> bool:
    """``check()`` until it holds (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0)  # let the broker's threads run; the deadline bounds the wait
    return True


class Publisher:
    """Publishes 0, 1, 2, ... to the cluster topic ``t`` until stopped; records each outcome."""

    def __init__(self, broker: mqkit.Broker) -> None:
        self.broker = broker
        self.returned: list[int] = []
        self.failed: list[int] = []
        self.slowest_failure = 0.0
        self.unexpected: list[BaseException] = []
        self.stop = threading.Event()
        self.failing = threading.Event()
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.broker.publish_to_cluster("t", mqkit.Message(str(n), data=n))
            except mqkit.ClusterUnavailableError:
                self.slowest_failure = max(self.slowest_failure, time.monotonic() - started)
                self.failed.append(n)
                self.failing.set()
                self.stop.wait(0.01)  # pace the retries while Redis is away
            except BaseException as exc:  # reported by the test
                self.unexpected.append(exc)
                return
            else:
                with self.changed:
                    self.returned.append(n)
                    self.changed.notify_all()
            n += 1

    def wait_returned(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` publishes returned in all."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.returned) >= count, timeout), (
                f"only {len(self.returned)} publishes returned; errors: {self.unexpected}"
            )


@pytest.mark.parametrize(
    ("fsync", "how"),
    [("everysec", "SIGTERM"), ("always", "SIGTERM"), ("always", "SIGKILL")],
)
def test_every_returned_publish_is_delivered_after_a_redis_restart(
    redis_factory: Callable[..., RedisServer], fsync: str, how: str
) -> None:
    server = redis_factory("--appendonly", "yes", "--appendfsync", fsync)
    cfg = cluster_config(
        server.url,
        "writer",
        connect_timeout=0.5,
        socket_timeout=0.5,
        read_block=0.2,
        reconnect_max=0.2,
    )
    with (
        mqkit.Broker(cfg) as writer,
        mqkit.Broker(attrs.evolve(cfg, cluster_node_id="reader")) as reader,
    ):
        sub = reader.subscribe_from_cluster("t", mqkit.SubOptions(buffer_size=1_000_000))
        publisher = Publisher(writer)
        publisher.thread.start()
        try:
            publisher.wait_returned(200)
            server.kill() if how == "SIGKILL" else server.stop()
            assert publisher.failing.wait(30), "no publish failed while Redis was away"

            # while away: clear errors, bounded waits, status and health say so
            assert writer.cluster_status().status == "disconnected"
            assert writer.health_check().status == "degraded"
            assert any("cannot be reached" in p for p in writer.health_check().problems)
            assert eventually(lambda: reader.cluster_status().status == "disconnected")
            local = writer.subscribe("local")  # the local broker keeps working
            writer.publish("local", mqkit.Message("still here"))
            assert local.get(timeout=5).id == "still here"
            with pytest.raises(mqkit.ClusterUnavailableError):
                reader.subscribe_from_cluster("t")

            before = len(publisher.returned)
            server.start()  # same port, same directory: Redis loads its AOF
            publisher.wait_returned(before + 200)
        finally:
            publisher.stop.set()
            publisher.thread.join(30)
        assert not publisher.unexpected, publisher.unexpected
        assert publisher.failed, "Redis was never away for the publisher"
        assert publisher.slowest_failure < 10  # bounded by the timeouts, not forever

        returned = publisher.returned
        got: list[int] = []
        while not got or got[-1] < returned[-1]:
            got.append(sub.get(timeout=30).data)
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.3)
        assert got == sorted(set(got)), "a message came twice or out of order"
        assert set(returned) <= set(got), f"lost: {sorted(set(returned) - set(got))[:10]}"
        assert set(got) <= set(returned) | set(publisher.failed)  # nothing invented
        # only a publish that raised may be missing (it may or may not have been stored)
        assert eventually(lambda: writer.cluster_status().status == "active")
        assert eventually(lambda: reader.cluster_status().status == "active")
        assert writer.health_check().status == "healthy"


def test_health_names_the_unreachable_redis_once_a_publish_failed(
    redis_server: RedisServer, cluster_broker: Callable[..., mqkit.Broker]
) -> None:
    broker = cluster_broker("a", cluster_sync_interval=60)  # no heartbeat notices it first
    assert broker.health_check().status == "healthy"
    redis_server.stop()
    with pytest.raises(mqkit.ClusterUnavailableError) as info:
        broker.publish_to_cluster("t", mqkit.Message("m"))
    where = f"Redis at 127.0.0.1:{redis_server.port}"
    assert str(info.value).startswith(
        f"mq: cluster unavailable: publish to cluster topic 't': {where} cannot be reached ("
    )
    assert broker.cluster_status().status == "disconnected"
    assert broker.health_check().problems == (f"cluster: {where} cannot be reached",)
