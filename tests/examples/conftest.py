"""Helpers for running the examples under ``examples/`` as a user would."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python examples/NAME ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ),
        check=False,
    )


def load_example(name: str) -> ModuleType:
    """Import ``examples/NAME`` as a module (its ``__main__`` block does not run)."""
    path = EXAMPLES / name
    spec = importlib.util.spec_from_file_location(f"mqkit_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
