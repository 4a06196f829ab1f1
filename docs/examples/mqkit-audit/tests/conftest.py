"""The tests opt in to mqkit's test kit: the make_broker, fake_clock and hook_recorder fixtures."""

pytest_plugins = ["mqkit.testing"]
