"""Broker configuration: the seed's ``Config`` in snake_case, with the seed's defaults.

``Config()`` equals the seed's ``DefaultConfig()``. Durations are float seconds (a ``timedelta``
is accepted); lists are tuples. ``validate()`` checks in the seed's order and raises
:class:`~mqkit.InvalidConfigError` naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import attrs

from mqkit.core.convert import converter, describe_structure_error, parse_seconds, parse_str_tuple
from mqkit.core.errors import InvalidConfigError
from mqkit.core.settings import check_field_types

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


def _switch(plugin: str) -> Any:
    """A seed flag that switches on the built-in plugin ``plugin`` (for "not available")."""
    return attrs.field(default=False, metadata={"plugin": plugin})


def _sections(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType(dict(value))
    return value  # not a mapping: validate() says so


@attrs.frozen(slots=True, kw_only=True)
class Config:
    """Everything a broker is configured with. Build one, then ``Broker(config)``.

    The seed's fields keep the seed's defaults; mqkit adds ``max_ack_retries``,
    ``max_dead_letters``, the persistence retention bounds, ``amqp_host``, the plugin
    selection (``plugins``, ``disable_plugins``, ``autoload_plugins``) and the plugins' own
    settings sections (``settings``: ``[mqtt]``, ``[http]``, a third-party plugin's table).
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
    enable_cluster: bool = _switch("cluster")
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
    enable_mqtt: bool = _switch("mqtt")
    mqtt_port: int = 1883
    enable_amqp: bool = _switch("amqp")
    amqp_port: int = 5672
    # --- what mqkit adds -----------------------------------------------------------------
    max_ack_retries: int = 3
    max_dead_letters: int = 10_000
    persistence_max_messages: int = 100_000
    persistence_max_age: float = _duration(7 * 24 * 3600.0)
    amqp_host: str = "127.0.0.1"
    plugins: tuple[str, ...] = _names()
    disable_plugins: tuple[str, ...] = _names()
    autoload_plugins: bool = False
    settings: Mapping[str, object] = attrs.field(
        factory=lambda: MappingProxyType({}), converter=_sections, hash=False
    )
    """Plugins' settings sections by name (``{"mqtt": MQTTSettings(...)}``, or a mapping of
    a section's fields, as a TOML table gives it); checked by ``Broker(...)``, which knows
    which plugin owns which section."""

    def validate(self) -> None:
        """Raise :class:`~mqkit.InvalidConfigError` for the first invalid field, in seed order.

        Field types are checked first (``Config(max_topics="3")`` names ``max_topics``; a
        duration must be a finite number: NaN and infinity are refused), then the seed's rules.
        """
        check_field_types(self)
        if not isinstance(self.settings, Mapping) or not all(
            isinstance(key, str) for key in self.settings
        ):
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: settings must be a mapping of section names "
                f"to sections, not {self.settings!r}",
                field="settings",
            )
        for field, bad, why in self._rules():
            if bad:
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: {field} {why} (got {getattr(self, field)!r})",
                    field=field,
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
            ("message_ttl", self.message_ttl < 0, "cannot be negative"),
            ("max_memory_usage", self.max_memory_usage < 0, "cannot be negative"),
            ("max_ack_retries", self.max_ack_retries < 0, "cannot be negative"),
            ("max_dead_letters", self.max_dead_letters < 1, "must be at least 1"),
            ("persistence_max_messages", self.persistence_max_messages < 1, "must be at least 1"),
            ("persistence_max_age", self.persistence_max_age <= 0, "must be positive"),
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

        A key that names no field but holds a mapping is a plugin's settings section (a TOML
        table, ``[mqtt]``); the broker checks it. ``source`` (a file name, say) is named in
        error messages. The result is validated.
        """
        where = f" (in {source})" if source else ""
        known = {f.name for f in attrs.fields(cls)}
        fields = {k: v for k, v in mapping.items() if k in known and k != "settings"}
        sections = dict(mapping.get("settings") or {})
        unknown = []
        for key, value in mapping.items():
            if key in known:
                continue
            if isinstance(key, str) and isinstance(value, Mapping):
                sections[key] = value
            else:
                unknown.append(key)
        if unknown:
            key = str(sorted(unknown, key=str)[0])
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: unknown key {key!r}{where}", field=key
            )
        try:
            config = converter.structure(fields, cls)
        except Exception as exc:
            text, field = describe_structure_error(exc)
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: {text}{where}", field=field
            ) from None
        if sections:
            config = attrs.evolve(config, settings=sections)
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
        seconds (finite: ``nan`` and ``inf`` are errors), lists comma-separated. A plugin's
        settings section is filled from ``<prefix><SECTION>_<FIELD>`` (``MQKIT_MQTT_TLS_PORT``)
        when an installed plugin declares that section; a seed field wins a clash
        (``MQKIT_MQTT_PORT`` is ``mqtt_port``). Variables with the prefix that name no field
        are errors (a typo should not pass silently).
        """
        from mqkit.core.plugins import installed_sections  # plugins imports this module

        env = os.environ if environ is None else environ
        known = {f.name.upper(): f.name for f in attrs.fields(cls) if f.name != "settings"}
        values: dict[str, Any] = {}
        sections: list[str] | None = None
        for key, value in env.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            if name in known:
                values[known[name]] = value
                continue
            if sections is None:
                sections = sorted(installed_sections(), key=len, reverse=True)
            section = next((s for s in sections if name.startswith(f"{s.upper()}_")), None)
            if section is None:
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: unknown environment variable {key}",
                    field=key,
                )
            field = name[len(section) + 1 :].lower()
            values.setdefault(section, {})[field] = value
        return cls.from_dict(values, source="environment")

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Config:
        """Build a config from a TOML file of field names to values (``mqkit.toml``).

        Keys are the field names (``max_topics = 1000``); durations are seconds, lists are
        arrays; a table (``[mqtt]``) is a plugin's settings section, checked by ``Broker(...)``.
        Every other error - a missing file, bad TOML, an unknown key, a bad value - is an
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
        """Return the config as plain data (the inverse of :meth:`from_dict`).

        Each settings section is a nested mapping under its name, as in a TOML file.
        """
        data: dict[str, Any] = converter.unstructure(attrs.evolve(self, settings={}))
        del data["settings"]
        for section, value in self.settings.items():
            data[section] = converter.unstructure(value)
        return data
