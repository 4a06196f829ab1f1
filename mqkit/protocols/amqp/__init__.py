"""The AMQP 0-9-1 gateway of mqkit (the ``amqp`` plugin, ``pip install mqkit[amqp]``).

Turn it on with ``Config(enable_amqp=True, amqp_port=...)`` (its other settings: the ``[amqp]``
section, :class:`AMQPSettings`) and call ``broker.start_amqp_server()``; see
:mod:`mqkit.protocols.amqp.plugin` for the server, :mod:`.mapping` for how AMQP messages and
:class:`~mqkit.Message` map onto each other. Frames are marshalled by pamqp.

Importing the package imports none of its modules (``AMQPPlugin`` is imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mqkit.protocols.amqp.plugin import AMQPPlugin
    from mqkit.protocols.amqp.settings import AMQPSettings

__all__ = ["AMQPPlugin", "AMQPSettings"]


def __getattr__(name: str) -> object:
    if name == "AMQPPlugin":
        from mqkit.protocols.amqp.plugin import AMQPPlugin

        return AMQPPlugin
    if name == "AMQPSettings":
        from mqkit.protocols.amqp.settings import AMQPSettings

        return AMQPSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
