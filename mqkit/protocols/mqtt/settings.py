"""The ``[mqtt]`` settings section of the MQTT gateway (``MQKIT_MQTT_<FIELD>`` variables).

The seed's ``enable_mqtt`` and ``mqtt_port`` stay on :class:`~mqkit.Config`; everything else
the gateway is configured with lives here::

    cfg = mqkit.Config(
        enable_mqtt=True,
        mqtt_port=1883,
        settings={"mqtt": MQTTSettings(max_inflight=64, password_file="users.txt")},
    )

or, in a TOML file, a ``[mqtt]`` table (``max_inflight = 64``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import attrs

from mqkit.core.convert import parse_seconds
from mqkit.core.settings import Settings
from mqkit.core.subscription import Backpressure

__all__ = ["MQTTSettings"]

_PORT = "must be between 0 (any free port) and 65535"


def _seconds(value: float | timedelta) -> Any:
    try:
        return parse_seconds(value)
    except ValueError:
        return value  # not a duration: the check names the field


def _backpressure(value: object) -> Any:
    """A ``Backpressure`` from its value (``"drop_newest"``); anything else is left to the check."""
    if isinstance(value, str):
        try:
            return Backpressure(value)
        except ValueError:
            pass
    return value


@attrs.frozen(slots=True, kw_only=True)
class MQTTSettings(Settings):
    """What the MQTT gateway is configured with, besides ``enable_mqtt`` and ``mqtt_port``."""

    host: str = "127.0.0.1"
    """Address the MQTT gateway listens on."""
    tls_port: int = 8883
    """The TLS listener's port (0: any free port); used with a certificate."""
    tls_cert: str = ""
    """PEM certificate (chain) of the TLS listener; with ``tls_key`` it turns TLS on."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""
    tls_ca: str = ""
    """CA bundle to verify client certificates with; when set, clients must present one."""
    password_file: str = ""
    """MQTT users: ``user:hash`` lines (salted scrypt/pbkdf2); see ``mqkit.protocols.mqtt.auth``."""
    acl_file: str = ""
    """Per-user ACLs for publish and subscribe topic filters; without one all is allowed."""
    allow_anonymous: bool = True
    """Whether clients without a user name may connect."""
    max_connections: int = 10_000
    """Most connections at once (0: no limit); the next one is refused."""
    max_packet_size: int = 1_048_576
    """Largest packet accepted, in bytes; a larger one closes that connection (0x95)."""
    max_inflight: int = 32
    """Receive Maximum: QoS 1/2 messages in flight per client, each way (3.1.1: to it)."""
    max_queued_messages: int = 1000
    """Buffer size of each MQTT subscription: what a slow or offline client may fall behind."""
    backpressure: Backpressure = attrs.field(
        default=Backpressure.DROP_OLDEST, converter=_backpressure
    )
    """What a full MQTT subscription buffer does: a ``Backpressure`` value."""
    topic_alias_maximum: int = 10
    """Topic aliases an MQTT 5 client may use towards the gateway (0: none)."""
    max_keep_alive: int = 0
    """Cap on keep-alive seconds (0: the client's value; MQTT 5 is told the cap)."""
    connect_timeout: float = attrs.field(default=10.0, converter=_seconds)
    """Seconds a new connection has to complete CONNECT."""

    def rules(self) -> Iterable[tuple[str, bool, str]]:
        """The gateway's checks (see :meth:`mqkit.Settings.rules`)."""
        return [
            ("tls_port", not 0 <= self.tls_port <= 65535, _PORT),
            (
                "tls_key",
                bool(self.tls_cert) != bool(self.tls_key),
                "and tls_cert must be given together",
            ),
            ("max_connections", self.max_connections < 0, "cannot be negative"),
            (
                "max_packet_size",
                not 32 <= self.max_packet_size <= 268_435_460,
                "must be between 32 and 268435460 bytes",
            ),
            ("max_inflight", not 1 <= self.max_inflight <= 65535, "must be 1..65535"),
            ("max_queued_messages", self.max_queued_messages < 1, "must be at least 1"),
            (
                "topic_alias_maximum",
                not 0 <= self.topic_alias_maximum <= 65535,
                "must be 0..65535",
            ),
            ("max_keep_alive", not 0 <= self.max_keep_alive <= 65535, "must be 0..65535"),
            ("connect_timeout", self.connect_timeout <= 0, "must be positive"),
            ("host", not self.host.strip(), "cannot be empty"),
        ]
