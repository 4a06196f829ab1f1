"""Two brokers consume a cluster topic as one consumer group (docs/cluster.md).

Run it with a Redis server reachable at MQKIT_CLUSTER_URL (default redis://127.0.0.1:6379/0);
tests/plugins/cluster/test_groups.py runs it against its own redis-server.
"""

import mqkit

base = mqkit.Config.from_env().replace(enable_cluster=True, enable_ack_support=True)
workers = mqkit.SubOptions(group="workers", buffer_size=10)

with (
    mqkit.Broker(base.replace(cluster_node_id="node-a")) as a,
    mqkit.Broker(base.replace(cluster_node_id="node-b")) as b,
):
    subs = [a.subscribe_from_cluster("jobs", workers), b.subscribe_from_cluster("jobs", workers)]
    a.publish_batch_to_cluster("jobs", [mqkit.AckMessage(f"job-{n}", data=n) for n in range(20)])

    done: list[int] = []
    while len(done) < 20:  # each job goes to one of the two nodes
        for sub in subs:
            try:
                job = sub.get(timeout=0.1)
            except TimeoutError:
                continue
            done.append(job.data)
            sub.ack(job.ack_id)  # XACK: settled for the whole group

    assert sorted(done) == list(range(20))
    print("done", len(done), "jobs")
