"""``mqkit bench``: mqkit measured with the user's config (tiny runs: nothing here is timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import cli_env, flat, run_mqkit, write_toml

PEER_MODULES = ("pyee", "blinker", "pubsub", "aiopubsub", "janus", "kombu", "persistqueue")


def test_bench_measures_the_defaults_throughput_latency_and_plugin_costs(tmp_path: Path) -> None:
    data = tmp_path / "out" / "bench.json"
    result = run_mqkit("bench", "--messages", "200", "--rounds", "2", "--json", str(data))
    assert result.returncode == 0, result.stderr
    out = flat(result.stdout)
    assert "config defaults (plugins: metrics, priority, ttl)" in out
    assert "200 messages of 64 bytes per run, median of 2 rounds" in out
    assert "Throughput: publish -> get" in out and "1 -> 1 " in out and "1 -> 10 " in out
    assert "Latency: publish -> get across threads" in out and "p50 p90 p99 max" in out
    assert "What each plugin costs" in out and "plugin µs / msg without it cost share" in out
    assert f"wrote {data}" in out
    report = json.loads(data.read_text())
    assert report["messages"] == 200 and report["payload"] == 64 and report["rounds"] == 2
    assert [t["subscribers"] for t in report["throughput"]] == [1, 10]
    assert all(len(t["samples"]) == 2 and t["msgs_per_s"] > 0 for t in report["throughput"])
    latency = report["latency_us"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    costs = {c["plugin"]: c for c in report["plugin_costs"]}
    assert list(costs) == ["metrics", "priority", "ttl"] == report["plugins"]
    assert all(c["status"] == "ok" and c["without_us"] > 0 for c in costs.values())


def test_bench_runs_the_config_file_with_its_store_in_a_temporary_directory(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    config = write_toml(
        tmp_path / "mqkit.toml",
        enable_ack_support=True,
        enable_persistence=True,
        persistence_path=str(store),
        enable_metrics=False,
        max_memory_usage=1 << 30,
    )
    data = tmp_path / "bench.json"
    result = run_mqkit(
        "bench",
        "--config",
        str(config),
        "--messages",
        "100",
        "--rounds",
        "1",
        "--subscribers",
        "3",
        "--payload",
        "1000",
        "--json",
        str(data),
    )
    assert result.returncode == 0, result.stderr
    out = flat(result.stdout)
    assert f"config {config}" in out and "100 messages of 1,000 bytes per run" in out
    assert "1 -> 3 " in out and "1 -> 10 " not in out
    report = json.loads(data.read_text())
    assert report["plugins"] == ["ack", "memory", "persistence", "priority", "ttl"]
    assert [t["subscribers"] for t in report["throughput"]] == [1, 3]
    costs = {c["plugin"]: c for c in report["plugin_costs"]}
    assert costs["ack"]["status"] == costs["persistence"]["status"] == "ok"
    # max_memory_usage loads the memory plugin: the config cannot drop it, and says why.
    assert "memory" in costs["memory"]["status"] and costs["memory"]["without_us"] is None
    assert "memory: not measured:" in out
    assert not store.exists()  # the user's store is never touched


def test_bench_fits_80_columns_and_shows_its_progress() -> None:
    result = run_mqkit(
        "bench", "--messages", "50", "--rounds", "1", env=cli_env(COLUMNS="80", FORCE_COLOR="1")
    )
    assert result.returncode == 0, result.stderr
    # 2 throughput runs, the latency run, the config and each of its 3 plugins' absence.
    assert "7/7" in result.stdout
    plain = run_mqkit("bench", "--messages", "50", "--rounds", "1", env=cli_env(COLUMNS="80"))
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    for header in ("deliveries/s", "spread", "p99", "max", "without it", "cost", "share"):
        assert any(header in line for line in lines), header


def test_bench_rejects_an_invalid_config(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "mqkit.toml", default_buffer_size=-1)
    result = run_mqkit("bench", "--config", str(config))
    assert result.returncode == 2
    assert "default_buffer_size" in flat(result.stderr)


def test_bench_needs_none_of_the_peer_libraries() -> None:
    # Each peer's import fails in this process, as if the 'bench' extra were not installed.
    code = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({PEER_MODULES!r}))\n"
        "from mqkit.cli import main\n"
        "sys.exit(main(['bench', '--messages', '50', '--rounds', '1']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "What each plugin costs" in result.stdout
