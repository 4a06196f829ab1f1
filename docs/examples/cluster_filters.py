"""A filter and a glob pattern over cluster topics (docs/cluster.md, "Filters over ...").

Run it with a Redis server reachable at MQKIT_CLUSTER_URL (default redis://127.0.0.1:6379/0);
tests/plugins/cluster/test_filters.py runs it against its own redis-server.
"""

import mqkit

base = mqkit.Config.from_env()  # MQKIT_CLUSTER_URL=redis://... fills [cluster] url
node_a = base.replace(enable_cluster=True, cluster_node_id="shop-a")
node_b = base.replace(enable_cluster=True, cluster_node_id="shop-b")

with mqkit.Broker(node_a) as a, mqkit.Broker(node_b) as b:
    paid = b.subscribe_from_cluster_filter("orders/+/paid")  # + is one level, # the rest
    cpu = b.subscribe_from_cluster_pattern("metrics/*.cpu")  # glob, as subscribe_pattern

    # orders/eu/paid and orders/us/paid need not exist yet: each is read from its first message
    a.publish_to_cluster("orders/eu/paid", mqkit.Message("o-1", data={"total": 40}))
    a.publish_to_cluster("orders/eu/open", mqkit.Message("o-2"))  # does not match
    a.publish_to_cluster("orders/us/paid", mqkit.Message("o-3", data={"total": 7}))
    a.publish_to_cluster("metrics/web.cpu", mqkit.Message("m-1", data=0.93))

    got = sorted((m.topic, m.id) for m in (paid.get(timeout=5), paid.get(timeout=5)))
    assert got == [("orders/eu/paid", "o-1"), ("orders/us/paid", "o-3")]  # concrete topics
    reading = cpu.get(timeout=5)
    print(*got, (reading.topic, reading.data))
