"""mqkit.testing is an opt-in pytest plugin: installing mqkit adds no fixture to other projects.

Each test runs a fresh ``python -m pytest`` in a tmp project (with the plugins installed in
this environment auto-loading, as in any project) on a test that requests the kit's fixtures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

USES_THE_KIT = """
def test_uses_the_kit(make_broker, fake_clock, hook_recorder):
    broker = make_broker("ack", objects=[hook_recorder])
    assert broker.plugin_names() == ["ack", "hook-recorder"]
    fake_clock.advance(1)
"""


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (project / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (project / "test_kit.py").write_text(USES_THE_KIT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("MQKIT_AUTOLOAD_PLUGINS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_mqkit_declares_no_pytest11_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "pytest11" not in project.get("entry-points", {})


def test_a_project_without_the_opt_in_gets_none_of_the_fixtures(tmp_path: Path) -> None:
    result = run_pytest(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "fixture 'make_broker' not found" in result.stdout


def test_dash_p_mqkit_testing_opts_in(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "-p", "mqkit.testing")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_pytest_plugins_in_the_top_level_conftest_opts_in(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["mqkit.testing"]\n')
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
