"""Config: seed defaults, validation (messages, field, order), from_dict, from_env, to_dict."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mqkit

PREFIX = "mq: invalid configuration: "


def test_defaults_are_the_seed_defaults() -> None:
    cfg = mqkit.Config()
    seed = {
        "enable_health_check": True,
        "max_topics": 0,
        "max_subscribers": 0,
        "default_buffer_size": 16,
        "enable_metrics": True,
        "health_check_interval": 30.0,
        "message_ttl": 0.0,
        "enable_priority_queue": True,
        "enable_ack_support": False,
        "default_ack_timeout": 30.0,
        "max_memory_usage": 0,
        "enable_cluster": False,
        "cluster_node_id": "",
        "cluster_nodes": (),
        "cluster_replication_factor": 1,
        "cluster_sync_interval": 5.0,
        "enable_persistence": False,
        "persistence_path": "",
        "enable_dead_letter_queue": False,
        "dead_letter_topic": "",
        "enable_transactions": False,
        "transaction_timeout": 30.0,
        "enable_mqtt": False,
        "mqtt_port": 1883,
        "enable_amqp": False,
        "amqp_port": 5672,
        # mqkit's additions
        "max_ack_retries": 3,
        "max_dead_letters": 10_000,
        "persistence_max_messages": 100_000,
        "persistence_max_age": 7 * 24 * 3600.0,
        "plugins": (),
        "disable_plugins": (),
        "autoload_plugins": False,
    }
    for name, value in seed.items():
        assert getattr(cfg, name) == value, name
    cfg.validate()


def test_config_is_frozen_and_comparable() -> None:
    cfg = mqkit.Config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.max_topics = 3  # type: ignore[misc]
    assert cfg == mqkit.Config()
    assert cfg.replace(max_topics=3) == mqkit.Config(max_topics=3)
    assert cfg.max_topics == 0


def test_durations_accept_timedelta() -> None:
    cfg = mqkit.Config(
        health_check_interval=timedelta(minutes=1),
        transaction_timeout=timedelta(milliseconds=1500),
        message_ttl=2,
    )
    assert cfg.health_check_interval == 60.0
    assert cfg.transaction_timeout == 1.5
    assert cfg.message_ttl == 2.0
    assert isinstance(cfg.message_ttl, float)


def test_lists_become_tuples() -> None:
    cfg = mqkit.Config(cluster_nodes=["n2@h:1", "n3@h:2"], disable_plugins="ttl, priority")
    assert cfg.cluster_nodes == ("n2@h:1", "n3@h:2")
    assert cfg.disable_plugins == ("ttl", "priority")


def test_replace_rejects_unknown_fields() -> None:
    with pytest.raises(mqkit.InvalidConfigError):
        mqkit.Config().replace(no_such_field=1)


# -- validation --------------------------------------------------------------------------------

# (changes, field, message suffix) in the order of Config._rules
RULES: list[tuple[dict[str, Any], str, str]] = [
    ({"default_buffer_size": 0}, "default_buffer_size", "must be positive"),
    ({"health_check_interval": -1}, "health_check_interval", "cannot be negative"),
    ({"max_topics": -1}, "max_topics", "cannot be negative"),
    ({"max_subscribers": -1}, "max_subscribers", "cannot be negative"),
    (
        {"enable_cluster": True, "cluster_node_id": "   "},
        "cluster_node_id",
        "is required when cluster mode is enabled",
    ),
    (
        {"enable_cluster": True, "cluster_node_id": "n1", "cluster_replication_factor": 0},
        "cluster_replication_factor",
        "must be at least 1",
    ),
    (
        {"enable_cluster": True, "cluster_node_id": "n1", "cluster_sync_interval": -1},
        "cluster_sync_interval",
        "cannot be negative",
    ),
    (
        {"enable_persistence": True},
        "persistence_path",
        "is required when persistence is enabled",
    ),
    (
        {"enable_dead_letter_queue": True},
        "dead_letter_topic",
        "is required when dead letter queue is enabled",
    ),
    (
        {"dead_letter_topic": "d" * 1025},
        "dead_letter_topic",
        "is longer than 1024 bytes",
    ),
    (
        {"enable_ack_support": True, "default_ack_timeout": -1},
        "default_ack_timeout",
        "cannot be negative",
    ),
    (
        {"enable_transactions": True, "transaction_timeout": -1},
        "transaction_timeout",
        "cannot be negative",
    ),
    (
        {"enable_mqtt": True, "mqtt_port": 70000},
        "mqtt_port",
        "must be between 0 (any free port) and 65535",
    ),
    (
        {"enable_amqp": True, "amqp_port": -1},
        "amqp_port",
        "must be between 0 (any free port) and 65535",
    ),
    ({"message_ttl": -1}, "message_ttl", "cannot be negative"),
    ({"max_memory_usage": -1}, "max_memory_usage", "cannot be negative"),
    ({"max_ack_retries": -1}, "max_ack_retries", "cannot be negative"),
    ({"max_dead_letters": 0}, "max_dead_letters", "must be at least 1"),
    ({"persistence_max_messages": 0}, "persistence_max_messages", "must be at least 1"),
    ({"persistence_max_age": 0}, "persistence_max_age", "must be positive"),
]


@pytest.mark.parametrize(
    ("changes", "field", "suffix"), RULES, ids=[f"{r[1]}-{i}" for i, r in enumerate(RULES)]
)
def test_each_rule(changes: dict[str, Any], field: str, suffix: str) -> None:
    cfg = mqkit.Config(**changes)
    with pytest.raises(mqkit.InvalidConfigError) as info:
        cfg.validate()
    # The text names the value too (issue 16: a newcomer saw errors without it).
    assert str(info.value) == f"{PREFIX}{field} {suffix} (got {getattr(cfg, field)!r})"
    assert info.value.field == field
    # The broker refuses it at construction, with the same error.
    with pytest.raises(mqkit.InvalidConfigError) as at_build:
        mqkit.Broker(cfg)
    assert str(at_build.value) == str(info.value)


def test_rules_cover_every_rule_of_config() -> None:
    """RULES above mirrors Config's rules one for one, in order (update both together)."""
    assert [field for _, field, _ in RULES] == [rule[0] for rule in mqkit.Config()._rules()]


def test_seed_example_text() -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config(default_buffer_size=0).validate()
    assert str(info.value) == (
        "mq: invalid configuration: default_buffer_size must be positive (got 0)"
    )


def test_rules_fire_in_order() -> None:
    """With every field invalid, fixing the reported one reveals the next, in rule order."""
    everything_bad: dict[str, Any] = {}
    for changes, _, _ in RULES:
        everything_bad.update(changes)
    everything_bad["dead_letter_topic"] = ""  # "required" comes before "too long"
    everything_bad["cluster_node_id"] = ""
    fixes: dict[str, Any] = {
        "default_buffer_size": 16,
        "health_check_interval": 30,
        "max_topics": 0,
        "max_subscribers": 0,
        "cluster_node_id": "n1",
        "cluster_replication_factor": 1,
        "cluster_sync_interval": 5,
        "persistence_path": "/tmp/x",
        "default_ack_timeout": 30,
        "transaction_timeout": 30,
        "mqtt_port": 1883,
        "amqp_port": 5672,
        "message_ttl": 0,
        "max_memory_usage": 0,
        "max_ack_retries": 3,
        "max_dead_letters": 10,
        "persistence_max_messages": 10,
        "persistence_max_age": 10,
    }
    cfg = mqkit.Config(**everything_bad)
    reported = []
    dead_letter_fixes = iter(["d" * 1025, "dlq"])
    while True:
        try:
            cfg.validate()
        except mqkit.InvalidConfigError as exc:
            assert exc.field is not None
            reported.append(exc.field)
            value = next(dead_letter_fixes) if exc.field == "dead_letter_topic" else None
            cfg = cfg.replace(**{exc.field: value if value is not None else fixes[exc.field]})
            assert len(reported) <= len(RULES)
        else:
            break
    assert reported == [field for _, field, _ in RULES]


@pytest.mark.parametrize(
    "changes",
    [
        {"enable_cluster": True, "cluster_node_id": "node-1", "cluster_replication_factor": 2},
        {"enable_persistence": True, "persistence_path": "/tmp/mq-data"},
        {"enable_dead_letter_queue": True, "dead_letter_topic": "dlq"},
        {"enable_mqtt": True, "mqtt_port": 0},
        {"enable_amqp": True, "amqp_port": 65535},
        {"mqtt_port": 70000},  # only checked when MQTT is on
        {"default_ack_timeout": -1},  # only checked when ack support is on
        {"transaction_timeout": -1},  # only checked when transactions are on
        {"cluster_replication_factor": 0},  # only checked when cluster mode is on
        {"max_ack_retries": 0},
    ],
)
def test_valid_configs(changes: dict[str, Any]) -> None:
    mqkit.Config(**changes).validate()


def test_port_edges() -> None:
    for port in (-1, 65536, 70000):
        with pytest.raises(mqkit.InvalidConfigError, match="mqtt_port"):
            mqkit.Config(enable_mqtt=True, mqtt_port=port).validate()
    for port in (0, 1, 1883, 65535):
        mqkit.Config(enable_mqtt=True, mqtt_port=port).validate()


# -- from_dict ---------------------------------------------------------------------------------


def test_from_dict_basic() -> None:
    cfg = mqkit.Config.from_dict(
        {
            "default_buffer_size": 32,
            "enable_metrics": "false",
            "enable_health_check": "0",
            "enable_priority_queue": "TRUE",
            "max_topics": "7",
            "health_check_interval": timedelta(seconds=5),
            "transaction_timeout": "2.5",
            "cluster_nodes": "n2@h:1, n3@h:2",
            "disable_plugins": ["ttl"],
        }
    )
    assert cfg.default_buffer_size == 32
    assert cfg.enable_metrics is False
    assert cfg.enable_health_check is False
    assert cfg.enable_priority_queue is True
    assert cfg.max_topics == 7
    assert cfg.health_check_interval == 5.0
    assert cfg.transaction_timeout == 2.5
    assert cfg.cluster_nodes == ("n2@h:1", "n3@h:2")
    assert cfg.disable_plugins == ("ttl",)


def test_from_dict_empty_is_default() -> None:
    assert mqkit.Config.from_dict({}) == mqkit.Config()


@pytest.mark.parametrize(
    "mapping",
    [{"no_such_field": 1}, {"max_topics": 1, "no_such_field": 1}],
)
def test_from_dict_unknown_key_names_the_key(mapping: dict[str, Any]) -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_dict(mapping)
    assert str(info.value) == f"{PREFIX}unknown key 'no_such_field'"
    assert info.value.field == "no_such_field"


def test_from_dict_unknown_keys_reported_first_sorted() -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_dict({"zzz": 1, "bbb": 2, "max_topics": "x"})
    assert info.value.field == "bbb"


def test_from_dict_source_is_named() -> None:
    with pytest.raises(mqkit.InvalidConfigError, match=r"\(in broker\.toml\)"):
        mqkit.Config.from_dict({"bogus": 1}, source="broker.toml")
    with pytest.raises(mqkit.InvalidConfigError, match=r"\(in broker\.toml\)"):
        mqkit.Config.from_dict({"max_topics": "many"}, source="broker.toml")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_topics", "abc"),
        ("max_topics", True),  # a bool is not an int here
        ("max_topics", 1.5),
        ("enable_metrics", "maybe"),
        ("enable_metrics", 2),
        ("health_check_interval", "soon"),
        ("health_check_interval", True),
        ("cluster_nodes", 5),
        ("cluster_nodes", [1, 2]),
        ("cluster_node_id", 7),
    ],
)
def test_from_dict_wrong_type_names_the_field(field: str, value: object) -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_dict({field: value})
    assert info.value.field == field
    assert field in str(info.value)
    assert str(info.value).startswith(PREFIX)


def test_from_dict_validates() -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_dict({"default_buffer_size": 0})
    assert str(info.value) == f"{PREFIX}default_buffer_size must be positive (got 0)"
    assert info.value.field == "default_buffer_size"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("True", True),
        (" FALSE ", False),
    ],
)
def test_from_dict_bool_strings(text: str, value: bool) -> None:
    assert mqkit.Config.from_dict({"enable_transactions": text}).enable_transactions is value


def test_to_dict_round_trip() -> None:
    cfg = mqkit.Config(
        max_topics=3,
        cluster_nodes=("a", "b"),
        health_check_interval=timedelta(seconds=2),
        disable_plugins=("ttl",),
    )
    data = cfg.to_dict()
    assert data["max_topics"] == 3
    assert data["cluster_nodes"] == ["a", "b"]
    assert data["health_check_interval"] == 2.0
    assert mqkit.Config.from_dict(data) == cfg
    assert mqkit.Config.from_dict(mqkit.Config().to_dict()) == mqkit.Config()


# -- from_env ----------------------------------------------------------------------------------


def test_from_env_mapping() -> None:
    env = {
        "MQKIT_ENABLE_METRICS": "false",
        "MQKIT_ENABLE_TRANSACTIONS": "1",
        "MQKIT_ENABLE_HEALTH_CHECK": "0",
        "MQKIT_ENABLE_PRIORITY_QUEUE": "true",
        "MQKIT_MAX_TOPICS": "10",
        "MQKIT_HEALTH_CHECK_INTERVAL": "2.5",
        "MQKIT_CLUSTER_NODES": "n2@h:1,n3@h:2",
        "MQKIT_DISABLE_PLUGINS": "ttl,priority",
        "PATH": "/usr/bin",  # not ours: ignored
        "OTHER_MAX_TOPICS": "x",
    }
    cfg = mqkit.Config.from_env(environ=env)
    assert cfg.enable_metrics is False
    assert cfg.enable_transactions is True
    assert cfg.enable_health_check is False
    assert cfg.enable_priority_queue is True
    assert cfg.max_topics == 10
    assert cfg.health_check_interval == 2.5
    assert cfg.cluster_nodes == ("n2@h:1", "n3@h:2")
    assert cfg.disable_plugins == ("ttl", "priority")
    assert cfg.default_buffer_size == 16


def test_from_env_empty_is_default() -> None:
    assert mqkit.Config.from_env(environ={}) == mqkit.Config()
    assert mqkit.Config.from_env(environ={"HOME": "/root"}) == mqkit.Config()


def test_from_env_unknown_variable_is_an_error() -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_env(environ={"MQKIT_MAX_TOPIC": "3"})
    assert "MQKIT_MAX_TOPIC" in str(info.value)
    assert info.value.field == "MQKIT_MAX_TOPIC"


def test_from_env_bad_value_names_the_field() -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_env(environ={"MQKIT_MAX_TOPICS": "lots"})
    assert info.value.field == "max_topics"
    assert "environment" in str(info.value)
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_env(environ={"MQKIT_ENABLE_METRICS": "yes please"})
    assert info.value.field == "enable_metrics"


def test_from_env_validates() -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_env(environ={"MQKIT_DEFAULT_BUFFER_SIZE": "0"})
    assert info.value.field == "default_buffer_size"


def test_from_env_other_prefix() -> None:
    env = {"APP_MAX_TOPICS": "4", "MQKIT_BOGUS": "ignored with another prefix"}
    assert mqkit.Config.from_env("APP_", environ=env).max_topics == 4


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("MQKIT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MQKIT_MAX_SUBSCRIBERS", "5")
    monkeypatch.setenv("MQKIT_ENABLE_METRICS", "0")
    cfg = mqkit.Config.from_env()
    assert cfg.max_subscribers == 5
    assert cfg.enable_metrics is False


def test_from_env_is_case_sensitive_on_the_name() -> None:
    with pytest.raises(mqkit.InvalidConfigError):
        mqkit.Config.from_env(environ={"MQKIT_max_topics": "3"})


# -- numbers are finite (issue 13, point 14) -----------------------------------------------------

FLOAT_FIELDS = [f.name for f in attrs.fields(mqkit.Config) if f.type in (float, "float")]
INT_FIELDS = [f.name for f in attrs.fields(mqkit.Config) if f.type in (int, "int")]
NON_FINITE = [float("nan"), float("inf"), float("-inf")]
NON_FINITE_TEXT = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"]


def test_the_numeric_fields_are_found() -> None:
    # generated from the class: a new duration or limit is covered by the tests below
    assert {"transaction_timeout", "message_ttl", "persistence_max_age"} <= set(FLOAT_FIELDS)
    assert {"max_topics", "mqtt_port", "amqp_port"} <= set(INT_FIELDS)
    assert len(FLOAT_FIELDS) >= 6 and len(INT_FIELDS) >= 10


def assert_names(info: pytest.ExceptionInfo[mqkit.InvalidConfigError], field: str) -> None:
    assert info.value.field == field
    assert str(info.value).startswith(f"{PREFIX}{field} ")


@pytest.mark.parametrize("value", NON_FINITE, ids=repr)
@pytest.mark.parametrize("field", FLOAT_FIELDS + INT_FIELDS)
def test_a_non_finite_number_is_refused_in_code(field: str, value: float) -> None:
    config = mqkit.Config(**{field: value})  # built; refused by validate() and Broker()
    with pytest.raises(mqkit.InvalidConfigError) as info:
        config.validate()
    assert_names(info, field)
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Broker(config)
    assert_names(info, field)
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config().replace(**{field: value}).validate()
    assert_names(info, field)


@pytest.mark.parametrize("value", NON_FINITE, ids=repr)
@pytest.mark.parametrize("field", FLOAT_FIELDS + INT_FIELDS)
def test_a_non_finite_number_is_refused_from_a_mapping(field: str, value: float) -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_dict({field: value})
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize("text", NON_FINITE_TEXT)
@pytest.mark.parametrize("field", FLOAT_FIELDS + INT_FIELDS)
def test_a_non_finite_number_is_refused_from_the_environment(field: str, text: str) -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_env(environ={f"MQKIT_{field.upper()}": text})
    assert info.value.field == field
    assert "environment" in str(info.value)
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_dict({field: text})
    assert info.value.field == field


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "+inf"])
@pytest.mark.parametrize("field", FLOAT_FIELDS + INT_FIELDS)
def test_a_non_finite_number_is_refused_from_toml(field: str, text: str, tmp_path: Any) -> None:
    path = tmp_path / "mqkit.toml"
    path.write_text(f"{field} = {text}\n", encoding="utf-8")  # TOML's own nan and inf
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_toml(path)
    assert info.value.field == field
    assert str(path) in str(info.value)


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_a_duration_too_large_for_a_float_is_refused(field: str) -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config(**{field: 10**400}).validate()
    assert_names(info, field)
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_dict({field: 10**400})
    assert info.value.field == field


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_a_duration_that_is_no_number_is_named_by_validate(field: str) -> None:
    # the duration converter does not raise a bare ValueError from Config(...)
    for value in ("soon", None, [1]):
        with pytest.raises(mqkit.InvalidConfigError) as info:
            mqkit.Config(**{field: value}).validate()
        assert_names(info, field)


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_large_finite_durations_are_accepted(field: str) -> None:
    mqkit.Config(**{field: 1e9}).validate()
    assert mqkit.Config.from_dict({field: "86400.5"}).validate() is None


def test_update_config_refuses_a_non_finite_number_and_keeps_the_old() -> None:
    with mqkit.Broker(mqkit.Config(enable_transactions=True)) as broker:
        old = broker.config
        with pytest.raises(mqkit.InvalidConfigError) as info:
            broker.update_config(old.replace(transaction_timeout=float("nan")))
        assert info.value.field == "transaction_timeout"
        assert broker.config is old


def test_a_nan_transaction_timeout_no_longer_ends_every_transaction() -> None:
    # the example: with nan every transaction was rolled back at once
    with pytest.raises(mqkit.InvalidConfigError, match="transaction_timeout"):
        mqkit.Broker(mqkit.Config(enable_transactions=True, transaction_timeout=float("nan")))


# -- booleans are true/false/1/0 (issue 13, point 15) --------------------------------------------

BOOL_FIELDS = [f.name for f in attrs.fields(mqkit.Config) if f.type in (bool, "bool")]
# what the rules require once a feature is on (so that a true flag validates)
COMPANIONS = {"cluster_node_id": "n1", "persistence_path": "store", "dead_letter_topic": "dlq"}
NOT_BOOLEANS = ["yes", "no", "on", "off", "y", "n", "t", "f", "", " ", "2", "-1", "01", "1.0",
                "truee", "enable", "none", "null"]  # fmt: skip
NOT_BOOLEAN_VALUES: list[object] = [2, -1, 10, 0.0, 1.0, 0.5, None, [True], {"a": 1}]


def test_the_boolean_fields_are_found() -> None:
    assert {"enable_mqtt", "enable_persistence", "autoload_plugins"} <= set(BOOL_FIELDS)
    assert "enable_amqp" in BOOL_FIELDS


@pytest.mark.parametrize("text", NOT_BOOLEANS)
@pytest.mark.parametrize("field", BOOL_FIELDS)
def test_a_boolean_text_other_than_true_false_1_0_is_refused(field: str, text: str) -> None:
    for load in (
        lambda: mqkit.Config.from_dict({field: text}),
        lambda: mqkit.Config.from_env(environ={f"MQKIT_{field.upper()}": text}),
    ):
        with pytest.raises(mqkit.InvalidConfigError) as info:
            load()
        assert info.value.field == field
        assert field in str(info.value)
        assert repr(text) in str(info.value)  # the value, as given


@pytest.mark.parametrize("value", NOT_BOOLEAN_VALUES, ids=repr)
@pytest.mark.parametrize("field", BOOL_FIELDS)
def test_a_boolean_value_other_than_a_bool_0_or_1_is_refused(field: str, value: object) -> None:
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_dict({field: value})
    assert info.value.field == field
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config(**{field: value}).validate()
    assert info.value.field == field


@pytest.mark.parametrize("field", BOOL_FIELDS)
def test_a_boolean_text_is_refused_in_toml(field: str, tmp_path: Any) -> None:
    path = tmp_path / "mqkit.toml"
    for text in ('"yes"', '"on"', "2", "1.0"):
        path.write_text(f"{field} = {text}\n", encoding="utf-8")
        with pytest.raises(mqkit.InvalidConfigError) as info:
            mqkit.Config.from_toml(path)
        assert info.value.field == field
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("given", "value"),
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("false", False),
     ("1", True), ("0", False), ("TRUE", True), ("False", False), (" true\n", True)],
)  # fmt: skip
@pytest.mark.parametrize("field", BOOL_FIELDS)
def test_the_documented_booleans_are_accepted(field: str, given: object, value: bool) -> None:
    assert getattr(mqkit.Config.from_dict({**COMPANIONS, field: given}), field) is value
    if isinstance(given, str):
        environ = {f"MQKIT_{k.upper()}": v for k, v in COMPANIONS.items()}
        env = mqkit.Config.from_env(environ={**environ, f"MQKIT_{field.upper()}": given})
        assert getattr(env, field) is value


@pytest.mark.parametrize("field", BOOL_FIELDS)
def test_toml_booleans_are_accepted(field: str, tmp_path: Any) -> None:
    path = tmp_path / "mqkit.toml"
    for text, value in (("true", True), ("false", False), ('"1"', True), ("0", False)):
        companions = "".join(f'{k} = "{v}"\n' for k, v in COMPANIONS.items())
        path.write_text(f"{companions}{field} = {text}\n", encoding="utf-8")
        assert getattr(mqkit.Config.from_toml(path), field) is value


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=8))
def test_any_other_text_is_no_boolean(text: str) -> None:
    if text.strip().lower() in ("true", "false", "1", "0"):
        assert isinstance(mqkit.Config.from_dict({"enable_mqtt": text}).enable_mqtt, bool)
        return
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_dict({"enable_mqtt": text})
    assert info.value.field == "enable_mqtt"
