"""Helpers for the documentation tests."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import attrs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
AUDIT_PACKAGE = DOCS / "examples" / "mqkit-audit"


def load_script(path: Path) -> ModuleType:
    """Import a script under docs/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"mqkit_docs_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@attrs.frozen
class Block:
    """A fenced code block of a Markdown page."""

    page: Path
    line: int
    lang: str
    info: str
    text: str

    @property
    def title(self) -> str:
        """The ``title="..."`` of the fence, if any."""
        found = re.search(r'title="([^"]+)"', self.info)
        return found.group(1) if found else ""

    def where(self) -> str:
        """``page:line`` for messages."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<info>.*)$")


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, in order (nested fences are not used in our docs)."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, info = match.group("fence"), match.group("info").strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(match.group("indent")) :])
            i += 1
        lang = info.split()[0] if info else ""
        found.append(Block(page, start + 1, lang, info, "\n".join(body) + "\n"))
        i += 1
    return found


def install_audit_package(target: Path, scratch: Path) -> None:
    """``pip install`` docs/examples/mqkit-audit into ``target`` (no network, no mqkit copy).

    pip builds from a copy in ``scratch``: a setuptools build writes ``build/`` and
    ``*.egg-info`` next to the sources, which must not litter the repository.
    """
    source = scratch / "mqkit-audit"
    shutil.copytree(AUDIT_PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )


@contextlib.contextmanager
def fixed_ports(ports: Iterable[int]) -> Iterator[None]:
    """Hold the fixed TCP ports a page or a command binds, one holder at a time on this machine.

    The docs show fixed ports (``http_port = 9321``, ``mkdocs serve`` on 8000) because they read
    better than a port chosen at run time. Every test that binds one takes a lock named after
    it (``flock`` on a file in the temporary directory, waiting for the holder), so concurrent
    runs of this suite take turns instead of colliding. The OS releases the lock of a killed
    process.
    """
    with contextlib.ExitStack() as stack:
        for port in sorted(set(ports)):
            lock = Path(tempfile.gettempdir()) / f"mqkit-tests-port-{port}.lock"
            handle = stack.enter_context(lock.open("a"))
            fcntl.flock(handle, fcntl.LOCK_EX)  # pytest-timeout bounds the wait
        yield
