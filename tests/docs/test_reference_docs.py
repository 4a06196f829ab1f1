"""The generated references are current and complete; the site builds in strict mode."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import attrs

import mqkit
from mqkit.core import hookspecs

from .conftest import DOCS, ROOT, blocks, load_script

# The Go project's README (plumego net/mq), the seed of mqkit, kept here as test data: the
# tests read nothing outside the repository.
SEED_README = Path(__file__).parent / "data" / "seed-README.md"

# Every Go API name of the seed README (plumego net/mq), extracted once from its text: the
# constructors, broker and subscription methods, message and option types with their fields,
# constants, config fields, status fields, errors, the selectors of its inline code
# (``ctx.Err()``) and the components of its Architecture block.
SEED_NAMES = [
    "NewInProcBroker", "New", "WithConfig", "DefaultConfig", "Config", "Subscribe", "SubOptions",
    "BufferSize", "Cancel", "C", "Publish", "Message", "ID", "Data", "PriorityMessage",
    "Priority", "PriorityHigh", "PriorityLowest", "PriorityHighest", "MessagePriority",
    "PublishPriority", "TTLMessage", "ExpiresAt", "PublishTTL", "AckMessage", "AckID",
    "AckPolicy", "AckRequired", "AckNone", "AckTimeout", "PublishWithAck", "Ack", "Nack",
    "PublishWithTransaction", "CommitTransaction", "RollbackTransaction", "PublishToDeadLetter",
    "GetDeadLetterStats", "TotalMessages", "RecoverMessages", "ReplayMessages", "Close",
    "HealthCheck", "Status", "Uptime", "TotalTopics", "TotalSubs", "MemoryUsage", "Metrics",
    "TotalPublished", "TotalDelivered", "TotalDropped", "PriorityTTLMessage", "AckTTLMessage",
    "EnableHealthCheck", "MaxTopics", "MaxSubscribers", "DefaultBufferSize", "EnableMetrics",
    "HealthCheckInterval", "MessageTTL", "EnablePriorityQueue", "EnableAckSupport",
    "DefaultAckTimeout", "MaxMemoryUsage", "EnableTransactions", "TransactionTimeout",
    "EnableDeadLetterQueue", "DeadLetterTopic", "EnablePersistence", "PersistencePath",
    "ErrNotInitialized", "ErrBrokerClosed", "ErrInvalidTopic", "ErrMessageExpired",
    "ErrTransactionNotFound", "ErrTransactionTimeout", "ErrMemoryLimitExceeded",
    "ErrDeadLetterNotSupported", "Err",
    # the Architecture block: the broker's components
    "InProcBroker", "PubSub", "priorityDispatcher", "ackTracker", "ttlTracker", "txManager",
    "deadLetterManager", "persistenceManager", "KVPersistence",
]  # fmt: skip


def go_names_in(text: str) -> set[str]:
    """The Go API names a seed README uses: selectors, struct-literal fields and errors."""
    names: set[str] = set()
    for code in re.findall(r"```go\n(.*?)```", text, flags=re.S):
        code = re.sub(r"//.*", "", code)  # comments
        code = re.sub(r'"[^"]*"', '""', code)  # strings
        for receiver, name in re.findall(r"\b(\w+)\.([A-Z]\w*)", code):
            if receiver not in {"fmt", "log", "time", "context"}:
                names.add(name)
        names.update(re.findall(r"\b([A-Z]\w*):", code))  # struct literal fields
        names.update(re.findall(r"^\s*([A-Z]\w*)\s+[\w.\[\]*]+", code, flags=re.M))  # fields
    for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text):  # inline code: defer sub.Cancel()
        names.update(name for _, name in re.findall(r"\b(\w+)\.([A-Z]\w*)", span))
    names.update(re.findall(r"`(Err\w+)`", text))
    names.update(re.findall(r"\b(Priority(?:Lowest|Highest))\b", text))
    names.update(architecture_names(text))
    return names


def architecture_names(text: str) -> list[str]:
    """The components of the seed README's Architecture block (a tree: ``├── pubsub.PubSub``)."""
    found = re.search(r"^## Architecture\n+```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    assert found is not None, "the seed README has no Architecture block any more"
    names = [re.findall(r"^[\s│├└─]*(?:\w+\.)?(\w+)", line) for line in found[1].splitlines()]
    return [name for line in names for name in line]


def test_every_hook_has_a_docstring() -> None:
    undocumented = [
        name
        for name in hookspecs.HOOK_NAMES
        if len(inspect.cleandoc(getattr(hookspecs, name).__doc__ or "")) < 20
    ]
    assert undocumented == []


def test_hook_reference_is_current() -> None:
    gen = load_script(DOCS / "gen_hooks.py")
    assert (DOCS / "hooks.md").read_text(encoding="utf-8") == gen.render(), (
        "docs/hooks.md is stale: run python docs/gen_hooks.py"
    )
    text = (DOCS / "hooks.md").read_text(encoding="utf-8")
    for name in hookspecs.HOOK_NAMES:
        assert f"## `{name}`" in text


def test_configuration_reference_is_current_and_complete() -> None:
    gen = load_script(DOCS / "gen_config.py")
    assert gen.undocumented() == [], "describe these Config fields in docs/gen_config.py"
    assert (DOCS / "configuration.md").read_text(encoding="utf-8") == gen.render(), (
        "docs/configuration.md is stale: run python docs/gen_config.py"
    )
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    for field in attrs.fields(mqkit.Config):
        assert f"| `{field.name}` |" in text
    # each built-in plugin's settings section, field by field (issue 15)
    sections = [i for i in gen.builtin_infos() if i.settings is not None]
    assert {i.section for i in sections} >= {"mqtt", "http"}
    for info in sections:
        assert f"## `[{info.section}]`" in text
        for field in attrs.fields(info.settings):
            assert f"`MQKIT_{info.section.upper()}_{field.name.upper()}`" in text


def test_the_lifecycle_diagram_names_every_hook() -> None:
    (diagram,) = [b for b in blocks(DOCS / "lifecycle.md") if b.lang == "mermaid"]
    missing = [name for name in hookspecs.HOOK_NAMES if name not in diagram.text]
    assert missing == []


def test_the_seed_mapping_covers_every_go_name() -> None:
    seed = SEED_README.read_text(encoding="utf-8")
    assert {"InProcBroker", "PubSub", "KVPersistence"} <= set(architecture_names(seed))
    assert go_names_in(seed) <= set(SEED_NAMES)
    page = (DOCS / "seed-mapping.md").read_text(encoding="utf-8")
    go_column = " ".join(line.split("|")[1] for line in page.splitlines() if line.startswith("| `"))
    missing = [name for name in SEED_NAMES if not re.search(rf"\b{name}\b", go_column)]
    assert missing == []


def test_every_page_is_in_the_navigation_and_the_site_builds_strict(tmp_path: Path) -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(
        str(p.relative_to(DOCS))
        for p in DOCS.rglob("*.md")
        if "examples" not in p.relative_to(DOCS).parts
    )
    assert [p for p in pages if f": {p}" not in nav] == []
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "img" / "benchmarks.png").is_file()
    plugins_page = (tmp_path / "site" / "plugins" / "index.html").read_text(encoding="utf-8")
    assert "AuditPlugin" in plugins_page  # the example package's source is included
