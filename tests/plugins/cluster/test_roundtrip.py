"""Property: what is published to the cluster is what a cluster subscription consumes.

One redis-server and one pair of brokers for the whole module (each example subscribes on one
broker, publishes from the other, and cancels); topic names and payloads come from Hypothesis.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mqkit

from .conftest import RedisServer, cluster_config

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)  # any encodable text
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | TEXT
    | st.binary(max_size=64)  # any bytes, most of them not UTF-8
)
PAYLOADS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
TOPICS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda t: t == t.strip() and not any(c in t for c in "*?[]#+")
)


@pytest.fixture(scope="module")
def brokers(module_redis: RedisServer) -> Iterator[tuple[mqkit.Broker, mqkit.Broker]]:
    cfg = cluster_config(module_redis.url, "writer", read_block=0.1)
    with (
        mqkit.Broker(cfg) as writer,
        mqkit.Broker(attrs.evolve(cfg, cluster_node_id="reader")) as reader,
    ):
        yield writer, reader


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (``1 == 1.0 == True`` is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=60, deadline=None)
@given(topic=TOPICS, payloads=st.lists(PAYLOADS, min_size=1, max_size=3), batch=st.booleans())
def test_what_is_published_is_what_is_consumed(
    brokers: tuple[mqkit.Broker, mqkit.Broker], topic: str, payloads: list[Any], batch: bool
) -> None:
    writer, reader = brokers
    try:
        sub = reader.subscribe_from_cluster(topic, mqkit.SubOptions(buffer_size=16))
    except mqkit.InvalidTopicError:
        assume(False)
        return
    try:
        sent = [
            mqkit.Message(f"m{i}", data=p, meta={"k\u00e9y": "v\u2603"})
            for i, p in enumerate(payloads)
        ]
        if batch:
            writer.publish_batch_to_cluster(topic, sent)
        else:
            for message in sent:
                writer.publish_to_cluster(topic, message)
        for message in sent:
            got = sub.get(timeout=10)
            assert (got.id, got.topic, dict(got.meta)) == (message.id, topic, dict(message.meta))
            assert same(got.data, message.data), (got.data, message.data)
        with pytest.raises(TimeoutError):
            sub.get(timeout=0)
    finally:
        sub.cancel()
