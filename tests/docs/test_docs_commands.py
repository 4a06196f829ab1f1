"""Every command and code block of the README and the docs works as written.

For each page, in a fresh working directory, the blocks run in order:

- a ``toml`` block with ``title="NAME"`` is written to the file NAME (later blocks use it), and
  so is a ``python`` block titled ``NAME.py`` (an application module, which ``mqkit run``
  imports: it is not run as a script);
- a ``python`` block runs as a script (``python`` in a subprocess); a block that only includes
  a file (``--8<-- "path"``) is a listing of a file whose own tests run it, and a block titled
  ``signature`` (the generated hook reference) declares a hook: neither is a script;
- each line of a ``bash`` block runs with ``bash``, with the venv's ``bin`` first on ``PATH``
  (``.venv/bin/`` means that venv): ``mqkit serve ...`` and ``mqkit run ...`` (but
  ``--help``) are started in the background and waited for until they print their URL, and
  stopped with SIGTERM (exit 0 expected) at the end of the page. ``pip install
  ./docs/examples/...`` is rewritten: the package is installed (no network, no isolation) into
  a directory put on ``PYTHONPATH``, so the venv stays as it is; CI (.ci/run) runs the command
  itself with the venv's pip (``.venv/bin/pip install --quiet ./docs/examples/mqkit-audit``),
  then the package's tests.

A page that binds fixed ports (``http_port = 9321`` in docs/cli.md) holds them for its run
(:func:`~tests.docs.conftest.fixed_ports`): concurrent runs of this suite take turns.

Three kinds of commands are not run here; CI runs them as written instead, and a test below
checks that each one (in a block, or an install command in the text) is a line of .ci/run:

- creating a venv and ``pip install``-ing mqkit itself or its extras from the clone
  (``.venv/bin/pip install -e '.[cli]'``): they change the venv this suite runs in;
- the README's ``python -m pytest``: the suite this test belongs to;
- ``python benchmarks/run.py ...`` (docs/benchmarks.md): the full suite takes minutes and
  writes into ``docs/img/``; CI runs those lines in a scratch copy of the repository.

Commands written in the text rather than in blocks (``mkdocs serve``, ``python
docs/gen_config.py``, ...) are run by tests/docs/test_prose_commands.py.
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

from .conftest import DOCS, ROOT, Block, blocks, fixed_ports, install_audit_package

VENV_BIN = Path(sys.executable).parent
PAGES = [
    ROOT / "README.md",
    *sorted(p for p in DOCS.rglob("*.md") if "examples" not in p.relative_to(DOCS).parts),
]
SETUP = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'"
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')
SERVE_DEADLINE = 30.0
SERVERS = ("mqkit serve", "python -m mqkit serve", "mqkit run", "python -m mqkit run")
"""Commands that run until stopped: started in the background, stopped at the end of a page."""


def is_module(block: Block) -> bool:
    """A ``python`` block titled ``NAME.py``: a file to write, not a script to run."""
    return block.lang == "python" and block.title.endswith(".py")


def is_install(command: str) -> bool:
    """Creating a venv or installing mqkit itself (or an extra) from the clone: CI's job."""
    return command.startswith(("python3 -m venv", "pip install -e")) or (
        ".venv/bin/pip install" in command
    )


def is_main_test_suite(command: str) -> bool:
    """The README's test command: running it here would recurse into this suite."""
    return command.endswith("-m pytest")


def is_benchmark_run(command: str) -> bool:
    """``benchmarks/run.py`` from a clone: minutes long, writes docs/img/; CI runs it."""
    return command.startswith("python benchmarks/run.py")


def left_to_ci(command: str) -> bool:
    """Whether CI (.ci/run), not this test, runs ``command`` (one step of a line)."""
    return is_install(command) or is_main_test_suite(command) or is_benchmark_run(command)


def bash_lines(block: Block) -> list[str]:
    """The commands of a ``bash`` block, one per line, without comments."""
    lines = (raw.split("  #")[0].strip() for raw in block.text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


FIXED_PORT = re.compile(r"(?:127\.0\.0\.1|localhost):(\d+)|_port = (\d+)|--port (\d+)")


def fixed_ports_of(page: Path) -> set[int]:
    """The fixed TCP ports the runnable blocks of ``page`` bind or talk to."""
    ports: set[int] = set()
    for block in blocks(page):
        if block.lang in ("bash", "toml", "python"):
            for match in FIXED_PORT.finditer(block.text):
                ports.update(int(g) for g in match.groups() if g and int(g))
    return ports


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
                # The outer PYTHONPATH stays behind it (a worktree run against a shared venv).
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(self.site_packages), os.environ.get("PYTHONPATH")])
                ),
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
        with fixed_ports(fixed_ports_of(self.page)):
            self.run_blocks(ran)
        return ran

    def run_blocks(self, ran: list[str]) -> None:
        try:
            for block in blocks(self.page):
                if (block.lang == "toml" and block.title) or is_module(block):
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
        for command in bash_lines(block):
            steps = [s.strip() for s in command.split("&&")]
            steps = [s for s in steps if not left_to_ci(s)]
            for step in steps:
                step = step.replace(".venv/bin/", f"{VENV_BIN}/")
                if step.startswith("pip install ./"):
                    self.site_packages.mkdir(exist_ok=True)
                    install_audit_package(self.site_packages, self.work / ".build")
                elif step.startswith(SERVERS) and ("--help" not in step.split()):
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
            assert code == 0, f"{block.where()}: the server exited {code} on SIGTERM"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_block_of_the_page_runs(page: Path, tmp_path: Path) -> None:
    ran = Page(page, tmp_path).run()
    runnable = [
        b
        for b in blocks(page)
        if b.lang == "bash"
        or (
            b.lang == "python"
            and b.title != "signature"
            and not is_module(b)
            and not SNIPPET.match(b.text.strip())
        )
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
        "python3 -m venv .venv && .venv/bin/pip install -e '.[cli]'"
        " && .venv/bin/python -m mqkit demo",
        f"{SETUP} && .venv/bin/python -m pytest",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in commands[:2]:
        assert command in ci


INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def test_ci_runs_every_command_left_to_it() -> None:
    """Each command this test leaves to CI is a line of .ci/run, exactly as the docs write it."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    left: list[str] = []
    for page in PAGES:
        for block in blocks(page):
            if block.lang == "bash":
                left += [
                    line
                    for line in bash_lines(block)
                    if any(left_to_ci(step.strip()) for step in line.split("&&"))
                ]
        text = page.read_text(encoding="utf-8")
        left += [span for span in INLINE_CODE.findall(text) if is_install(span)]
    assert {'python benchmarks/run.py --profile "1 -> 1/mqkit"'} <= set(left)
    assert {".venv/bin/pip install -e '.[cli]'", ".venv/bin/pip install -e '.[bench]'"} <= set(left)
    missing = [command for command in left if not any(command in line for line in ci)]
    assert missing == []
