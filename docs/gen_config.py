"""Generate docs/configuration.md from ``mqkit.Config``: every field, its type and default.

Run ``python docs/gen_config.py`` after changing ``Config``; a test checks the page is current
and that every field is described. A field's description is its attribute docstring in
``mqkit/core/config.py`` (a string literal right below the field) when it has one, else the
entry in ``DESCRIPTIONS`` below.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import sys
from pathlib import Path
from typing import Any

import attrs

from mqkit.core import config as config_module
from mqkit.core.config import Config

HEADER = """# Configuration reference

Generated from `mqkit.Config` by `python docs/gen_config.py`; do not edit by hand.

A broker is configured with one frozen `mqkit.Config`. `Config()` holds the seed's
`DefaultConfig()`; build one in code, from a mapping, from the environment, or from a TOML file:

```python
import mqkit

cfg = mqkit.Config(enable_ack_support=True, default_ack_timeout=10)
cfg = mqkit.Config.from_dict({"max_topics": 1000})
cfg = mqkit.Config.from_env(environ={"MQKIT_MAX_TOPICS": "1000"})  # default: os.environ
cfg.validate()  # InvalidConfigError names the field
print(cfg.replace(max_topics=10).max_topics)
```

A TOML file holds the same keys at the top level (`mqkit serve --config mqkit.toml` reads one):

```toml title="mqkit.toml"
enable_dead_letter_queue = true
dead_letter_topic = "dlq"
default_ack_timeout = 10      # durations are seconds
cluster_nodes = ["a:7000", "b:7000"]
```

```python
import mqkit

cfg = mqkit.Config.from_toml("mqkit.toml")
print(cfg.dead_letter_topic)
```

`Config.from_toml` raises `mqkit.InvalidConfigError` for a missing file, malformed TOML, an
unknown key or a bad value, and the message names the key and the file
(`mq: invalid configuration: max_topics cannot be negative (in mqkit.toml)`).

**Environment.** `Config.from_env()` reads `MQKIT_<FIELD NAME IN UPPER CASE>`: booleans
`true/false/1/0`, durations in seconds, lists comma-separated. A variable with the prefix that
names no field is an error.

**Types.** *bool*: `true`, `false`, `1` or `0` (as text in any case, or a TOML boolean); `yes`,
`on`, `2` or `1.0` is an `InvalidConfigError` naming the field and the value.
*duration*: seconds as a finite number (a `datetime.timedelta` is accepted in code); `nan` and
`inf` are refused, naming the field. *list*: a list of strings (TOML array, or comma-separated in
the environment).
"""

SECTIONS: dict[str, str] = {
    "seed": "The seed's fields",
    "mqkit": "What mqkit adds",
    "mqtt": "The MQTT gateway",
    "serve": "`mqkit serve`",
    "plugins": "Plugins",
}

DESCRIPTIONS: dict[str, tuple[str, str]] = {
    # name: (section, description)
    "enable_health_check": ("seed", "Keep `health_check()` reporting (as in the seed)."),
    "max_topics": ("seed", "Most exact topics with a subscription at once; `0`: no limit. "
                   "More raises `LimitExceededError`."),
    "max_subscribers": ("seed", "Most subscriptions per topic; `0`: no limit."),
    "default_buffer_size": ("seed", "Buffer size of a subscription whose `SubOptions` gives "
                            "none."),
    "enable_metrics": ("seed", "Count messages and latency (the `metrics` plugin)."),
    "health_check_interval": ("seed", "Seconds between periodic health checks (kept for the "
                              "seed; `health_check()` is computed on demand)."),
    "message_ttl": ("seed", "Default time-to-live of messages that carry no `expires_at`; `0`: "
                    "none. See [TTL](features/ttl.md)."),
    "enable_priority_queue": ("seed", "Priority-ordered subscriber buffers (the `priority` "
                              "plugin); off: FIFO. See [priority](features/priority.md)."),
    "enable_ack_support": ("seed", "Acknowledgements, deadlines and retries (the `ack` plugin). "
                           "See [ack](features/ack.md)."),
    "default_ack_timeout": ("seed", "Seconds a consumer has to ack a message whose "
                            "`ack_timeout` is `None`."),
    "max_memory_usage": ("seed", "Bytes the broker may hold; `0`: no limit. See "
                         "[memory](features/memory.md)."),
    "enable_cluster": ("seed", "Cluster mode (the `cluster` plugin; in progress)."),
    "cluster_node_id": ("seed", "This node's id; required with `enable_cluster`."),
    "cluster_nodes": ("seed", "Addresses of the other nodes."),
    "cluster_replication_factor": ("seed", "Copies of each message across nodes."),
    "cluster_sync_interval": ("seed", "Seconds between cluster state syncs."),
    "enable_persistence": ("seed", "Store every accepted message (the `persistence` plugin). "
                           "See [persistence](features/persistence.md)."),
    "persistence_path": ("seed", "Directory of the message store; required with "
                         "`enable_persistence`."),
    "enable_dead_letter_queue": ("seed", "The dead letter queue (the `deadletter` plugin). See "
                                 "[dead letters](features/dead-letters.md)."),
    "dead_letter_topic": ("seed", "Topic dead letters are published to; required with "
                          "`enable_dead_letter_queue`."),
    "enable_transactions": ("seed", "Transactions (the `transactions` plugin). See "
                            "[transactions](features/transactions.md)."),
    "transaction_timeout": ("seed", "Seconds after its first message an uncommitted "
                            "transaction is rolled back."),
    "enable_mqtt": ("seed", "The MQTT gateway (the `mqtt` plugin); `mqkit serve` starts it."),
    "mqtt_port": ("seed", "Port of the MQTT gateway; `0`: any free port."),
    "enable_amqp": ("seed", "The AMQP 0-9-1 gateway (the `amqp` plugin); `mqkit serve` starts "
                    "it."),
    "amqp_port": ("seed", "Port of the AMQP gateway; `0`: any free port."),
    "max_ack_retries": ("mqkit", "Redeliveries after the first delivery before an unacked "
                        "message is dead-lettered (`R + 1` deliveries in all)."),
    "max_dead_letters": ("mqkit", "Dead letters kept; the oldest go first (counted as "
                         "dropped)."),
    "persistence_max_messages": ("mqkit", "Messages stored per topic; the oldest go first."),
    "persistence_max_age": ("mqkit", "Seconds a stored message is kept (7 days, the seed's KV "
                            "TTL)."),
    "mqtt_host": ("mqkit", "Address the MQTT gateway listens on."),
    "amqp_host": ("mqkit", "Address the AMQP gateway listens on."),
    "mqtt_tls_port": ("mqtt", "Port of the MQTT gateway's TLS listener; `0`: any free port."),
    "mqtt_tls_cert": ("mqtt", "Certificate file (PEM) of the TLS listener; with "
                      "`mqtt_tls_key`."),
    "mqtt_tls_key": ("mqtt", "Private key file (PEM) of the TLS listener; with "
                     "`mqtt_tls_cert`."),
    "mqtt_tls_ca": ("mqtt", "CA file (PEM) for verifying client certificates."),
    "mqtt_password_file": ("mqtt", "File of MQTT users and password hashes."),
    "mqtt_acl_file": ("mqtt", "File of MQTT topic access rules."),
    "mqtt_allow_anonymous": ("mqtt", "Accept MQTT clients that send no user name."),
    "mqtt_max_connections": ("mqtt", "Most MQTT client connections at once."),
    "mqtt_max_packet_size": ("mqtt", "Largest MQTT packet accepted, in bytes."),
    "mqtt_max_inflight": ("mqtt", "Unacknowledged QoS 1/2 messages in flight per client."),
    "mqtt_max_queued_messages": ("mqtt", "Messages queued per MQTT client session."),
    "mqtt_backpressure": ("mqtt", "What a full client queue does: `drop_oldest`, "
                          "`drop_newest`, `block_with_timeout` or `close_subscriber`."),
    "mqtt_topic_alias_maximum": ("mqtt", "Topic aliases a MQTT 5 client may use; `0`: none."),
    "mqtt_max_keep_alive": ("mqtt", "Largest keep-alive (seconds) granted to clients; `0`: "
                            "the client's."),
    "mqtt_connect_timeout": ("mqtt", "Seconds a new connection has to send CONNECT."),
    "http_host": ("serve", "Address of `mqkit serve`'s HTTP endpoint (`/healthz`, `/metrics`); "
                  "loopback by default."),
    "http_port": ("serve", "Port of `mqkit serve`'s HTTP endpoint; `0`: any free port. See "
                  "[the command line](cli.md)."),
    "plugins": ("plugins", "Third-party plugins to load, by entry-point name. See "
                "[plugins](plugins.md)."),
    "disable_plugins": ("plugins", "Plugins not to load (built-in or third-party)."),
    "autoload_plugins": ("plugins", "Load every installed plugin (`MQKIT_AUTOLOAD_PLUGINS=1` "
                         "too)."),
}  # fmt: skip


def attribute_docs() -> dict[str, str]:
    """Attribute docstrings of ``Config``'s fields in mqkit/core/config.py."""
    tree = ast.parse(inspect.getsource(config_module))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            body = node.body
            for first, second in itertools.pairwise(body):
                if (
                    isinstance(first, ast.AnnAssign)
                    and isinstance(first.target, ast.Name)
                    and isinstance(second, ast.Expr)
                    and isinstance(second.value, ast.Constant)
                    and isinstance(second.value.value, str)
                ):
                    found[first.target.id] = " ".join(second.value.value.split())
    return found


def describe(name: str) -> tuple[str, str]:
    """(section, description) of a field; ``("", "")`` when it has none."""
    own = attribute_docs().get(name)
    section, text = DESCRIPTIONS.get(name, ("mqkit", ""))
    return section, (own or text).replace("``", "`")  # reST literals as Markdown code


def undocumented() -> list[str]:
    """Fields of ``Config`` that have no description."""
    return [f.name for f in attrs.fields(Config) if not describe(f.name)[1]]


def _type(field: attrs.Attribute[Any]) -> str:
    kind = field.type  # a string, or a class once cattrs resolved the annotations
    text = kind.__name__ if isinstance(kind, type) else str(kind)
    # every float of Config is a duration in seconds
    return {"tuple[str, ...]": "list", "float": "duration"}.get(text, text)


def _default(field: attrs.Attribute[Any]) -> str:
    value = field.default
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return "`[]`" if not value else f"`{list(value)!r}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, float):
        return f"`{value:g}` s"
    return f"`{value}`"


def render() -> str:
    """Return the Markdown text of the configuration reference."""
    rows: dict[str, list[str]] = {key: [] for key in SECTIONS}
    for field in attrs.fields(Config):
        section, text = describe(field.name)
        rows.setdefault(section, []).append(
            f"| `{field.name}` | {_type(field)} | {_default(field)} | "
            f"`MQKIT_{field.name.upper()}` | {text} |"
        )
    parts = [HEADER]
    for key, lines in rows.items():
        if not lines:
            continue
        parts.append(f"\n## {SECTIONS.get(key, key)}\n\n")
        parts.append("| field | type | default | environment | meaning |\n|---|---|---|---|---|\n")
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


if __name__ == "__main__":
    missing = undocumented()
    if missing:
        print(f"undocumented Config fields: {', '.join(missing)}", file=sys.stderr)
    out = Path(__file__).with_name("configuration.md")
    out.write_text(render(), encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
