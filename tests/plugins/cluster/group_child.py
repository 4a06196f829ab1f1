"""A cluster broker in its own process: ``group_child.py URL NODE MODE`` (ack timeout from
``ACK_TIMEOUT`` in the environment), printing one line per event until it is killed.

MODE ``all``: a fan-out subscription of ``fan`` (``fan <data>``), a consumer of group
``workers`` of ``jobs`` that acks (``acked <data> <attempt>``) and a handler of group
``workers`` of ``work`` (``handled <data>``); ``hold``: a consumer of group ``workers`` of
``kill`` that never acks (``held <data>``); ``claim``: one of the same group that acks
(``acked <data> <attempt>``). ``ready`` once subscribed.
"""

from __future__ import annotations

import os
import sys
import threading

import mqkit
from mqkit.plugins.cluster import ClusterSettings


def consume(sub: mqkit.Subscription, word: str, ack: bool) -> None:
    for message in sub:
        if ack:
            sub.ack(message.ack_id)  # type: ignore[attr-defined]
        print(word, message.data, message.attempt, flush=True)


def main() -> None:
    url, node, mode = sys.argv[1:4]
    cfg = mqkit.Config(
        enable_cluster=True,
        cluster_node_id=node,
        cluster_sync_interval=0.2,
        enable_ack_support=True,
        default_ack_timeout=float(os.environ.get("ACK_TIMEOUT", "2")),
        max_ack_retries=100,
        settings={"cluster": ClusterSettings(url=url, read_block=0.2)},
    )
    broker = mqkit.Broker(cfg)
    group = mqkit.SubOptions(group="workers", buffer_size=100)
    if mode in ("hold", "claim"):
        sub = broker.subscribe_from_cluster("kill", group)
        print("ready", flush=True)
        consume(sub, "held" if mode == "hold" else "acked", mode == "claim")
        return
    fan = broker.subscribe_from_cluster("fan", mqkit.SubOptions(buffer_size=100))
    jobs = broker.subscribe_from_cluster("jobs", group)
    for sub, word in ((fan, "fan"), (jobs, "acked")):
        args = (sub, word, word == "acked")
        threading.Thread(target=consume, args=args, daemon=True).start()

    @broker.subscriber("work", group="workers", cluster=True)
    def work(n: int) -> None:
        print("handled", n, flush=True)

    print("ready", flush=True)
    broker.run()


if __name__ == "__main__":
    main()
