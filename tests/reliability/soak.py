"""How long the reliability trials run, and the seed that makes a failing trial replayable.

Each trial test is parametrized over ``trials(default)``: a short run by default (it runs in CI
as part of ``python -m pytest``); ``MQKIT_SOAK_TRIALS=N`` runs N trials of each instead, e.g.
``MQKIT_SOAK_TRIALS=200 python -m pytest tests/reliability -m soak``. Every trial draws its
random choices from ``MQKIT_SOAK_SEED`` (random when unset) and its number; a failure message
says how to replay it.
"""

from __future__ import annotations

import os
import random

import attrs

TRIALS_VARIABLE = "MQKIT_SOAK_TRIALS"
SEED_VARIABLE = "MQKIT_SOAK_SEED"


def trials(default: int) -> list[int]:
    """The trial numbers to run: ``MQKIT_SOAK_TRIALS`` of them, else ``default``."""
    raw = os.environ.get(TRIALS_VARIABLE, "").strip()
    if not raw:
        return list(range(default))
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{TRIALS_VARIABLE} must be a positive integer, not {raw!r}")
    return list(range(int(raw)))


def base_seed() -> int:
    """``MQKIT_SOAK_SEED``, or a fresh random seed for this run."""
    raw = os.environ.get(SEED_VARIABLE, "").strip()
    if not raw:
        return random.SystemRandom().randrange(1 << 32)
    if not raw.isdigit():
        raise ValueError(f"{SEED_VARIABLE} must be a non-negative integer, not {raw!r}")
    return int(raw)


@attrs.frozen
class Soak:
    """One trial's random source, and how to replay it."""

    seed: int
    trial: int
    nodeid: str

    def rng(self) -> random.Random:
        """A new generator for this trial (the same seed and trial: the same choices)."""
        return random.Random(self.seed * 1_000_003 + self.trial)

    @property
    def replay(self) -> str:
        """The command that replays this trial's choices."""
        return f"seed {self.seed}: replay with {SEED_VARIABLE}={self.seed} pytest '{self.nodeid}'"
