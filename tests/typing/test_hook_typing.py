"""Hook implementations are type-checked: ``mypy --strict`` on plugins that must and must not pass.

One mypy run (the project's settings, this checkout's ``mqkit``) checks:

- ``cases/*.py``: every error mypy reports must be written on its line as ``# E: message
  [code]`` (several: ``# E: ... # E: ...``), and every such comment must be reported; notes are
  not compared. ``checked_errors.py`` holds what must fail, ``checked_ok.py`` what must pass;
- the Python blocks of docs/plugins.md's section "A plugin checked by mypy" (no error), and
  that section's example with ``mqkit_publish`` declared ``-> int``: mypy must report the
  error the page quotes;
- the example plugin package's module (docs/examples/mqkit-audit), a ``mqkit.Plugin``.

If ``mqkit.Plugin`` stopped declaring the hooks, the expected errors would not be reported and
this fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "cases"
PLUGINS_MD = ROOT / "docs" / "plugins.md"
SECTION = "## A plugin checked by mypy"
SETTINGS_SECTION = "## A plugin's own settings"
AUDIT_MODULE = ROOT / "docs" / "examples" / "mqkit-audit" / "src" / "mqkit_audit" / "__init__.py"
EXPECTED = re.compile(r"# E: (.+?)(?=\s+# E: |$)")
REPORTED = re.compile(r"^(?P<path>[^:\n]+):(?P<line>\d+): error: (?P<message>.*)$", re.MULTILINE)
RETURNS = ") -> bool | None:"

Errors = dict[tuple[Path, int], list[str]]


def section_blocks(lang: str, heading: str = SECTION) -> list[str]:
    """The ``lang`` fenced blocks of a section of docs/plugins.md (that on checked plugins)."""
    text = PLUGINS_MD.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return re.findall(rf"^```{lang}\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def expected_errors(path: Path) -> Errors:
    found: Errors = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        messages = EXPECTED.findall(line)
        if messages:
            found[(path, number)] = [m.strip() for m in messages]
    return found


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Errors, Path, Path]:
    """Run mypy once on every file this module judges; its errors by (file, line)."""
    scratch = tmp_path_factory.mktemp("typing")
    (example,) = section_blocks("python")
    assert example.count(RETURNS) == 1, f"the example's mqkit_publish should return {RETURNS}"
    good = scratch / "plugins_md_example.py"
    good.write_text(example, encoding="utf-8")
    bad = scratch / "plugins_md_example_int.py"
    bad.write_text(example.replace(RETURNS, ") -> int:"), encoding="utf-8")
    (settings_example,) = section_blocks("python", SETTINGS_SECTION)
    assert "(mqkit.Plugin)" in settings_example and "(mqkit.Settings)" in settings_example
    settings = scratch / "plugins_md_settings.py"
    settings.write_text(settings_example, encoding="utf-8")
    files = [*sorted(CASES.glob("*.py")), good, bad, settings, AUDIT_MODULE]
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--show-error-codes",
            "--no-pretty",
            "--hide-error-context",
            "--no-error-summary",
            "--no-color-output",
            "--cache-dir",
            str(scratch / "mypy-cache"),
            *map(str, files),
        ],
        cwd=ROOT,  # the project's pyproject.toml, and this checkout's mqkit first
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode in (0, 1), run.stdout + run.stderr  # 2: mypy itself failed
    assert "import-not-found" not in run.stdout, run.stdout
    errors: Errors = defaultdict(list)
    for match in REPORTED.finditer(run.stdout):
        path = Path(match["path"])
        path = path if path.is_absolute() else ROOT / path
        errors[(path.resolve(), int(match["line"]))].append(match["message"].strip())
    return dict(errors), good.resolve(), bad.resolve()


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.glob("*.py")))
def test_mypy_reports_exactly_the_expected_errors(
    case: str, checked: tuple[Errors, Path, Path]
) -> None:
    errors, _, _ = checked
    path = (CASES / case).resolve()
    reported = {key: sorted(msgs) for key, msgs in errors.items() if key[0] == path}
    expected = {key: sorted(msgs) for key, msgs in expected_errors(path).items()}
    missing = {k[1]: v for k, v in expected.items() if reported.get(k) != v}
    unexpected = {k[1]: v for k, v in reported.items() if expected.get(k) != v}
    assert not missing and not unexpected, (
        f"{case}: expected but not reported (line: errors): {missing}; "
        f"reported but not expected: {unexpected}"
    )


def test_the_failing_cases_cover_return_and_parameter_types() -> None:
    expected = [m for msgs in expected_errors(CASES / "checked_errors.py").values() for m in msgs]
    assert any(m.startswith('Return type "int" of "mqkit_deliver"') for m in expected)
    assert any(m.startswith("Argument 3 of") for m in expected)  # a parameter's type
    assert any(m.startswith('Signature of "mqkit_ack"') for m in expected)  # a subset
    assert expected_errors(CASES / "checked_ok.py") == {}


def test_the_docs_example_type_checks(checked: tuple[Errors, Path, Path]) -> None:
    errors, good, _ = checked
    assert [msgs for (path, _), msgs in errors.items() if path == good] == []


def test_the_docs_settings_example_type_checks(checked: tuple[Errors, Path, Path]) -> None:
    """docs/plugins.md's third-party plugin with its own settings section passes mypy --strict."""
    errors, good, _ = checked
    settings = good.with_name("plugins_md_settings.py")
    assert [msgs for (path, _), msgs in errors.items() if path == settings] == []


def test_the_docs_quote_the_error_mypy_reports(checked: tuple[Errors, Path, Path]) -> None:
    errors, _, bad = checked
    reported = [m for (path, _), msgs in errors.items() if path == bad for m in msgs]
    (text,) = section_blocks("text")
    (quoted,) = [line.removeprefix("error: ") for line in text.splitlines() if line]
    assert quoted in reported  # (and the example's "return None" no longer fits "int")


def test_the_example_plugin_package_type_checks(checked: tuple[Errors, Path, Path]) -> None:
    errors, _, _ = checked
    assert [m for (path, _), m in errors.items() if path == AUDIT_MODULE.resolve()] == []
    assert "(mqkit.Plugin)" in AUDIT_MODULE.read_text(encoding="utf-8")
