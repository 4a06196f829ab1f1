"""System programs the tests drive (Debian packages): skip when missing, or fail under CI.

A test that needs a program this machine lacks is skipped with a reason naming the Debian
package that provides it. With ``TEST_REQUIRE_SYSTEM_PROGRAMS=1`` (``.ci/run`` sets it: CI
installs them all) the same test fails instead, so a missing package never passes unseen.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["STRICT", "require_programs"]

STRICT = "TEST_REQUIRE_SYSTEM_PROGRAMS"


def require_programs(package: str, *programs: str) -> None:
    """Skip the calling test unless every one of ``programs`` is on PATH (fail when strict)."""
    missing = [p for p in programs if shutil.which(p) is None]
    if not missing:
        return
    reason = (
        f"needs {', '.join(missing)} from the Debian package {package} "
        f"(sudo apt-get install {package})"
    )
    if os.environ.get(STRICT, "") not in ("", "0"):
        pytest.fail(f"{reason}; {STRICT} is set, so a missing program fails", pytrace=False)
    pytest.skip(reason)
