"""The ``mqkit`` command line: ``demo``, ``serve``, ``run``, ``inspect`` and ``bench``.

Built with typer (commands, options, help) and rich (tables, live progress). Needs the ``cli``
extra: ``pip install 'mqkit[cli]'``; ``python -m mqkit`` says so when it is missing.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import attrs
import typer
from rich import box
from rich.console import Console, Group
from rich.logging import RichHandler
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

import mqkit
from mqkit.core.config import Config
from mqkit.core.errors import InvalidConfigError, MQError
from mqkit.core.status import HealthStatus, MetricsSnapshot

if TYPE_CHECKING:
    from mqkit.service import Service

__all__ = ["app", "main"]

app = typer.Typer(
    name="mqkit",
    help="mqkit: a typed, in-process message broker for Python, built from pluggy plugins.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: flags without a <bool> column, <topic> kept
    pretty_exceptions_enable=False,
)

console = Console(highlight=False)
"""Where the commands print (standard output)."""
errors = Console(stderr=True, highlight=False)
"""Where errors and logs go (standard error)."""

EXIT_FAILED = 1
"""Exit code when the command ran and something went wrong."""
EXIT_USAGE = 2
"""Exit code for a bad invocation or an invalid configuration (as click's usage errors)."""


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    errors.print(Text.assemble(("error: ", "bold red"), message))
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        console.print(f"mqkit {mqkit.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """mqkit: a typed, in-process message broker for Python, built from pluggy plugins."""


def _when(instant: datetime | None) -> str:
    if instant is None:
        return "-"
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _span(oldest: datetime | None, newest: datetime | None) -> str:
    first, last = _when(oldest), _when(newest)
    if first == last:
        return first
    if first[:10] == last[:10]:
        return f"{first} -> {last[11:]}"
    return f"{first} -> {last}"


# -- demo ------------------------------------------------------------------------------------------


class _LiveReporter:
    """Reports the demo's steps to a rich progress display, and its checks above it."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress = progress
        self.task = task
        self.number = 0

    def step(self, feature: str, title: str) -> None:
        if self.number:
            self.progress.advance(self.task)
        self.number += 1
        self.progress.update(self.task, description=f"[bold]{feature}[/]: {title}")
        self.progress.console.print(
            Text.assemble((f"{self.number:>2}. {feature}", "bold cyan"), f"  {title}")
        )

    def check(self, ok: bool, text: str) -> None:
        mark = ("    ✔ ", "green") if ok else ("    ✘ ", "bold red")
        self.progress.console.print(Text.assemble(mark, text))

    def note(self, text: str) -> None:
        self.progress.console.print(Text(f"      {text}", style="dim"))


_COUNTERS = (
    "published", "delivered", "dropped", "expired", "acked",
    "nacked", "redelivered", "dead_lettered", "errors",
)  # fmt: skip


def metrics_table(metrics: MetricsSnapshot, title: str = "Metrics") -> Table:
    """A rich table of a metrics snapshot: one row per topic, then the totals and latency.

    Per topic it shows what was published and delivered and every other counter that is not
    zero (dropped, expired, acked, ...), so it stays readable in 80 columns.
    """
    table = Table(title=title, title_justify="left", header_style="bold", show_footer=True)
    table.add_column("topic", footer="total", no_wrap=True)
    table.add_column("published", justify="right", footer=str(metrics.total_published))
    table.add_column("delivered", justify="right", footer=str(metrics.total_delivered))
    others = [c for c in _COUNTERS[2:]]
    table.add_column(
        "other events",
        footer=", ".join(f"{c.replace('_', '-')} {getattr(metrics, f'total_{c}')}" for c in others),
    )
    for topic, row in metrics.topics.items():
        events = ", ".join(
            f"{c.replace('_', '-')} {getattr(row, c)}" for c in others if getattr(row, c)
        )
        name = topic if topic.strip() else f"{topic!r} (invalid)"
        table.add_row(name, str(row.published), str(row.delivered), events)
    table.caption = (
        f"latency publish -> delivery: mean {metrics.average_latency * 1e3:.3f} ms, "
        f"p50 {metrics.p50_latency * 1e3:.3f} ms, p99 {metrics.p99_latency * 1e3:.3f} ms, "
        f"max {metrics.max_latency * 1e3:.3f} ms"
    )
    return table


def health_panel(health: HealthStatus, title: str = "Health") -> Panel:
    """A rich panel of a health status."""
    style = {"healthy": "bold green", "degraded": "bold yellow"}.get(health.status, "bold red")
    limit = f"{health.memory_limit:,} bytes" if health.memory_limit else "no limit"
    lines = [
        Text.assemble("status       ", (health.status, style)),
        Text(f"uptime       {health.uptime:.2f} s"),
        Text(f"topics       {health.total_topics}"),
        Text(f"subscribers  {health.total_subscribers}"),
        Text(f"memory       {health.memory_usage:,} bytes of {limit}"),
    ]
    lines += [Text(f"problem      {p}", style="yellow") for p in health.problems]
    return Panel(Group(*lines), title=title, title_align="left", expand=False)


@app.command()
def demo(
    store: Annotated[
        Path | None,
        typer.Option(
            help="Persist into this directory (kept afterwards) instead of a temporary one.",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Run a scripted scenario through every broker feature and show what happened.

    Priority, TTL expiry, ack with a redelivery, a nack into the dead letter queue, a
    committed and a rolled-back transaction, backpressure, the memory limit, thread and
    asyncio consumers, and a restart that recovers persisted messages; then the metrics and
    the health status. Real time: the TTL and the ack deadline are 0.3 s.
    """
    if store is None:
        with tempfile.TemporaryDirectory(prefix="mqkit-demo-") as temporary:
            _demo(Path(temporary), f"{temporary} (a temporary directory, removed at the end)")
    else:
        _fresh_demo_store(store)
        _demo(store, str(store))


def _fresh_demo_store(store: Path) -> None:
    """Empty ``store`` of what an earlier demo left there, so that the demo starts afresh.

    Only a directory that holds an mqkit store and nothing else is emptied; a directory with
    other files, or one a running broker holds, is refused (exit 1) and left as it is.
    """
    from mqkit.plugins.persistence.format import LOCK_FILE, MQTT_DIR, STORE_DIR
    from mqkit.plugins.persistence.inspector import lock_holder

    if not store.is_dir():
        return
    found = {p.name for p in store.iterdir()}
    if not found:
        return
    if not found <= {LOCK_FILE, STORE_DIR, MQTT_DIR}:
        raise _fail(
            f"{store} holds files that are not an mqkit store ({', '.join(sorted(found))}); "
            "give the demo a new or empty directory, or one an earlier demo wrote"
        )
    holder = lock_holder(store)
    if holder is not None:
        raise _fail(f"{store} is in use by a running broker (pid {holder})")
    shutil.rmtree(store / STORE_DIR, ignore_errors=True)
    shutil.rmtree(store / MQTT_DIR, ignore_errors=True)
    (store / LOCK_FILE).unlink(missing_ok=True)
    console.print(f"{escape(str(store))}: removed the store an earlier run left there")


def _demo(store: Path, where: str) -> None:
    from mqkit.demo import ACK_TIMEOUT, STEPS, TTL, DemoResult, run_scenario

    console.print(
        Panel.fit(
            f"Every feature on: priority, TTL ({TTL} s), ack (deadline {ACK_TIMEOUT} s, "
            f"3 retries), transactions, dead letter queue, memory limit, metrics; "
            f"persistence in {escape(where)}. Real time, no simulated clock.",
            title="[bold]mqkit demo[/]",
        )
    )
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task("starting", total=len(STEPS))
        result: DemoResult = run_scenario(_LiveReporter(progress, task), store)
        progress.advance(task)
    console.print()
    console.print(metrics_table(result.metrics, "Metrics of the first broker, before restart"))
    stats = result.dead_letters
    console.print(
        f"dead letter queue [bold]{stats.topic}[/]: {stats.total_messages} dead-lettered, "
        f"{stats.current_count} kept"
    )
    console.print(health_panel(result.health, "Health before the restart"))
    console.print(
        health_panel(
            result.restarted_health, f"Health after the restart ({result.recovered} recovered)"
        )
    )
    features = ", ".join(result.features)
    if result.ok:
        console.print(
            f"[bold green]demo finished:[/] all {result.checks} checks as expected ({features})"
        )
        return
    for failure in result.failures:
        errors.print(f"[bold red]FAILED[/] {failure}")
    raise typer.Exit(EXIT_FAILED)


# -- serve -----------------------------------------------------------------------------------------


def load_config(path: Path | None) -> Config:
    """The config in ``path`` (TOML), or ``Config()``; raises ``InvalidConfigError``."""
    return Config() if path is None else Config.from_toml(path)


def _http_overrides(cfg: Config, changes: dict[str, object]) -> Config:
    """``cfg`` with ``--host``/``--port`` put into its ``[http]`` section."""
    section = cfg.settings.get("http")
    if isinstance(section, Mapping):
        new: object = {**section, **changes}
    elif section is None:
        new = changes
    else:
        current: Any = section  # an HTTPSettings
        new = attrs.evolve(current, **changes)
    return cfg.replace(settings={**cfg.settings, "http": new})


_HostOption = Annotated[
    str | None, typer.Option("--host", help="Override [http] host (default 127.0.0.1).")
]
_PortOption = Annotated[
    int | None, typer.Option("--port", help="Override [http] port (0: any free port).")
]
_LogLevelOption = Annotated[
    str, typer.Option("--log-level", help="Logging level: debug, info, warning, error.")
]


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="A TOML file of Config fields (mqkit.toml)."),
    ] = None,
    host: _HostOption = None,
    port: _PortOption = None,
    log_level: _LogLevelOption = "info",
) -> None:
    """Run a broker as a service until SIGINT or SIGTERM.

    Starts the protocol gateways the config enables (enable_mqtt, enable_amqp) and an HTTP
    endpoint with /healthz (the health status as JSON; 503 when not healthy), /metrics
    (Prometheus) and POST /publish/<topic>. On SIGINT/SIGTERM it stops the endpoint, closes
    the broker (persistence flushed, gateways closed) and exits 0.
    """
    from mqkit.service import Service

    logging.basicConfig(
        level=log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False)],
    )
    try:
        cfg = load_config(config)
        changes = {"host": host, "port": port}
        if any(value is not None for value in changes.values()):
            cfg = _http_overrides(cfg, {k: v for k, v in changes.items() if v is not None})
    except InvalidConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    try:
        service = Service(cfg)
    except InvalidConfigError as exc:  # a plugin's section ([http], [mqtt]) is checked here
        where = f" (in {config})" if config is not None else ""
        raise _fail(f"{exc}{where}", EXIT_USAGE) from None
    except MQError as exc:
        raise _fail(f"cannot start the broker: {exc}") from None
    try:
        service.start()
    except MQError as exc:
        raise _fail(f"cannot start a gateway: {exc}") from None
    except OSError as exc:
        http = service.http
        raise _fail(f"cannot listen on {http.host}:{http.port}: {exc.strerror or exc}") from None
    rows = [
        ("config", str(config) if config is not None else "defaults (no --config)"),
        ("plugins", ", ".join(service.broker.plugin_names()) or "(none)"),
    ]
    if cfg.enable_persistence:
        rows.append(("persistence", cfg.persistence_path))
    _run_service(
        service,
        "mqkit serve",
        rows,
        service.run_until_signal,
        lambda received: f"received {received or 'a stop request'}: shutting down",
    )


def _run_service(
    service: Service,
    title: str,
    rows: list[tuple[str, str]],
    run: Callable[[Callable[[], None]], object],
    stopped: Callable[[Any], str],
) -> None:
    """Run ``service`` until a stop (``run(ready)``), then close it and say what was closed.

    ``mqkit serve`` and ``mqkit run`` alike: the panel (``rows``, the gateways, the endpoints)
    is printed by ``ready``, once the signal handlers are installed.
    """
    from mqkit.service import METRICS_EXTRA_HINT

    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        logging.getLogger("mqkit.serve").warning(METRICS_EXTRA_HINT)
    info = Table.grid(padding=(0, 2))
    for name, value in rows:
        info.add_row(name, value)
    for name, (ghost, gport) in service.gateways.items():
        info.add_row(name, f"{ghost}:{gport}")
    info.add_row("health", f"{service.url}/healthz")
    info.add_row("metrics", f"{service.url}/metrics")
    info.add_row("publish", f"POST {service.url}/publish/<topic>")

    def announce() -> None:
        # Called with the signal handlers installed: whoever reads "listening" may SIGTERM us.
        console.print(Panel.fit(info, title=f"[bold]{title}[/] (pid {os.getpid()})"))
        console.print(f"listening on {service.url} - Ctrl-C or SIGTERM to stop")
        sys.stdout.flush()

    try:
        console.print(stopped(run(announce)))
    finally:
        service.close()
    cfg = service.broker.config
    closed = ["HTTP closed", "broker closed"]
    if service.gateways:
        closed.append("gateways closed")
    if cfg.enable_persistence:
        closed.append(f"store flushed in {cfg.persistence_path}")
    console.print(f"[bold]stopped cleanly[/]: {', '.join(closed)}")


# -- run -------------------------------------------------------------------------------------------


def load_broker(target: str) -> mqkit.Broker:
    """Import ``module:attribute`` (``attribute`` defaults to ``broker``) and return the broker.

    The current directory comes first on ``sys.path``, as with ``python -m``. Raises
    ``ValueError`` with what went wrong (the module does not import, no such attribute, not a
    broker); the module's own errors (``MQError`` from its ``Broker(...)``) propagate.
    """
    import importlib

    module_name, _, attribute = target.partition(":")
    attribute = attribute or "broker"
    if not module_name or not attribute.isidentifier():
        raise ValueError(f"expected MODULE:BROKER (myapp:broker), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ValueError(f"cannot import {module_name!r}: {exc}") from None
        raise
    found = getattr(module, attribute, None)
    if not isinstance(found, mqkit.Broker):
        what = "no such attribute" if found is None else f"got {type(found).__name__}"
        raise ValueError(f"{module_name}:{attribute} is not a mqkit.Broker ({what})")
    return found


@app.command("run")
def run_command(
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:BROKER",
            help="The application's broker, as module:attribute (myapp:broker).",
        ),
    ],
    host: _HostOption = None,
    port: _PortOption = None,
    log_level: _LogLevelOption = "info",
) -> None:
    """Run an application's handlers as a service until SIGINT or SIGTERM.

    Imports MODULE (from the current directory first), takes its broker (built with its own
    Config) and runs every handler registered on it (@broker.subscriber), with the gateways
    its config enables and the HTTP endpoint of mqkit serve (/healthz, /metrics, POST
    /publish/<topic>). On SIGINT/SIGTERM it stops taking messages, finishes those in flight,
    stops the endpoint, closes the broker and exits 0.
    """
    from mqkit.service import Service

    logging.basicConfig(
        level=log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False)],
    )
    try:
        broker = load_broker(target)
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except MQError as exc:
        raise _fail(f"cannot start the broker: {exc}") from None
    from mqkit.core.settings import check_section
    from mqkit.service import HTTPSettings

    try:
        http = broker.settings(HTTPSettings)
        if host is not None or port is not None:
            http = attrs.evolve(
                http,
                host=http.host if host is None else host,
                port=http.port if port is None else port,
            )
            check_section("http", http)
    except MQError as exc:
        broker.close()
        raise _fail(str(exc), EXIT_USAGE) from None
    service = Service(broker.config, broker=broker, http=http)
    try:
        service.start()
    except MQError as exc:
        raise _fail(f"cannot start a gateway: {exc}") from None
    except OSError as exc:
        raise _fail(f"cannot listen on {http.host}:{http.port}: {exc.strerror or exc}") from None
    rows = [
        ("app", target),
        ("handlers", str(len(broker._handlers().names()))),
        ("plugins", ", ".join(broker.plugin_names()) or "(none)"),
    ]
    _run_service(
        service,
        "mqkit run",
        rows,
        lambda ready: broker._handlers().run(close=False, ready=ready),
        lambda received: f"{received}: handlers stopped, in-flight messages finished",
    )


# -- inspect ---------------------------------------------------------------------------------------


@app.command("inspect")
def inspect_command(
    path: Annotated[
        Path | None, typer.Argument(help="A persistence directory (persistence_path).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole report as JSON, for scripts.")
    ] = False,
    limit: Annotated[
        int,
        typer.Option(help="Rows to show per table: topics, pending acks, dead letters (0: all)."),
    ] = 20,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="URL",
            help="Inspect a cluster's Redis instead (redis://host:port/db), read-only.",
        ),
    ] = None,
    prefix: Annotated[
        str, typer.Option(help="The cluster's key_prefix (with --cluster).")
    ] = "mqkit",
) -> None:
    """Show what a persistence directory, or a cluster's Redis, holds, read-only.

    Topics with their message counts and oldest/newest publish times, the messages still
    waiting for an ack, and the dead letters with their reasons. Safe on the directory of a
    running broker: the lock is left alone, and the report says which process holds it.
    With --cluster URL: each topic stream, its consumer groups and pending counts, the dead
    letter streams and the live nodes (no broker needed; nothing is written).
    """
    from mqkit.plugins.persistence.inspector import inspect_store
    from mqkit.service import json_ready

    if (path is None) == (cluster is None):
        raise _fail("give a persistence directory or --cluster URL (one of them)", EXIT_USAGE)
    if cluster is not None:
        _inspect_cluster(cluster, prefix, as_json=as_json, limit=limit)
        return
    assert path is not None
    try:
        report = inspect_store(path)
    except MQError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        # Plain text, never wrapped or styled: scripts parse it.
        sys.stdout.write(json.dumps(json_ready(report), indent=2) + "\n")
        return
    if report.locked_by is not None:
        errors.print(
            f"[yellow]note:[/] a broker (pid {report.locked_by}) holds this directory; "
            "showing what it has committed so far (read-only: its lock is left alone)"
        )
    topics = Table(
        title=f"{report.path}: {report.total_messages} stored message(s)",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
    )
    topics.add_column("topic", overflow="fold", min_width=8)
    topics.add_column("msgs", justify="right")
    topics.add_column("unacked", justify="right")
    topics.add_column("dead", justify="right")
    topics.add_column("published (UTC): oldest -> newest", no_wrap=True)
    shown = slice(None) if limit <= 0 else slice(limit)
    for t in report.topics[shown]:
        topics.add_row(
            t.topic,
            str(t.messages),
            str(t.pending_acks),
            str(t.dead_letters),
            _span(t.oldest, t.newest),
        )
    topics.caption = "unacked: waiting for an ack; dead: dead-letter copies (a DLQ topic)"
    console.print(topics)
    if report.pending_acks:
        acks = Table(
            title="Pending acks (published, not yet acknowledged)",
            title_justify="left",
            header_style="bold",
            box=box.SIMPLE_HEAD,
        )
        for name in ("topic", "id", "ack id", "attempt", "published (UTC)"):
            acks.add_column(name, no_wrap=name.startswith("published"))
        for p in report.pending_acks[shown]:
            acks.add_row(p.topic, p.id, p.ack_id, str(p.attempt), _when(p.time))
        console.print(acks)
    if report.dead_letters:
        dead = Table(
            title="Dead letters", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD
        )
        for name in ("id", "original topic", "reason", "attempts", "dead-lettered (UTC)"):
            dead.add_column(name, no_wrap=name.startswith("dead-lettered"))
        for d in report.dead_letters[shown]:
            dead.add_row(d.id, d.original_topic, d.reason, str(d.attempts), _when(d.time))
        console.print(dead)
    more = max(len(report.topics), len(report.pending_acks), len(report.dead_letters))
    if 0 < limit < more:
        console.print(f"[dim]showing {limit} row(s) per table; --limit 0 shows all[/]")
    if report.unreadable or report.expired:
        console.print(
            f"[yellow]{report.unreadable} unreadable and {report.expired} expired entr(y/ies) "
            "skipped[/]"
        )


def _inspect_cluster(url: str, prefix: str, *, as_json: bool, limit: int) -> None:
    """``mqkit inspect --cluster URL``: print what the cluster's Redis holds under ``prefix``."""
    try:
        from mqkit.plugins.cluster.inspector import inspect_cluster
        from mqkit.plugins.cluster.settings import ClusterSettings
    except ImportError:
        raise _fail("--cluster needs redis-py: pip install 'mqkit[cluster]'") from None
    from mqkit.core.settings import check_section
    from mqkit.service import json_ready

    try:
        check_section("cluster", ClusterSettings(url=url, key_prefix=prefix))
    except MQError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    try:
        report = inspect_cluster(url, prefix)
    except MQError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(json_ready(report), indent=2) + "\n")
        return
    shown = slice(None) if limit <= 0 else slice(limit)

    def table(title: str, *columns: str) -> Table:
        made = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
        for column in columns:
            made.add_column(column, overflow="fold")
        return made

    console.print(
        f"[bold]{escape(report.url)}[/] (Redis {report.redis_version}, {report.mode}), "
        f"prefix {escape(repr(report.prefix))}: {len(report.topics)} topic stream(s), "
        f"{report.indexed_topics} indexed topic(s)"
    )
    topics = table(
        "Topic streams",
        "topic",
        "length",
        "first id",
        "last id",
        "groups",
    )
    groups = table(
        "Consumer groups", "topic", "group", "consumers", "pending", "last delivered", "lag"
    )
    for s in report.topics[shown]:
        topics.add_row(
            escape(s.topic or ""),
            str(s.length),
            s.first_id or "-",
            s.last_id or "-",
            str(len(s.groups)),
        )
        for g in s.groups:
            lag = "?" if g.lag is None else str(g.lag)
            groups.add_row(
                escape(s.topic or ""),
                escape(g.name),
                str(g.consumers),
                str(g.pending),
                g.last_delivered_id,
                lag,
            )
    console.print(topics)
    if groups.row_count:
        groups.caption = "pending: delivered, not acknowledged; lag: not read yet (?: unknown)"
        console.print(groups)
    if report.dead_letters:
        dead = table("Dead letter streams", "topic", "length", "first id", "last id")
        for s in report.dead_letters[shown]:
            dead.add_row(escape(s.topic or ""), str(s.length), s.first_id or "-", s.last_id or "-")
        console.print(dead)
    nodes = table("Nodes", "node", "state", "heartbeat expires in", "registered")
    for n in report.nodes[shown]:
        expires = "-" if n.expires_in is None else f"{n.expires_in:.1f}s"
        state = "alive" if n.alive else "dead"
        nodes.add_row(escape(n.node_id), state, expires, "yes" if n.registered else "no")
    console.print(nodes if report.nodes else "[dim]no nodes (no broker is running)[/]")
    more = max(len(report.topics), len(report.dead_letters), len(report.nodes))
    if 0 < limit < more:
        console.print(f"[dim]showing {limit} row(s) per table; --limit 0 shows all[/]")


# -- bench -----------------------------------------------------------------------------------------


def _bench_table(title: str, columns: Sequence[str]) -> Table:
    """A compact rich table for ``mqkit bench`` (fits 80 columns): first column left."""
    console.print(f"[bold]{title}[/]")
    table = Table(header_style="bold", box=box.SIMPLE_HEAD)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=True)
    return table


def _us(value: float, sign: str = "") -> str:
    """Microseconds: two decimals below 100 (no "-0.00"), none above."""
    value = round(value, 2) + 0.0
    return f"{value:{sign},.2f}" if abs(value) < 100 else f"{value:{sign},.0f}"


def _print_table(table: Table, note: str) -> None:
    console.print(table)
    console.print(f"[dim]{note}[/]\n")


@app.command()
def bench(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="A TOML file of Config fields (else the defaults)."),
    ] = None,
    messages: Annotated[
        int | None, typer.Option(min=1, help="Messages per run (default 10,000; quick 2,000).")
    ] = None,
    subscribers: Annotated[
        int, typer.Option(min=1, help="Subscribers of the 1 -> N throughput run.")
    ] = 10,
    payload: Annotated[int, typer.Option(min=0, help="Payload size in bytes.")] = 64,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Rounds per run; the median counts (5; quick 3).")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A short run: fewer messages and rounds.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON here.")
    ] = None,
) -> None:
    """Measure mqkit with your config: throughput, latency percentiles and what each plugin costs.

    Builds brokers from the config file (or the defaults), with the store in a temporary
    directory and gateways on free ports, and measures publish -> get throughput (1 -> 1 and
    1 -> N subscribers), publish -> get latency across threads (p50, p90, p99, max) and, for
    each plugin the config loads, the cost per message against the config without it.
    """
    from mqkit.perf import PerfRun

    try:
        cfg = load_config(config)
    except InvalidConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    n = messages or (2_000 if quick else 10_000)
    r = rounds or (3 if quick else 5)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<18}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    try:
        run = PerfRun(cfg, messages=n, payload=payload, rounds=r)
    except MQError as exc:
        raise _fail(f"cannot start the broker: {exc}") from None
    plugins = ", ".join(run.plugins) or "none"
    console.print(
        f"[bold]mqkit bench[/]: mqkit {mqkit.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores; config {config or 'defaults'} (plugins: {plugins}); "
        f"{n:,} messages of {payload:,} bytes per run, median of {r} round{'s' if r > 1 else ''}"
    )
    fanouts = list(dict.fromkeys((1, subscribers)))
    with progress:
        task = progress.add_task("starting", total=run.steps(subscribers))

        def step(description: str) -> None:
            progress.update(task, advance=1, description=description)

        run.on_step = step
        try:
            throughput = [run.throughput(f) for f in fanouts]
            latency = run.latency()
            costs = run.plugin_costs()
        except (MQError, TimeoutError) as exc:
            raise _fail(f"the benchmark failed: {exc}") from None
    table = _bench_table(
        "Throughput: publish -> get, one thread",
        ("subscribers", "msgs/s", "deliveries/s", "µs / msg", "spread"),
    )
    for t in throughput:
        table.add_row(
            f"1 -> {t.subscribers}",
            f"{t.rate:,.0f}",
            f"{t.rate * t.subscribers:,.0f}",
            _us(t.micros),
            f"{t.spread:.0%}",
        )
    _print_table(
        table, "deliveries/s: msgs/s x subscribers; spread: (slowest - fastest round) / median"
    )
    table = _bench_table(
        "Latency: publish -> get across threads, in µs",
        ("messages", "p50", "p90", "p99", "max"),
    )
    quantiles = (latency.p50, latency.p90, latency.p99, latency.max)
    table.add_row(f"{latency.messages:,}", *(_us(v) for v in quantiles))
    _print_table(table, "one message in flight; a consumer thread blocks in get()")
    table = _bench_table(
        "What each plugin costs: 1 -> 1, with and without it",
        ("plugin", "µs / msg", "without it", "cost", "share"),
    )
    for c in costs:
        if c.status != "ok":
            table.add_row(c.plugin, _us(c.with_us), "-", "-", "-")
            continue
        table.add_row(
            c.plugin,
            _us(c.with_us),
            _us(c.without_us),
            _us(c.cost, "+"),
            f"{c.cost / c.with_us:.0%}",
        )
    if not costs:
        table.add_row("(none)", "-", "-", "-", "-")
    _print_table(table, "cost: µs per message it adds (the median of the per-round differences)")
    for c in costs:
        if c.status != "ok":
            console.print(f"[yellow]{c.plugin}[/]: not measured: {c.status}")
    if json_path is not None:
        data = {
            "mqkit": mqkit.__version__,
            "python": platform.python_version(),
            "config": str(config) if config is not None else None,
            "plugins": list(run.plugins),
            "messages": n,
            "payload": payload,
            "rounds": r,
            "throughput": [
                {"subscribers": t.subscribers, "msgs_per_s": t.rate, "samples": list(t.samples)}
                for t in throughput
            ],
            "latency_us": {
                "p50": latency.p50,
                "p90": latency.p90,
                "p99": latency.p99,
                "max": latency.max,
            },
            "plugin_costs": [
                {
                    "plugin": c.plugin,
                    "with_us": c.with_us,
                    "without_us": None if c.status != "ok" else c.without_us,
                    "status": c.status,
                }
                for c in costs
            ],
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {json_path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mqkit`` command with ``argv`` (default: ``sys.argv[1:]``); return its exit code."""
    command = typer.main.get_command(app)
    try:
        command.main(
            args=list(argv) if argv is not None else None, prog_name="mqkit", standalone_mode=True
        )
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        errors.print(str(code))
        return EXIT_FAILED
    return 0
