"""The MQTT 3.1.1 / 5.0 gateway of mqkit (the ``mqtt`` plugin, ``pip install mqkit[mqtt]``).

Turn it on with ``Config(enable_mqtt=True, mqtt_port=...)`` (its other settings: the ``[mqtt]``
section, :class:`MQTTSettings`) and call
``broker.start_mqtt_server()``; see :mod:`mqkit.protocols.mqtt.plugin` for the server,
:mod:`.mapping` for how MQTT messages and :class:`~mqkit.Message` map onto each other, and
:mod:`.auth` for the password and ACL files.

Importing the package imports none of its modules: ``python -m mqkit.protocols.mqtt.auth``
then runs ``auth`` once, as ``__main__`` (``MQTTPlugin`` is imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mqkit.protocols.mqtt.plugin import MQTTPlugin
    from mqkit.protocols.mqtt.settings import MQTTSettings

__all__ = ["MQTTPlugin", "MQTTSettings"]


def __getattr__(name: str) -> object:
    if name == "MQTTPlugin":
        from mqkit.protocols.mqtt.plugin import MQTTPlugin

        return MQTTPlugin
    if name == "MQTTSettings":
        from mqkit.protocols.mqtt.settings import MQTTSettings

        return MQTTSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
