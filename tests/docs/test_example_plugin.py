"""The plugin-author guide's example package: installed with pip, enabled by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import AUDIT_PACKAGE, install_audit_package


def test_installed_with_pip_and_enabled_by_name_through_its_entry_point(tmp_path: Path) -> None:
    target = tmp_path / "site-packages"
    install_audit_package(target, tmp_path / "build")
    assert (target / "mqkit_audit" / "__init__.py").is_file()
    (dist,) = target.glob("mqkit_audit-*.dist-info")
    assert "audit = mqkit_audit:AuditPlugin" in (dist / "entry_points.txt").read_text()

    env = dict(os.environ, PYTHONPATH=str(target))
    env.pop("MQKIT_AUTOLOAD_PLUGINS", None)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(AUDIT_PACKAGE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "6 passed" in tests.stdout

    by_name = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mqkit\n"
            "with mqkit.Broker(mqkit.Config(plugins=['audit'])) as b:\n"
            "    b.publish('t', mqkit.Message('m-1'))\n"
            "    audit = b.get_plugin('audit')\n"
            "    print(type(audit).__module__, audit.history('m-1'))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.strip() == "mqkit_audit ['published']"


def test_the_example_plugin_and_its_settings_section_type_check() -> None:
    # docs/plugins.md shows this package; its [audit] section is read with
    # broker.settings(AuditSettings), which mypy --strict checks as an AuditSettings.
    root = AUDIT_PACKAGE.parents[2]
    env = dict(os.environ, MYPYPATH=str(root))
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(AUDIT_PACKAGE / "src")],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
