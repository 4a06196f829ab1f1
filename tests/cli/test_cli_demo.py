"""``mqkit demo``: the README's main job."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from .conftest import cli_env, flat, run_mqkit

FEATURES = (
    "pub/sub",
    "priority",
    "TTL",
    "ack",
    "nack",
    "transactions",
    "backpressure",
    "memory",
    "consumers",
    "persistence",
)


def test_demo_exits_0_and_names_every_feature_it_exercised(tmp_path: Path) -> None:
    result = run_mqkit("demo", "--store", str(tmp_path / "store"))
    assert result.returncode == 0, result.stdout + result.stderr
    out = flat(result.stdout)
    for number, feature in enumerate(FEATURES, start=1):
        assert f"{number}. {feature}" in out
    for evidence in (
        "delivered urgent, high, normal, low",  # priority
        "expired in the buffer and was dead-lettered",  # TTL
        "redelivered pay-1 as attempt 2",  # ack with a redelivery
        "nacked after 1 attempts",  # nack into the DLQ
        "committed: nothing delivered while open",  # transaction commit
        "rolled back on an exception",  # rollback
        "recovered important-0, important-1, important-2 in order",  # restart
        "Metrics of the first broker",
        "Health before the restart",
        "Health after the restart",
        "status healthy",
        "all 18 checks as expected",
    ):
        assert evidence in out, evidence
    assert "FAILED" not in out
    assert "Real time, no simulated clock" in out


def test_demo_runs_again_on_the_store_an_earlier_run_left(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert run_mqkit("demo", "--store", str(store)).returncode == 0
    again = run_mqkit("demo", "--store", str(store))
    out = flat(again.stdout)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "removed the store an earlier run left there" in out
    assert "recovered important-0, important-1, important-2 in order" in out
    assert "FAILED" not in out


def test_demo_refuses_a_directory_that_holds_other_files(tmp_path: Path) -> None:
    store = tmp_path / "mine"
    store.mkdir()
    (store / "notes.txt").write_text("keep me", encoding="utf-8")
    result = run_mqkit("demo", "--store", str(store))
    assert result.returncode != 0
    assert "not an mqkit store (notes.txt)" in flat(result.stderr)
    assert (store / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in store.iterdir()) == ["notes.txt"]


def test_plain_demo_uses_a_temporary_directory_and_removes_it(tmp_path: Path) -> None:
    # The README's command, as written: no --store. Its temporary directory goes in TMPDIR.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = run_mqkit("demo", env=cli_env(TMPDIR=str(tmp)))
    assert result.returncode == 0, result.stdout + result.stderr
    out = flat(result.stdout)
    for number, feature in enumerate(FEATURES, start=1):
        assert f"{number}. {feature}" in out
    assert "all 18 checks as expected" in out
    where = re.search(r"(\S+/mqkit-demo-\S+) \(a temporary directory, removed at the end\)", out)
    assert where is not None, out
    store = Path(where[1])
    assert store.parent == tmp and store.name.startswith("mqkit-demo-")
    assert not store.exists()
    assert list(tmp.iterdir()) == []  # nothing else left behind either


def test_demo_store_can_be_inspected_afterwards(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert run_mqkit("demo", "--store", str(store)).returncode == 0
    report = json.loads(run_mqkit("inspect", "--json", str(store)).stdout)
    topics = {t["topic"]: t for t in report["topics"]}
    assert topics["critical"]["messages"] == 3
    assert report["pending_acks"] == []  # pay-1 was acked, pay-2 dead-lettered
    assert sorted((d["id"], d["original_topic"], d["reason"]) for d in report["dead_letters"]) == [
        ("pay-2", "payments", "nacked after 1 attempts"),
        ("stale", "sensor", "expired"),
    ]


def test_the_console_script_and_python_m_are_the_same_command() -> None:
    script = Path(sys.executable).with_name("mqkit")
    assert script.is_file()
    by_script = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, env=cli_env(), check=False
    )
    by_module = run_mqkit("--version")
    assert by_script.returncode == by_module.returncode == 0
    assert by_script.stdout == by_module.stdout == "mqkit 0.1.0\n"


def test_without_the_cli_extra_the_command_names_the_extra(tmp_path: Path) -> None:
    # Shadow typer with a package that fails to import, as in an install without the extra.
    blocker = tmp_path / "block"
    (blocker / "typer").mkdir(parents=True)
    (blocker / "typer" / "__init__.py").write_text(
        "raise ImportError('No module named typer', name='typer')\n"
    )
    result = run_mqkit("demo", env=cli_env(PYTHONPATH=str(blocker)))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "needs the 'cli' extra" in result.stderr
    assert "pip install 'mqkit[cli]'" in result.stderr


def test_help_lists_every_command_and_each_command_describes_its_options() -> None:
    # docs/cli.md: `mqkit --help`, and `mqkit COMMAND --help` for each command (console script).
    script = str(Path(sys.executable).with_name("mqkit"))

    def mqkit_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, *args], capture_output=True, text=True, env=cli_env(), check=False
        )

    result = mqkit_cli("--help")
    assert result.returncode == 0
    for command, option in (
        ("demo", "--store"),
        ("serve", "--config"),
        ("inspect", "--json"),
        ("bench", "--quick"),
    ):
        assert command in result.stdout
        usage = mqkit_cli(command, "--help")
        assert usage.returncode == 0, usage.stderr
        assert f"Usage: mqkit {command}" in flat(usage.stdout) and option in usage.stdout
        # A flag takes no value: no "<bool>" beside it (typer's rich help printed one).
        assert "<bool>" not in usage.stdout, usage.stdout
    # Angle brackets in a command's text are kept (the markdown help swallowed "<topic>").
    assert "POST /publish/<topic>" in flat(mqkit_cli("serve", "--help").stdout)
    assert run_mqkit().returncode == 2  # no command: usage, exit 2
