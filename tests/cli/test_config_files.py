"""``Config.from_toml``: config files for ``mqkit serve`` and everyone else."""

from __future__ import annotations

from pathlib import Path

import pytest

import mqkit

from .conftest import write_toml


def test_from_toml_reads_fields(tmp_path: Path) -> None:
    path = tmp_path / "mqkit.toml"
    path.write_text(
        """
# a broker with a dead letter queue
enable_dead_letter_queue = true
dead_letter_topic = "dlq"
default_buffer_size = 64
health_check_interval = 2.5
cluster_nodes = ["a:1", "b:2"]

[http]
port = 9100
""",
        encoding="utf-8",
    )
    cfg = mqkit.Config.from_toml(path)
    assert cfg == mqkit.Config(
        enable_dead_letter_queue=True,
        dead_letter_topic="dlq",
        default_buffer_size=64,
        health_check_interval=2.5,
        cluster_nodes=("a:1", "b:2"),
        settings={"http": {"port": 9100}},
    )
    assert mqkit.Config.from_toml(str(path)) == cfg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_topicz = 3\n", "max_topicz"),
        ("max_topics = 'many'\n", "max_topics"),
        ("max_topics = -1\n", "max_topics"),
        ("enable_persistence = true\n", "persistence_path"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(mqkit.InvalidConfigError) as info:
        mqkit.Config.from_toml(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.field == key


def test_malformed_or_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("max_topics = [\n", encoding="utf-8")
    with pytest.raises(mqkit.InvalidConfigError, match=r"broken\.toml is not valid TOML"):
        mqkit.Config.from_toml(path)
    with pytest.raises(mqkit.InvalidConfigError, match=r"cannot read .*absent\.toml"):
        mqkit.Config.from_toml(tmp_path / "absent.toml")


def test_the_http_section_has_defaults_and_env(tmp_path: Path) -> None:
    from mqkit.service import HTTPSettings, Service

    def http(cfg: mqkit.Config) -> HTTPSettings:
        service = Service(cfg)
        try:
            return service.http
        finally:
            service.close()

    assert (http(mqkit.Config()).host, http(mqkit.Config()).port) == ("127.0.0.1", 8080)
    cfg = mqkit.Config.from_env(environ={"MQKIT_HTTP_PORT": "0"})
    assert http(cfg).port == 0
    assert http(mqkit.Config.from_toml(write_toml(tmp_path / "c.toml", http={"port": 0}))).port == 0
    with pytest.raises(mqkit.InvalidConfigError, match=r"http\.port must be .* \(got 65536\)"):
        Service(mqkit.Config(settings={"http": HTTPSettings(port=65536)}))
