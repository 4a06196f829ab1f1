"""Reliability trials: SIGKILL at random instants, MQTT sessions across a crash, the memory limit.

Every test here is marked ``soak`` and parametrized over its trials: a short run is part of
``python -m pytest``; ``MQKIT_SOAK_TRIALS=200 python -m pytest tests/reliability -m soak`` runs
200 trials of each. A failing trial prints its seed; ``MQKIT_SOAK_SEED=<seed>`` replays its
random choices (see ``soak.py`` and docs/guarantees.md).
"""
