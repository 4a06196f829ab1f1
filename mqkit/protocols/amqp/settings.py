"""The ``[amqp]`` settings section of the AMQP gateway (``MQKIT_AMQP_<FIELD>`` variables).

The seed's ``enable_amqp``, ``amqp_port`` and ``amqp_host`` stay on :class:`~mqkit.Config`;
everything else the gateway is configured with lives here::

    cfg = mqkit.Config(
        enable_amqp=True,
        amqp_port=5672,
        settings={"amqp": AMQPSettings(heartbeat=30, password_file="users.txt")},
    )

or, in a TOML file, an ``[amqp]`` table (``heartbeat = 30``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from mqkit.core.convert import parse_seconds
from mqkit.core.settings import Settings

__all__ = ["AMQPSettings"]


def _seconds(value: Any) -> Any:
    try:
        return parse_seconds(value)
    except ValueError:
        return value  # not a duration: the check names the field


def _names(value: object) -> Any:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


@attrs.frozen(slots=True, kw_only=True)
class AMQPSettings(Settings):
    """The AMQP gateway's settings, besides ``enable_amqp``, ``amqp_port`` and ``amqp_host``."""

    tls_port: int = 5671
    """The TLS listener's port (0: any free port); used with a certificate."""
    tls_cert: str = ""
    """PEM certificate (chain) of the TLS listener; with ``tls_key`` it turns TLS on."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""
    tls_ca: str = ""
    """CA bundle to verify client certificates with; when set, a client's certificate is
    verified, and clients must present one unless ``tls_fail_if_no_peer_cert`` is off."""
    tls_fail_if_no_peer_cert: bool = True
    """With ``tls_ca``: refuse a client without a certificate (RabbitMQ's
    ``ssl_options.fail_if_no_peer_cert``); off, such a client is let in and a presented
    certificate is still verified."""
    heartbeat: int = 60
    """Heartbeat seconds the server proposes in connection.tune (0: none); a client silent for
    two intervals is dropped."""
    frame_max: int = 131_072
    """Largest frame the server accepts and proposes, in bytes (at least 4096)."""
    channel_max: int = 2047
    """Most channels per connection the server proposes (1..65535)."""
    vhosts: tuple[str, ...] = attrs.field(default=("/",), converter=_names)
    """The virtual hosts clients may open (comma-separated in a variable)."""
    password_file: str = ""
    """Users, in the MQTT gateway's password file format (``user:hash`` lines, see
    ``python -m mqkit.protocols.mqtt.auth``); without one, only ``guest``/``guest`` logs in, as
    with a fresh RabbitMQ."""
    permissions_file: str = ""
    """Per-vhost permissions, RabbitMQ style: ``user vhost configure write read`` lines of
    regular expressions (see ``mqkit.protocols.amqp.auth.Permissions``); without one every user
    may do everything in every vhost."""
    max_connections: int = 10_000
    """Most connections at once (0: no limit); the next one is refused."""
    queue_max_length: int = 100_000
    """Buffer size of a queue without ``x-max-length``: what it holds before dropping its head."""
    memory_high_watermark: float = 0.9
    """With ``max_memory_usage`` set: past this fraction of it, clients that announced the
    ``connection.blocked`` capability get connection.blocked (connection.unblocked below
    ``memory_low_watermark``)."""
    memory_low_watermark: float = 0.8
    """The fraction of ``max_memory_usage`` below which blocked clients get unblocked."""
    connect_timeout: float = attrs.field(default=10.0, converter=_seconds)
    """Seconds a new connection has to complete the handshake (up to connection.open)."""

    def rules(self) -> Iterable[tuple[str, bool, str]]:
        """The gateway's checks (see :meth:`mqkit.Settings.rules`)."""
        return [
            ("tls_port", not 0 <= self.tls_port <= 65535, "must be between 0 and 65535"),
            (
                "tls_key",
                bool(self.tls_cert) != bool(self.tls_key),
                "and tls_cert must be given together",
            ),
            ("heartbeat", not 0 <= self.heartbeat <= 65535, "must be 0..65535 seconds"),
            ("frame_max", not 4096 <= self.frame_max <= 2**31 - 1, "must be 4096..2147483647"),
            ("channel_max", not 1 <= self.channel_max <= 65535, "must be 1..65535"),
            ("vhosts", not self.vhosts or not all(self.vhosts), "must name at least one vhost"),
            ("max_connections", self.max_connections < 0, "cannot be negative"),
            ("queue_max_length", self.queue_max_length < 1, "must be at least 1"),
            ("connect_timeout", self.connect_timeout <= 0, "must be positive"),
            (
                "memory_high_watermark",
                not 0 < self.memory_high_watermark <= 1,
                "must be a fraction above 0, at most 1",
            ),
            (
                "memory_low_watermark",
                not 0 < self.memory_low_watermark <= self.memory_high_watermark,
                "must be above 0, at most memory_high_watermark",
            ),
        ]
