"""``mqkit bench``: progress, the comparison table and a PNG chart (a tiny run: not timed)."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import flat, run_mqkit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_bench_prints_tables_and_writes_a_chart(tmp_path: Path) -> None:
    chart, data = tmp_path / "out" / "bench.png", tmp_path / "bench.json"
    result = run_mqkit(
        "bench", "--messages", "200", "--rounds", "1", "--chart", str(chart), "--json", str(data)
    )
    assert result.returncode == 0, result.stderr
    out = flat(result.stdout)
    assert "publish -> get, 1 -> 1 subscriber(s)" in out
    assert "publish -> get, 1 -> 10 subscriber(s)" in out
    assert "mqkit / case" in out and "What each plugin costs" in out
    assert f"wrote the chart to {chart}" in out
    assert chart.read_bytes().startswith(PNG_SIGNATURE)
    results = json.loads(data.read_text())["results"]
    cases = {(r["group"], r["case"]) for r in results}
    for group in ("1 -> 1", "1 -> 10"):
        assert {(group, "mqkit"), (group, "queue.SimpleQueue"), (group, "pyee emit")} <= cases
    plugins = {case for group, case in cases if group == "plugins"}
    assert {"core alone", "priority", "ttl", "ack", "metrics", "memory", "persistence"} <= plugins
    assert all(r["messages"] == 200 and r["seconds"] > 0 for r in results)


def test_bench_without_chart(tmp_path: Path) -> None:
    result = run_mqkit("bench", "--quick", "--messages", "100", "--no-chart", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote the chart" not in result.stdout
    assert list(tmp_path.iterdir()) == []
