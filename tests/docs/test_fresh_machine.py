"""What the README's test command needs from a machine: nothing outside the repository, and
no system program it does not name.

A test that drives a system program skips, naming the Debian package, when the program is
missing; with ``MQKIT_REQUIRE_SYSTEM_PROGRAMS`` set (``.ci/run`` sets it) it fails instead.
"""

from __future__ import annotations

import re

import pytest
from support.system import STRICT, require_programs

from .conftest import ROOT

ABSENT = "mqkit-no-such-program-x"


def test_a_missing_program_skips_naming_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT, raising=False)
    with pytest.raises(pytest.skip.Exception, match="Debian package mosquitto-clients"):
        require_programs("mosquitto-clients", "sh", ABSENT)


def test_a_missing_program_fails_when_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{ABSENT} from the Debian package pkg"):
        require_programs("pkg", ABSENT)


def test_present_programs_pass_strict_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("1", "0", ""):
        monkeypatch.setenv(STRICT, value)
        require_programs("coreutils", "sh", "ls")  # returns: nothing is skipped


def test_ci_turns_missing_programs_into_failures() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"^export {STRICT}=1$", ci, re.MULTILINE)
    # Not an MQKIT_ variable: Config.from_env() refuses the MQKIT_ names it does not know, and
    # the docs' examples read the environment CI runs them in.
    assert not STRICT.startswith("MQKIT_")


def test_no_test_reads_outside_the_repository() -> None:
    """No test names a path beside the clone (``../shared`` is there on CI, not for a user)."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("*.py")
        if re.search(r"ROOT\.parent|\.\./shared|/work/shared", path.read_text(encoding="utf-8"))
        and path.name != "test_fresh_machine.py"
    ]
    assert offenders == []
