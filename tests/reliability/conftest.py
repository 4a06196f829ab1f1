"""The ``soak`` fixture: one trial's random generator and replay command."""

from __future__ import annotations

import pytest

from .soak import Soak, base_seed

SEED = base_seed()
"""One seed per test run (``MQKIT_SOAK_SEED`` when set), printed by every failing trial."""


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> Soak:
    """This trial's random source (the ``trial`` parameter numbers it)."""
    return Soak(SEED, int(request.node.callspec.params["trial"]), request.node.nodeid)
