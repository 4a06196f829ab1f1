"""mqkit's own tests use its test kit: make_broker, fake_clock and hook_recorder (opt-in).

``support.rabbitmq`` adds the session's ``rabbitmq`` fixture (a private RabbitMQ node).
"""

pytest_plugins = ["mqkit.testing", "support.rabbitmq"]
