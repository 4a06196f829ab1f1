"""Plugins own their settings (issue 15, point 1): sections from code, TOML and the environment.

A plugin declares a settings class and a section name in its ``PluginInfo``; ``Broker(...)``
builds every known section (cattrs) and checks it, and the plugin reads it with
``broker.settings(cls)``. Errors name ``section.field`` and the bad value, at construction.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import pytest

import mqkit
from mqkit.protocols.mqtt import MQTTSettings

PREFIX = "mq: invalid configuration: "


@attrs.frozen(slots=True, kw_only=True)
class AuditSettings(mqkit.Settings):
    """A third-party plugin's section."""

    path: str = "audit.log"
    max_lines: int = 100

    def rules(self) -> list[tuple[str, bool, str]]:
        return [("max_lines", self.max_lines < 1, "must be at least 1")]


class AuditPlugin:
    """Reads its section when the broker starts."""

    plugin_info = mqkit.PluginInfo(name="audit", settings=AuditSettings, section="audit")

    def __init__(self) -> None:
        self.started_with: AuditSettings | None = None

    @mqkit.hookimpl
    def mqkit_broker_start(self, broker: mqkit.Broker) -> None:
        self.started_with = broker.settings(AuditSettings)


def test_a_section_given_in_code_is_what_the_plugin_reads() -> None:
    cfg = mqkit.Config(settings={"mqtt": MQTTSettings(max_inflight=64, host="0.0.0.0")})
    with mqkit.Broker(cfg) as broker:
        assert broker.settings(MQTTSettings).max_inflight == 64
        assert broker.settings(MQTTSettings).host == "0.0.0.0"


def test_a_section_not_given_has_its_defaults() -> None:
    with mqkit.Broker() as broker:
        assert broker.settings(MQTTSettings) == MQTTSettings()
    assert MQTTSettings().backpressure is mqkit.Backpressure.DROP_OLDEST


def test_a_mapping_is_structured_by_cattrs() -> None:
    cfg = mqkit.Config(settings={"mqtt": {"max_inflight": "64", "backpressure": "drop_newest"}})
    with mqkit.Broker(cfg) as broker:
        mqtt = broker.settings(MQTTSettings)
    assert (mqtt.max_inflight, mqtt.backpressure) == (64, mqkit.Backpressure.DROP_NEWEST)


def test_a_toml_table_is_a_section(tmp_path: Path) -> None:
    path = tmp_path / "mqkit.toml"
    path.write_text(
        "enable_mqtt = true\nmqtt_port = 0\n\n[mqtt]\nmax_inflight = 8\nconnect_timeout = 2.5\n"
        'backpressure = "close_subscriber"\n',
        encoding="utf-8",
    )
    cfg = mqkit.Config.from_toml(path)
    assert cfg.mqtt_port == 0
    with mqkit.Broker(cfg) as broker:
        mqtt = broker.settings(MQTTSettings)
    assert (mqtt.max_inflight, mqtt.connect_timeout) == (8, 2.5)
    assert mqtt.backpressure is mqkit.Backpressure.CLOSE_SUBSCRIBER


def test_environment_variables_fill_a_section() -> None:
    env = {
        "MQKIT_MQTT_MAX_INFLIGHT": "5",
        "MQKIT_MQTT_ALLOW_ANONYMOUS": "false",
        "MQKIT_MQTT_PORT": "0",  # the seed's field wins the clash
        "MQKIT_MQTT_TLS_PORT": "0",
    }
    cfg = mqkit.Config.from_env(environ=env)
    assert cfg.mqtt_port == 0
    with mqkit.Broker(cfg) as broker:
        mqtt = broker.settings(MQTTSettings)
    assert (mqtt.max_inflight, mqtt.allow_anonymous, mqtt.tls_port) == (5, False, 0)


def test_an_environment_variable_of_no_section_is_an_error() -> None:
    with pytest.raises(mqkit.InvalidConfigError, match="unknown environment variable MQKIT_NOPE_X"):
        mqkit.Config.from_env(environ={"MQKIT_NOPE_X": "1"})


def test_an_unknown_section_fails_the_broker_naming_it() -> None:
    cfg = mqkit.Config(settings={"mqtt_extra": {"x": 1}})
    cfg.validate()  # the config alone cannot know which plugins exist
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Broker(cfg)
    assert info.value.field == "mqtt_extra"
    assert "unknown settings section [mqtt_extra]" in str(info.value)
    assert "[mqtt]" in str(info.value)  # what exists


@pytest.mark.parametrize(
    ("section", "field", "value", "text"),
    [
        ({"max_inflite": 3}, "mqtt.max_inflite", "= 3", "unknown key mqtt.max_inflite"),
        ({"max_inflight": "many"}, "mqtt.max_inflight", "'many'", "mqtt.max_inflight"),
        ({"max_inflight": 0}, "mqtt.max_inflight", "(got 0)", "must be 1..65535"),
        ({"allow_anonymous": "yes"}, "mqtt.allow_anonymous", "'yes'", "boolean"),
        ({"backpressure": "drop_all"}, "mqtt.backpressure", "'drop_all'", "mqtt.backpressure"),
        ({"connect_timeout": "nan"}, "mqtt.connect_timeout", "nan", "finite"),
    ],
)
def test_a_bad_field_names_section_field_and_value(
    section: dict[str, Any], field: str, value: str, text: str
) -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Broker(mqkit.Config(settings={"mqtt": section}))
    message = str(info.value)
    assert info.value.field == field
    assert message.startswith(PREFIX) and field in message and value in message, message
    assert text in message, message


def test_a_bad_value_in_code_is_refused_at_construction() -> None:
    section = MQTTSettings(backpressure="drop_all", max_inflight=3)  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Broker(mqkit.Config(settings={"mqtt": section}))
    # the choices are the core's Backpressure values, not a copied list
    allowed = ", ".join(b.value for b in mqkit.Backpressure)
    assert str(info.value) == f"{PREFIX}mqtt.backpressure must be one of {allowed}, not 'drop_all'"
    with pytest.raises(mqkit.InvalidConfigError, match=r"mqtt\.max_inflight must be int"):
        mqkit.Broker(mqkit.Config(settings={"mqtt": MQTTSettings(max_inflight=3.5)}))  # type: ignore[arg-type]
    with pytest.raises(mqkit.InvalidConfigError, match="must be a MQTTSettings or a mapping"):
        mqkit.Broker(mqkit.Config(settings={"mqtt": 3}))


# (changes, field, why) for each rule of MQTTSettings, in order
MQTT_RULES: list[tuple[dict[str, Any], str, str]] = [
    ({"tls_port": 65536}, "tls_port", "must be between 0 (any free port) and 65535"),
    ({"tls_cert": "c.pem"}, "tls_key", "and tls_cert must be given together"),
    ({"max_connections": -1}, "max_connections", "cannot be negative"),
    ({"max_packet_size": 10}, "max_packet_size", "must be between 32 and 268435460 bytes"),
    ({"max_inflight": 0}, "max_inflight", "must be 1..65535"),
    ({"max_queued_messages": 0}, "max_queued_messages", "must be at least 1"),
    ({"topic_alias_maximum": -1}, "topic_alias_maximum", "must be 0..65535"),
    ({"max_keep_alive": 70000}, "max_keep_alive", "must be 0..65535"),
    ({"connect_timeout": 0}, "connect_timeout", "must be positive"),
    ({"host": " "}, "host", "cannot be empty"),
]


def test_the_rules_above_are_every_rule() -> None:
    assert [field for _, field, _ in MQTT_RULES] == [r[0] for r in MQTTSettings().rules()]


@pytest.mark.parametrize(("changes", "field", "why"), MQTT_RULES, ids=[r[1] for r in MQTT_RULES])
def test_each_mqtt_rule(changes: dict[str, Any], field: str, why: str) -> None:
    section = MQTTSettings(**changes)
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Broker(mqkit.Config(settings={"mqtt": section}))
    value = getattr(section, field)
    assert str(info.value) == f"{PREFIX}mqtt.{field} {why} (got {value!r})"
    assert info.value.field == f"mqtt.{field}"


def test_a_third_party_plugin_declares_and_reads_its_section() -> None:
    plugin = AuditPlugin()
    cfg = mqkit.Config(settings={"audit": {"path": "/var/log/a.log"}})
    with mqkit.Broker(cfg, plugins=[plugin]) as broker:
        assert broker.settings(AuditSettings) == AuditSettings(path="/var/log/a.log")
    assert plugin.started_with == AuditSettings(path="/var/log/a.log")
    # without the plugin, its section is unknown
    with pytest.raises(mqkit.InvalidConfigError, match=r"unknown settings section \[audit\]"):
        mqkit.Broker(cfg)


def test_a_bad_section_starts_no_plugin() -> None:
    plugin = AuditPlugin()
    cfg = mqkit.Config(settings={"audit": {"max_lines": 0}})
    with pytest.raises(mqkit.InvalidConfigError, match=r"audit\.max_lines must be at least 1"):
        mqkit.Broker(cfg, plugins=[plugin])
    assert plugin.started_with is None


def test_update_config_with_a_bad_section_changes_nothing() -> None:
    good = mqkit.Config(settings={"mqtt": {"max_inflight": 7}})
    with mqkit.Broker(good) as broker:
        with pytest.raises(mqkit.InvalidConfigError, match=r"mqtt\.max_inflight"):
            broker.update_config(mqkit.Config(settings={"mqtt": {"max_inflight": -1}}))
        assert broker.config == good
        assert broker.settings(MQTTSettings).max_inflight == 7
        broker.update_config(mqkit.Config(settings={"mqtt": {"max_inflight": 9}}))
        assert broker.settings(MQTTSettings).max_inflight == 9


def test_settings_of_a_class_no_plugin_declares_is_an_error() -> None:
    with mqkit.Broker() as broker, pytest.raises(mqkit.PluginError, match="AuditSettings"):
        broker.settings(AuditSettings)


def test_plugin_info_needs_settings_and_section_together() -> None:
    with pytest.raises(mqkit.PluginError, match="together"):
        mqkit.PluginInfo(name="x", settings=AuditSettings)
    with pytest.raises(mqkit.PluginError, match=r"subclass of mqkit\.Settings"):
        mqkit.PluginInfo(name="x", settings=int, section="x")  # type: ignore[arg-type]


def test_two_plugins_cannot_declare_one_section() -> None:
    class Other:
        plugin_info = mqkit.PluginInfo(name="other", settings=MQTTSettings, section="audit")

    with pytest.raises(mqkit.PluginError, match=r"both declare the settings section \[audit\]"):
        mqkit.Broker(plugins=[AuditPlugin(), Other()])


def test_sections_round_trip_and_the_config_stays_hashable() -> None:
    cfg = mqkit.Config(max_topics=3, settings={"mqtt": MQTTSettings(max_inflight=4)})
    data = cfg.to_dict()
    assert data["mqtt"]["max_inflight"] == 4 and data["mqtt"]["backpressure"] == "drop_oldest"
    again = mqkit.Config.from_dict(data)
    with mqkit.Broker(again) as broker:
        assert broker.settings(MQTTSettings) == MQTTSettings(max_inflight=4)
    assert isinstance(hash(cfg), int)
    assert cfg == mqkit.Config(max_topics=3, settings={"mqtt": MQTTSettings(max_inflight=4)})


def test_a_settings_value_that_is_no_mapping_is_refused() -> None:
    with pytest.raises(mqkit.InvalidConfigError, match="settings must be a mapping"):
        mqkit.Config(settings=3).validate()  # type: ignore[arg-type]
    assert math.isfinite(MQTTSettings().connect_timeout)
