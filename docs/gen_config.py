"""Generate docs/configuration.md from ``mqkit.Config`` and the built-in plugins' sections.

Run ``python docs/gen_config.py`` after changing ``Config`` or a plugin's settings class; a test
checks the page is current and that every field is described. A ``Config`` field's description
is its attribute docstring in ``mqkit/core/config.py`` (a string literal right below the field)
when it has one, else the entry in ``DESCRIPTIONS`` below. Each built-in plugin (an entry point
of pyproject.toml) that declares a settings section gets a table of it, described by the
attribute docstrings of its settings class.
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import itertools
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs

import mqkit
from mqkit.core import config as config_module
from mqkit.core.config import Config
from mqkit.core.plugins import PluginInfo, entry_points, info_of

HEADER = """# Configuration reference

Generated from `mqkit.Config` by `python docs/gen_config.py`; do not edit by hand.

A broker is configured with one frozen `mqkit.Config`. `Config()` holds the defaults of
plumego `net/mq`'s `DefaultConfig()` (see [coming from Go](seed-mapping.md)); build one in
code, from a mapping, from the environment, or from a TOML file:

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
(`mq: invalid configuration: max_topics cannot be negative (got -1) (in mqkit.toml)`).

**Environment.** `Config.from_env()` reads `MQKIT_<FIELD NAME IN UPPER CASE>`: booleans
`true/false/1/0`, durations in seconds, lists comma-separated. A variable with the prefix that
names no field is an error.

**Plugin sections.** A plugin's own settings are a section: a table in the TOML file
(`[mqtt]`, `[http]`, a third-party plugin's), `MQKIT_<SECTION>_<FIELD>` variables
(`MQKIT_MQTT_MAX_INFLIGHT=64`; a `Config` field wins a clash: `MQKIT_MQTT_PORT` is `mqtt_port`),
or,
in code, `Config(settings={"mqtt": MQTTSettings(max_inflight=64)})` (a mapping of the fields is
accepted too). `Broker(...)` builds and checks every section before any plugin starts: an
unknown section or field, or a bad value, is an `InvalidConfigError` naming `section.field` and
the value (`mq: invalid configuration: mqtt.max_inflight must be 1..65535 (got 0)`). A plugin
reads its section with `broker.settings(MQTTSettings)`; see [plugins](plugins.md).

```toml title="mqkit.toml"
enable_mqtt = true
mqtt_port = 1883

[mqtt]
max_inflight = 64
backpressure = "drop_newest"

[http]
port = 9100
```

**Flags whose plugin cannot load.** A flag whose plugin cannot be imported fails `Broker(...)`
naming the extra to install (`pip install 'mqkit[amqp]'`); a flag of a feature this version
lacked would fail it with a `FeatureNotEnabledError` saying so.

**Types.** *bool*: `true`, `false`, `1` or `0` (as text in any case, or a TOML boolean); `yes`,
`on`, `2` or `1.0` is an `InvalidConfigError` naming the field and the value.
*duration*: seconds as a finite number (a `datetime.timedelta` is accepted in code); `nan` and
`inf` are refused, naming the field. *list*: a list of strings (TOML array, or comma-separated in
the environment).
"""

SECTIONS: dict[str, str] = {
    "seed": "The broker's fields (as plumego `net/mq` names them)",
    "mqkit": "What mqkit adds",
    "plugins": "Plugins",
}

DESCRIPTIONS: dict[str, tuple[str, str]] = {
    # name: (section, description)
    "enable_health_check": ("seed", "Keep `health_check()` reporting."),
    "max_topics": ("seed", "Most exact topics with a subscription at once; `0`: no limit. "
                   "More raises `LimitExceededError`."),
    "max_subscribers": ("seed", "Most subscriptions per topic; `0`: no limit."),
    "default_buffer_size": ("seed", "Buffer size of a subscription whose `SubOptions` gives "
                            "none."),
    "enable_metrics": ("seed", "Count messages and latency (the `metrics` plugin)."),
    "health_check_interval": ("seed", "Seconds between periodic health checks (kept from "
                              "plumego; `health_check()` is computed on demand)."),
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
    "enable_cluster": ("seed", "Cluster mode on Redis (the `cluster` plugin; docs/cluster.md)."),
    "cluster_node_id": ("seed", "This node's id, unique among live nodes; required."),
    "cluster_nodes": ("seed", "Node ids expected alive (a missing one: status `degraded`)."),
    "cluster_replication_factor": ("seed", "R: a publish waits for R - 1 Redis replicas."),
    "cluster_sync_interval": ("seed", "Seconds between heartbeats (the TTL: three of them)."),
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
    "persistence_max_age": ("mqkit", "Seconds a stored message is kept (7 days)."),
    "amqp_host": ("mqkit", "Address the AMQP gateway listens on."),
    "plugins": ("plugins", "Third-party plugins to load, by entry-point name. See "
                "[plugins](plugins.md)."),
    "disable_plugins": ("plugins", "Plugins not to load (built-in or third-party)."),
    "autoload_plugins": ("plugins", "Load every installed plugin (`MQKIT_AUTOLOAD_PLUGINS=1` "
                         "too)."),
    "settings": ("plugins", "Plugins' settings sections by name (the tables below); in TOML, "
                 "a table per section."),
}  # fmt: skip


def builtin_infos() -> list[PluginInfo]:
    """The ``PluginInfo`` of each built-in plugin, from the entry points of mqkit's project file.

    Read from the pyproject.toml beside the imported ``mqkit`` package (the source tree), not
    from the installed metadata, so that the page is the same wherever it is generated; an
    installed wheel (no project file) falls back to its entry points.
    """
    project_file = Path(mqkit.__file__).resolve().parent.parent / "pyproject.toml"
    if project_file.is_file():
        with open(project_file, "rb") as file:
            declared = tomllib.load(file)["project"]["entry-points"]["mqkit.plugins"]
        values = list(declared.values())
    else:
        values = [ep.value for name, ep in entry_points().items() if ep.builtin]
    found = []
    for value in values:
        module, _, attr = value.partition(":")
        info = info_of(getattr(importlib.import_module(module), attr))
        if info is not None:
            found.append(info)
    return found


def attribute_docs(cls: type = Config) -> dict[str, str]:
    """Attribute docstrings of ``cls``'s fields (``Config``'s in mqkit/core/config.py)."""
    module = config_module if cls is Config else sys.modules[cls.__module__]
    tree = ast.parse(inspect.getsource(module))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
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
    """Fields of ``Config`` and of the built-in sections that have no description."""
    missing = [f.name for f in attrs.fields(Config) if not describe(f.name)[1]]
    for info in builtin_infos():
        if info.settings is not None:
            docs = attribute_docs(info.settings)
            fields = attrs.fields(info.settings)
            missing += [f"{info.section}.{f.name}" for f in fields if f.name not in docs]
    return missing


def _type(field: attrs.Attribute[Any]) -> str:
    kind = field.type  # a string, or a class once cattrs resolved the annotations
    text = kind.__name__ if isinstance(kind, type) else str(kind)
    text = text.removeprefix("collections.abc.")  # resolved: collections.abc.Mapping[...]
    # every float of Config (and of a built-in section) is a duration in seconds
    return {
        "tuple[str, ...]": "list",
        "float": "duration",
        "Mapping[str, object]": "tables",
        "Backpressure": "`Backpressure` value",
    }.get(text, text)


def _default(field: attrs.Attribute[Any]) -> str:
    value = field.default
    if isinstance(value, attrs.Factory):  # type: ignore[arg-type]
        return "`{}`"
    if isinstance(value, enum.Enum):
        return f'`"{value.value}"`'

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
        env = "<SECTION>_<FIELD>" if field.name == "settings" else field.name.upper()
        rows.setdefault(section, []).append(
            f"| `{field.name}` | {_type(field)} | {_default(field)} | `MQKIT_{env}` | {text} |"
        )
    parts = [HEADER]
    table = "| field | type | default | environment | meaning |\n|---|---|---|---|---|\n"
    for key, lines in rows.items():
        if not lines:
            continue
        parts.append(f"\n## {SECTIONS.get(key, key)}\n\n")
        parts.append(table)
        parts.append("\n".join(lines) + "\n")
    for info in sorted(builtin_infos(), key=lambda i: i.section):
        if info.settings is None:
            continue
        docs = attribute_docs(info.settings)
        attrs.resolve_types(info.settings)
        extra = f", `pip install 'mqkit[{info.extra}]'`" if info.extra else ""
        parts.append(f"\n## `[{info.section}]`: {info.description}\n\n")
        parts.append(
            f"The `{info.name}` plugin's section (`{info.settings.__module__}."
            f"{info.settings.__name__}`{extra}).\n\n"
        )
        parts.append(table)
        for field in attrs.fields(info.settings):
            text = docs.get(field.name, "").replace("``", "`")
            env = f"MQKIT_{info.section.upper()}_{field.name.upper()}"
            parts.append(
                f"| `{field.name}` | {_type(field)} | {_default(field)} | `{env}` | {text} |\n"
            )
    return "".join(parts)


if __name__ == "__main__":
    missing = undocumented()
    if missing:
        print(f"undocumented fields: {', '.join(missing)}", file=sys.stderr)
    out = Path(__file__).with_name("configuration.md")
    out.write_text(render(), encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
