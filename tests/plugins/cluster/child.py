"""A cluster broker in its own process: ``child.py URL NODE TOPIC COUNT`` publishes COUNT
messages (``0..COUNT-1``) to TOPIC, then prints ``published``; with COUNT < 0 it subscribes
to TOPIC, prints ``ready``, then one line per message received (its payload) until -COUNT."""

from __future__ import annotations

import sys

import mqkit
from mqkit.plugins.cluster import ClusterSettings


def main() -> None:
    url, node, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cfg = mqkit.Config(
        enable_cluster=True,
        cluster_node_id=node,
        settings={"cluster": ClusterSettings(url=url)},
    )
    with mqkit.Broker(cfg) as broker:
        if count >= 0:
            for i in range(count):
                broker.publish_to_cluster(topic, mqkit.Message(str(i), data=i))
            print("published", flush=True)
            return
        sub = broker.subscribe_from_cluster(topic, mqkit.SubOptions(buffer_size=-count))
        print("ready", flush=True)
        for _ in range(-count):
            print(sub.get(timeout=60).data, flush=True)


if __name__ == "__main__":
    main()
