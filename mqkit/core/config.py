"""Broker configuration: the seed's ``Config`` in snake_case, with the seed's defaults.

``Config()`` equals the seed's ``DefaultConfig()``. Durations are float seconds (a ``timedelta``
is accepted); lists are tuples. ``validate()`` checks in the seed's order and raises
:class:`~mqkit.InvalidConfigError` naming the field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import attrs

from mqkit.core.convert import converter, describe_structure_error, parse_seconds, parse_str_tuple
from mqkit.core.errors import InvalidConfigError

__all__ = ["Config"]

DEFAULT_BUFFER_SIZE = 16
MAX_TOPIC_LENGTH = 1024


def _seconds(value: float | timedelta) -> Any:
    try:
        return parse_seconds(value)
    except ValueError:
        return value  # not a duration: validate() names the field (not a bare ValueError here)


def _strs(value: Any) -> tuple[str, ...]:
    return parse_str_tuple(value)


def _duration(default: float) -> Any:
    return attrs.field(default=default, converter=_seconds)


def _names(default: tuple[str, ...] = ()) -> Any:
    return attrs.field(default=default, converter=_strs)


def _type_name(kind: object) -> str:
    """A field's annotation as written: a string until cattrs resolves it to the class."""
    if isinstance(kind, type):
        return kind.__name__
    return str(kind)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond a float's range
        return False


_FIELD_TYPES: dict[str, Callable[[object], bool]] = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "tuple[str, ...]": lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v),
}


@attrs.frozen(slots=True, kw_only=True)
class Config:
    """Everything a broker is configured with. Build one, then ``Broker(config)``.

    The seed's fields keep the seed's defaults; mqkit adds ``max_ack_retries``,
    ``max_dead_letters``, the persistence retention bounds, the protocol hosts and the plugin
    selection (``plugins``, ``disable_plugins``, ``autoload_plugins``).
    """

    # --- the seed's fields ---------------------------------------------------------------
    enable_health_check: bool = True
    max_topics: int = 0
    max_subscribers: int = 0
    default_buffer_size: int = DEFAULT_BUFFER_SIZE
    enable_metrics: bool = True
    health_check_interval: float = _duration(30.0)
    message_ttl: float = _duration(0.0)
    enable_priority_queue: bool = True
    enable_ack_support: bool = False
    default_ack_timeout: float = _duration(30.0)
    max_memory_usage: int = 0
    enable_cluster: bool = False
    cluster_node_id: str = ""
    cluster_nodes: tuple[str, ...] = _names()
    cluster_replication_factor: int = 1
    cluster_sync_interval: float = _duration(5.0)
    enable_persistence: bool = False
    persistence_path: str = ""
    enable_dead_letter_queue: bool = False
    dead_letter_topic: str = ""
    enable_transactions: bool = False
    transaction_timeout: float = _duration(30.0)
    enable_mqtt: bool = False
    mqtt_port: int = 1883
    enable_amqp: bool = False
    amqp_port: int = 5672
    # --- what mqkit adds -----------------------------------------------------------------
    max_ack_retries: int = 3
    max_dead_letters: int = 10_000
    persistence_max_messages: int = 100_000
    persistence_max_age: float = _duration(7 * 24 * 3600.0)
    mqtt_host: str = "127.0.0.1"
    amqp_host: str = "127.0.0.1"
    # --- the MQTT gateway (the ``mqtt`` plugin; see mqkit/protocols/mqtt) ----------------
    mqtt_tls_port: int = 8883
    """The MQTT gateway's TLS listener port (0: any free port); used with a certificate."""
    mqtt_tls_cert: str = ""
    """PEM certificate (chain) of the MQTT TLS listener; with ``mqtt_tls_key`` it turns TLS on."""
    mqtt_tls_key: str = ""
    """PEM private key of ``mqtt_tls_cert``."""
    mqtt_tls_ca: str = ""
    """CA bundle to verify MQTT client certificates with; when set, clients must present one."""
    mqtt_password_file: str = ""
    """MQTT users: ``user:hash`` lines (salted scrypt/pbkdf2); see ``mqkit.protocols.mqtt.auth``."""
    mqtt_acl_file: str = ""
    """Per-user MQTT ACLs for publish and subscribe topic filters; without one all is allowed."""
    mqtt_allow_anonymous: bool = True
    """Whether MQTT clients without a user name may connect."""
    mqtt_max_connections: int = 10_000
    """Most MQTT connections at once (0: no limit); the next one is refused."""
    mqtt_max_packet_size: int = 1_048_576
    """Largest MQTT packet accepted, in bytes; a larger one closes that connection (0x95)."""
    mqtt_max_inflight: int = 32
    """MQTT Receive Maximum: QoS 1/2 messages in flight per client, each way (3.1.1: to it)."""
    mqtt_max_queued_messages: int = 1000
    """Buffer size of each MQTT subscription: what a slow or offline client may fall behind."""
    mqtt_backpressure: str = "drop_oldest"
    """What a full MQTT subscription buffer does: a ``Backpressure`` value."""
    mqtt_topic_alias_maximum: int = 10
    """Topic aliases an MQTT 5 client may use towards the gateway (0: none)."""
    mqtt_max_keep_alive: int = 0
    """Cap on MQTT keep-alive seconds (0: the client's value; MQTT 5 is told the cap)."""
    mqtt_connect_timeout: float = _duration(10.0)
    """Seconds a new MQTT connection has to complete CONNECT."""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    plugins: tuple[str, ...] = _names()
    disable_plugins: tuple[str, ...] = _names()
    autoload_plugins: bool = False

    def validate(self) -> None:
        """Raise :class:`~mqkit.InvalidConfigError` for the first invalid field, in seed order.

        Field types are checked first (``Config(max_topics="3")`` names ``max_topics``; a
        duration must be a finite number: NaN and infinity are refused), then the seed's rules.
        """
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            kind = _type_name(field.type)
            expected = _FIELD_TYPES.get(kind)
            if expected is not None and not expected(value):
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: {field.name} must be {kind}, "
                    f"not {type(value).__name__} {value!r}",
                    field=field.name,
                )
            if kind == "float" and not _finite(value):
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: {field.name} must be a finite number of "
                    f"seconds, not {value!r}",
                    field=field.name,
                )
        for field, bad, why in self._rules():
            if bad:
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: {field} {why}", field=field
                )

    def _rules(self) -> list[tuple[str, bool, str]]:
        return [
            ("default_buffer_size", self.default_buffer_size <= 0, "must be positive"),
            ("health_check_interval", self.health_check_interval < 0, "cannot be negative"),
            ("max_topics", self.max_topics < 0, "cannot be negative"),
            ("max_subscribers", self.max_subscribers < 0, "cannot be negative"),
            (
                "cluster_node_id",
                self.enable_cluster and not self.cluster_node_id.strip(),
                "is required when cluster mode is enabled",
            ),
            (
                "cluster_replication_factor",
                self.enable_cluster and self.cluster_replication_factor < 1,
                "must be at least 1",
            ),
            (
                "cluster_sync_interval",
                self.enable_cluster and self.cluster_sync_interval < 0,
                "cannot be negative",
            ),
            (
                "persistence_path",
                self.enable_persistence and not self.persistence_path.strip(),
                "is required when persistence is enabled",
            ),
            (
                "dead_letter_topic",
                self.enable_dead_letter_queue and not self.dead_letter_topic.strip(),
                "is required when dead letter queue is enabled",
            ),
            (
                "dead_letter_topic",
                len(self.dead_letter_topic.strip().encode()) > MAX_TOPIC_LENGTH,
                f"is longer than {MAX_TOPIC_LENGTH} bytes",
            ),
            (
                "default_ack_timeout",
                self.enable_ack_support and self.default_ack_timeout < 0,
                "cannot be negative",
            ),
            (
                "transaction_timeout",
                self.enable_transactions and self.transaction_timeout < 0,
                "cannot be negative",
            ),
            (
                "mqtt_port",
                self.enable_mqtt and not 0 <= self.mqtt_port <= 65535,
                "must be between 0 (any free port) and 65535",
            ),
            (
                "amqp_port",
                self.enable_amqp and not 0 <= self.amqp_port <= 65535,
                "must be between 0 (any free port) and 65535",
            ),
            (
                "http_port",
                not 0 <= self.http_port <= 65535,
                "must be between 0 (any free port) and 65535",
            ),
            ("http_host", not self.http_host.strip(), "cannot be empty"),
            ("message_ttl", self.message_ttl < 0, "cannot be negative"),
            ("max_memory_usage", self.max_memory_usage < 0, "cannot be negative"),
            ("max_ack_retries", self.max_ack_retries < 0, "cannot be negative"),
            ("max_dead_letters", self.max_dead_letters < 1, "must be at least 1"),
            ("persistence_max_messages", self.persistence_max_messages < 1, "must be at least 1"),
            ("persistence_max_age", self.persistence_max_age <= 0, "must be positive"),
            *self._mqtt_rules(),
        ]

    def _mqtt_rules(self) -> list[tuple[str, bool, str]]:
        """The MQTT gateway's fields (checked when ``enable_mqtt`` is on)."""
        on = self.enable_mqtt
        return [
            (
                "mqtt_tls_port",
                on and not 0 <= self.mqtt_tls_port <= 65535,
                "must be between 0 (any free port) and 65535",
            ),
            (
                "mqtt_tls_key",
                on and bool(self.mqtt_tls_cert) != bool(self.mqtt_tls_key),
                "and mqtt_tls_cert must be given together",
            ),
            ("mqtt_max_connections", self.mqtt_max_connections < 0, "cannot be negative"),
            (
                "mqtt_max_packet_size",
                not 32 <= self.mqtt_max_packet_size <= 268_435_460,
                "must be between 32 and 268435460 bytes",
            ),
            ("mqtt_max_inflight", not 1 <= self.mqtt_max_inflight <= 65535, "must be 1..65535"),
            ("mqtt_max_queued_messages", self.mqtt_max_queued_messages < 1, "must be at least 1"),
            (
                "mqtt_backpressure",
                self.mqtt_backpressure
                not in ("drop_oldest", "drop_newest", "block_with_timeout", "close_subscriber"),
                "must be drop_oldest, drop_newest, block_with_timeout or close_subscriber",
            ),
            (
                "mqtt_topic_alias_maximum",
                not 0 <= self.mqtt_topic_alias_maximum <= 65535,
                "must be 0..65535",
            ),
            ("mqtt_max_keep_alive", not 0 <= self.mqtt_max_keep_alive <= 65535, "must be 0..65535"),
            ("mqtt_connect_timeout", self.mqtt_connect_timeout <= 0, "must be positive"),
        ]

    def replace(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied (``attrs.evolve``), not yet validated."""
        try:
            return attrs.evolve(self, **changes)
        except TypeError as exc:
            raise InvalidConfigError.because(str(exc)) from exc

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], *, source: str = "") -> Config:
        """Build a config from a mapping of field names to values; unknown keys are errors.

        ``source`` (a file name, say) is named in error messages. The result is validated.
        """
        where = f" (in {source})" if source else ""
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted((k for k in mapping if k not in known), key=str)
        if unknown:
            key = str(unknown[0])
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: unknown key {key!r}{where}", field=key
            )
        try:
            config = converter.structure(dict(mapping), cls)
        except Exception as exc:
            text, field = describe_structure_error(exc)
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: {text}{where}", field=field
            ) from None
        try:
            config.validate()
        except InvalidConfigError as exc:
            if not where:
                raise
            raise InvalidConfigError(f"{exc.message}{where}", field=exc.field) from None
        return config

    @classmethod
    def from_env(cls, prefix: str = "MQKIT_", environ: Mapping[str, str] | None = None) -> Config:
        """Build a config from ``<prefix><FIELD NAME IN UPPER CASE>`` environment variables.

        Booleans are ``true/false/1/0`` (in any case; ``yes`` or ``on`` is an error), durations
        seconds (finite: ``nan`` and ``inf`` are errors), lists comma-separated. Variables with
        the prefix that name no field are errors (a typo should not pass silently).
        """
        env = os.environ if environ is None else environ
        known = {f.name.upper(): f.name for f in attrs.fields(cls)}
        values: dict[str, str] = {}
        for key, value in env.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            if name not in known:
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: unknown environment variable {key}",
                    field=key,
                )
            values[known[name]] = value
        return cls.from_dict(values, source="environment")

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Config:
        """Build a config from a TOML file of field names to values (``mqkit.toml``).

        Keys are the field names (``max_topics = 1000``); durations are seconds, lists are
        arrays. Every error - a missing file, bad TOML, an unknown key, a bad value - is an
        :class:`~mqkit.InvalidConfigError` naming the key (when there is one) and the file.
        """
        import tomllib

        where = os.fspath(path)
        try:
            with open(where, "rb") as file:
                data = tomllib.load(file)
        except OSError as exc:
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: cannot read {where}: {exc.strerror or exc}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: {where} is not valid TOML: {exc}"
            ) from None
        try:
            return cls.from_dict(data, source=where)
        except InvalidConfigError as exc:
            if f"(in {where})" in exc.message:
                raise
            raise InvalidConfigError(f"{exc.message} (in {where})", field=exc.field) from None

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain data (the inverse of :meth:`from_dict`)."""
        data: dict[str, Any] = converter.unstructure(self)
        return data
