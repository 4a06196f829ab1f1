"""Every command and code block of the README and the docs works as written.

For each page, in a fresh working directory, the blocks run in order:

- a ``toml`` block with ``title="NAME"`` is written to the file NAME (later blocks use it);
- a ``python`` block runs as a script (``python`` in a subprocess); a block that only includes
  a file (``--8<-- "path"``) is a listing of a file whose own tests run it, and a block titled
  ``signature`` (the generated hook reference) declares a hook: neither is a script;
- each line of a ``bash`` block runs with ``bash``, with the venv's ``bin`` first on ``PATH``
  (``.venv/bin/`` means that venv): ``mqkit serve ...`` is started in the background and waited
  for until it prints its URL, and stopped with SIGTERM (exit 0 expected) at the end of the
  page; ``pip install ./docs/examples/...`` installs that package into a directory put on
  ``PYTHONPATH``.

Two kinds of commands are not run here, and CI runs them as written instead (see .ci/run, which
a test below checks): creating a venv and ``pip install``-ing mqkit itself (the README's first
two commands), and the README's ``python -m pytest`` (the suite this test belongs to).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import DOCS, ROOT, Block, blocks, install_audit_package

VENV_BIN = Path(sys.executable).parent
PAGES = [
    ROOT / "README.md",
    *sorted(p for p in DOCS.rglob("*.md") if "examples" not in p.relative_to(DOCS).parts),
]
SETUP = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'"
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')
SERVE_DEADLINE = 30.0


def is_install(command: str) -> bool:
    """Creating a venv or installing mqkit itself: CI's job (.ci/run)."""
    return command.startswith(("python3 -m venv", "pip install '", "pip install -e")) or (
        ".venv/bin/pip install" in command
    )


def is_main_test_suite(command: str) -> bool:
    """The README's test command: running it here would recurse into this suite."""
    return command.endswith("-m pytest")


class Page:
    """Runs one page's blocks in a working directory."""

    def __init__(self, page: Path, work: Path) -> None:
        self.page = page
        self.work = work
        self.site_packages = work / ".site-packages"
        self.servers: list[tuple[Block, subprocess.Popen[str]]] = []
        self.env = dict(os.environ)
        self.env.update(
            {
                "PATH": f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '')}",
                "COLUMNS": "200",
                "PYTHONPATH": str(self.site_packages),
                "PYTEST_ADDOPTS": "-p no:cacheprovider",
            }
        )
        # What the docs refer to by relative path, as in a clone of the repository: examples/
        # and docs/examples/ (copied: building a package writes next to its sources).
        (work / "examples").symlink_to(ROOT / "examples")
        shutil.copytree(
            DOCS / "examples",
            work / "docs" / "examples",
            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
        )

    def run(self) -> list[str]:
        ran: list[str] = []
        try:
            for block in blocks(self.page):
                if block.lang == "toml" and block.title:
                    (self.work / block.title).write_text(block.text, encoding="utf-8")
                elif block.lang == "python":
                    if SNIPPET.match(block.text.strip()) or block.title == "signature":
                        continue
                    self.python(block)
                    ran.append(f"{block.where()} python")
                elif block.lang == "bash":
                    ran += self.bash(block)
        finally:
            self.stop_servers()
        return ran

    def python(self, block: Block) -> None:
        script = self.work / f"block_{block.line}.py"
        script.write_text(block.text, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{block.where()}:\n{result.stdout}\n{result.stderr}"

    def bash(self, block: Block) -> list[str]:
        ran: list[str] = []
        for raw in block.text.splitlines():
            command = raw.split("  #")[0].strip()
            if not command or command.startswith("#"):
                continue
            steps = [s.strip() for s in command.split("&&")]
            steps = [s for s in steps if not is_install(s) and not is_main_test_suite(s)]
            for step in steps:
                step = step.replace(".venv/bin/", f"{VENV_BIN}/")
                if step.startswith("pip install ./"):
                    self.site_packages.mkdir(exist_ok=True)
                    install_audit_package(self.site_packages, self.work / ".build")
                elif step.startswith(("mqkit serve", "python -m mqkit serve")):
                    self.serve(block, step)
                else:
                    self.shell(block, step)
                ran.append(f"{block.where()} {step}")
        return ran

    def shell(self, block: Block, command: str) -> None:
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, (
            f"{block.where()}: {command}\n{result.stdout}\n{result.stderr}"
        )

    def serve(self, block: Block, command: str) -> None:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.work,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.servers.append((block, proc))
        assert proc.stdout is not None
        end = time.monotonic() + SERVE_DEADLINE
        seen: list[str] = []
        for line in proc.stdout:  # the server prints its URL once it listens
            seen.append(line)
            if line.startswith("listening on "):
                return
            if time.monotonic() > end:
                break
        raise AssertionError(f"{block.where()}: {command} did not start:\n{''.join(seen)}")

    def stop_servers(self) -> None:
        for block, proc in self.servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
                if proc.stdout is not None:
                    proc.stdout.close()
            assert code == 0, f"{block.where()}: mqkit serve exited {code} on SIGTERM"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_block_of_the_page_runs(page: Path, tmp_path: Path) -> None:
    ran = Page(page, tmp_path).run()
    runnable = [
        b
        for b in blocks(page)
        if b.lang == "bash"
        or (b.lang == "python" and b.title != "signature" and not SNIPPET.match(b.text.strip()))
    ]
    assert bool(ran) == bool(runnable)


def test_ci_runs_the_readme_commands_as_written() -> None:
    readme = [b for b in blocks(ROOT / "README.md") if b.lang == "bash"]
    commands = [
        line.split("  #")[0].strip()
        for line in readme[0].text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert commands[:2] == [
        f"{SETUP} && .venv/bin/python -m mqkit demo",
        f"{SETUP} && .venv/bin/python -m pytest",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in commands[:2]:
        assert command in ci
