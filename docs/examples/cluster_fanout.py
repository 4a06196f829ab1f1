"""Two brokers in cluster mode share a topic through Redis (docs/cluster.md).

Run it with a Redis server reachable at MQKIT_CLUSTER_URL (default redis://127.0.0.1:6379/0);
tests/plugins/cluster/test_cluster.py runs it against its own redis-server.
"""

import mqkit

base = mqkit.Config.from_env()  # MQKIT_CLUSTER_URL=redis://... fills [cluster] url
node_a = base.replace(enable_cluster=True, cluster_node_id="node-a")
node_b = base.replace(enable_cluster=True, cluster_node_id="node-b")

with mqkit.Broker(node_a) as a, mqkit.Broker(node_b) as b:
    inbox_a = a.subscribe_from_cluster("orders")  # every message from now on, on each node
    inbox_b = b.subscribe_from_cluster("orders")

    a.publish_to_cluster("orders", mqkit.Message("order-1", data={"sku": "A-17", "qty": 2}))
    b.publish_batch_to_cluster("orders", [mqkit.Message(f"order-{n}") for n in (2, 3)])

    for inbox in (inbox_a, inbox_b):  # fan-out: both nodes receive all three, in order
        assert [inbox.get(timeout=5).id for _ in range(3)] == ["order-1", "order-2", "order-3"]

    status = a.cluster_status()
    assert status.status == "active" and status.node_id == "node-a"
    print(status.status, status.node_id, "peers:", status.peers)
