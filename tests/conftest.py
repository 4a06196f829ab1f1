"""mqkit's own tests use its test kit: make_broker, fake_clock and hook_recorder (opt-in)."""

pytest_plugins = ["mqkit.testing"]
