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
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    from mqkit.bench import ReportTable

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
    from mqkit.inspection import LOCK_FILE, STORE_DIR, lock_holder

    if not store.is_dir():
        return
    found = {p.name for p in store.iterdir()}
    if not found:
        return
    if not found <= {LOCK_FILE, STORE_DIR}:
        raise _fail(
            f"{store} holds files that are not an mqkit store ({', '.join(sorted(found))}); "
            "give the demo a new or empty directory, or one an earlier demo wrote"
        )
    holder = lock_holder(store)
    if holder is not None:
        raise _fail(f"{store} is in use by a running broker (pid {holder})")
    shutil.rmtree(store / STORE_DIR, ignore_errors=True)
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


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="A TOML file of Config fields (mqkit.toml)."),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Override http_host (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Override http_port (0: any free port).")] = None,
    log_level: Annotated[
        str, typer.Option(help="Logging level: debug, info, warning, error.")
    ] = "info",
) -> None:
    """Run a broker as a service until SIGINT or SIGTERM.

    Starts the protocol gateways the config enables (enable_mqtt, enable_amqp) and an HTTP
    endpoint with /healthz (the health status as JSON; 503 when not healthy), /metrics
    (Prometheus) and POST /publish/<topic>. On SIGINT/SIGTERM it stops the endpoint, closes
    the broker (persistence flushed, gateways closed) and exits 0.
    """
    from mqkit.service import METRICS_EXTRA_HINT, Service

    logging.basicConfig(
        level=log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False)],
    )
    try:
        cfg = load_config(config)
        changes: dict[str, object] = {}
        if host is not None:
            changes["http_host"] = host
        if port is not None:
            changes["http_port"] = port
        if changes:
            cfg = cfg.replace(**changes)
            cfg.validate()
    except InvalidConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    try:
        service = Service(cfg)
    except MQError as exc:
        raise _fail(f"cannot start the broker: {exc}") from None
    try:
        service.start()
    except MQError as exc:
        raise _fail(f"cannot start a gateway: {exc}") from None
    except OSError as exc:
        raise _fail(
            f"cannot listen on {cfg.http_host}:{cfg.http_port}: {exc.strerror or exc}"
        ) from None
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        logging.getLogger("mqkit.serve").warning(METRICS_EXTRA_HINT)
    info = Table.grid(padding=(0, 2))
    info.add_row("config", str(config) if config is not None else "defaults (no --config)")
    info.add_row("plugins", ", ".join(service.broker.plugin_names()) or "(none)")
    if cfg.enable_persistence:
        info.add_row("persistence", cfg.persistence_path)
    for name, (ghost, gport) in service.gateways.items():
        info.add_row(name, f"{ghost}:{gport}")
    info.add_row("health", f"{service.url}/healthz")
    info.add_row("metrics", f"{service.url}/metrics")
    info.add_row("publish", f"POST {service.url}/publish/<topic>")

    def announce() -> None:
        # Called with the signal handlers installed: whoever reads "listening" may SIGTERM us.
        console.print(Panel.fit(info, title=f"[bold]mqkit serve[/] (pid {os.getpid()})"))
        console.print(f"listening on {service.url} - Ctrl-C or SIGTERM to stop")
        sys.stdout.flush()

    try:
        received = service.run_until_signal(ready=announce)
        console.print(f"received {received or 'a stop request'}: shutting down")
    finally:
        service.close()
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
    host: Annotated[str | None, typer.Option(help="Override the broker's http_host.")] = None,
    port: Annotated[
        int | None, typer.Option(help="Override the broker's http_port (0: any free port).")
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="Logging level: debug, info, warning, error.")
    ] = "info",
) -> None:
    """Run an application's handlers as a service until SIGINT or SIGTERM.

    Imports MODULE (from the current directory first), takes its broker (built with its own
    Config) and runs every handler registered on it (@broker.subscriber), with the gateways
    its config enables and the HTTP endpoint of mqkit serve (/healthz, /metrics, POST
    /publish/<topic>). On SIGINT/SIGTERM it stops taking messages, finishes those in flight,
    stops the endpoint, closes the broker and exits 0.
    """
    from mqkit.service import METRICS_EXTRA_HINT, Service

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
    try:
        cfg = broker.config
        changes: dict[str, object] = {}
        if host is not None:
            changes["http_host"] = host
        if port is not None:
            changes["http_port"] = port
        if changes:
            cfg = cfg.replace(**changes)
            cfg.validate()
    except InvalidConfigError as exc:
        broker.close()
        raise _fail(str(exc), EXIT_USAGE) from None
    service = Service(cfg, broker=broker)
    try:
        service.start()
    except MQError as exc:
        raise _fail(f"cannot start a gateway: {exc}") from None
    except OSError as exc:
        raise _fail(
            f"cannot listen on {cfg.http_host}:{cfg.http_port}: {exc.strerror or exc}"
        ) from None
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        logging.getLogger("mqkit.serve").warning(METRICS_EXTRA_HINT)
    info = Table.grid(padding=(0, 2))
    info.add_row("app", target)
    info.add_row("handlers", str(len(broker._handlers().names())))
    info.add_row("plugins", ", ".join(broker.plugin_names()) or "(none)")
    for name, (ghost, gport) in service.gateways.items():
        info.add_row(name, f"{ghost}:{gport}")
    info.add_row("health", f"{service.url}/healthz")
    info.add_row("metrics", f"{service.url}/metrics")

    def announce() -> None:
        # Called with the signal handlers installed: whoever reads "listening" may SIGTERM us.
        console.print(Panel.fit(info, title=f"[bold]mqkit run[/] (pid {os.getpid()})"))
        console.print(f"listening on {service.url} - Ctrl-C or SIGTERM to stop")
        sys.stdout.flush()

    try:
        received = broker._handlers().run(close=False, ready=announce)
        console.print(f"{received}: handlers stopped, in-flight messages finished")
    finally:
        service.close()
    closed = ["HTTP closed", "broker closed"]
    if service.gateways:
        closed.append("gateways closed")
    console.print(f"[bold]stopped cleanly[/]: {', '.join(closed)}")


# -- inspect ---------------------------------------------------------------------------------------


@app.command("inspect")
def inspect_command(
    path: Annotated[Path, typer.Argument(help="A persistence directory (persistence_path).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole report as JSON, for scripts.")
    ] = False,
    limit: Annotated[
        int, typer.Option(help="Rows of pending acks and dead letters to show (0: all).")
    ] = 20,
) -> None:
    """Show what a persistence directory holds, read-only.

    Topics with their message counts and oldest/newest publish times, the messages still
    waiting for an ack, and the dead letters with their reasons. Safe on the directory of a
    running broker: the lock is left alone, and the report says which process holds it.
    """
    from mqkit.inspection import inspect_store
    from mqkit.service import json_ready

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
    for t in report.topics:
        topics.add_row(
            t.topic,
            str(t.messages),
            str(t.pending_acks),
            str(t.dead_letters),
            _span(t.oldest, t.newest),
        )
    topics.caption = "unacked: waiting for an ack; dead: dead-letter copies (a DLQ topic)"
    console.print(topics)
    shown = slice(None) if limit <= 0 else slice(limit)
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
    more = max(len(report.pending_acks), len(report.dead_letters))
    if 0 < limit < more:
        console.print(f"[dim]showing {limit} row(s) per table; --limit 0 shows all[/]")
    if report.unreadable or report.expired:
        console.print(
            f"[yellow]{report.unreadable} unreadable and {report.expired} expired entr(y/ies) "
            "skipped[/]"
        )


# -- bench -----------------------------------------------------------------------------------------


def _rich_table(report: ReportTable) -> Table:
    """A rich table of a benchmark report table: numbers right-aligned, notes as a caption."""
    table = Table(title=report.title, title_justify="left", header_style="bold")
    for column in report.columns:
        if column == "note":
            table.add_column(column, overflow="fold", ratio=1, style="dim")
        elif column in ("case", "kind", "holder", "target", "against", "status"):
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for row in report.rows:
        cells = list(row)
        if "status" in report.columns:
            i = report.columns.index("status")
            style = {"met": "bold green", "not met": "bold red"}.get(cells[i], "yellow")
            cells[i] = f"[{style}]{cells[i]}[/]"
        table.add_row(*cells)
    if report.notes:
        table.caption = "\n".join(report.notes)
        table.caption_justify = "left"
    return table


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="A short run: fewer messages and rounds.")
    ] = False,
    messages: Annotated[
        int | None,
        typer.Option(min=1, help="Messages per run for every case (default: each case's own)."),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Rounds per case; the median counts (7; quick 3).")
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            "-g",
            help="Run only this group (repeatable): core, cross-thread, asyncio, plugins, "
            "durable, ack, memory, scaling.",
        ),
    ] = None,
    chart: Annotated[
        Path, typer.Option(help="Where to write the PNG chart.", dir_okay=False)
    ] = Path("mqkit-bench.png"),
    no_chart: Annotated[bool, typer.Option("--no-chart", help="Do not draw a chart.")] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON here.")
    ] = None,
) -> None:
    """Run the benchmark suite: mqkit against its peers, in one process, with ratios.

    Groups: core (publish -> get against pyee, blinker, pypubsub, aiopubsub and stdlib
    baselines), cross-thread, asyncio, plugins (what each plugin costs), durable (against
    diskcache and sqlite3), ack (round trip against kombu and persist-queue), memory and
    scaling (the cost per message with 10,000 and 1,000,000 messages buffered).
    Prints a table per group, the targets with their verdicts, and writes a PNG chart
    (matplotlib). Peers come with the 'bench' extra; a missing one shows as "not installed".
    """
    from mqkit.bench import (
        GROUPS,
        MEMORY_CASES,
        SCALING_CASES,
        BenchCase,
        evaluate_targets,
        machine_info,
        memory_tables,
        run_memory,
        run_scaling,
        run_suite,
        scaling_tables,
        suite,
        target_table,
        timing_tables,
        to_json,
        write_chart,
    )

    groups = list(dict.fromkeys(group or GROUPS))
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise _fail(f"unknown group {unknown[0]!r}; choose from {', '.join(GROUPS)}", EXIT_USAGE)
    if not no_chart:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise _fail(
                "the chart needs matplotlib: pip install 'mqkit[bench]' (or pass --no-chart)"
            ) from None
    r = rounds or (3 if quick else 7)
    cases = suite([g for g in groups if g != "memory"])
    size = f"{messages:,} messages per run" if messages else "messages per run: see each table"
    title = (
        f"mqkit {mqkit.__version__}, Python {platform.python_version()} "
        f"({platform.machine()}, {os.cpu_count()} cores), {size}, median of {r} rounds"
        + (" (quick)" if quick else "")
    )
    console.print(f"[bold]mqkit bench[/]: {title}")
    progress = Progress(
        TextColumn("{task.description:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[case]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        extra = {"memory": len(MEMORY_CASES), "scaling": len(SCALING_CASES)}
        tasks = {
            g: progress.add_task(
                g, total=extra.get(g, 0) + r * sum(c.section == g for c in cases), case=""
            )
            for g in groups
        }

        def ran(case: BenchCase) -> None:
            progress.update(tasks[case.section], advance=1, case=case.name)

        def measured(name: str) -> None:
            progress.update(tasks["memory"], advance=1, case=name)

        def scaled(name: str) -> None:
            progress.update(tasks["scaling"], advance=1, case=name)

        results = run_suite(cases, messages, r, ran, quick=quick)
        memory = run_memory(messages, quick=quick, on_run=measured) if "memory" in groups else []
        scaling = run_scaling(messages, quick=quick, on_run=scaled) if "scaling" in groups else []
    for report in [*timing_tables(results), *memory_tables(memory), *scaling_tables(scaling)]:
        console.print(_rich_table(report))
    targets = evaluate_targets(results, memory, scaling)
    if targets:
        console.print(_rich_table(target_table(targets)))
    if json_path is not None:
        data = to_json(results, memory, title, machine_info(), scaling)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {json_path}")
    if not no_chart:
        out = write_chart(results, chart, title, memory)
        console.print(f"wrote the chart to {out}")


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
