"""Settings: defaults, environment and config file, coercion, the helpers."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from scorestream.settings import ConfigError, Settings, describe


def test_defaults() -> None:
    settings = Settings.load(environ={})
    assert settings.bootstrap == "localhost:9092"
    assert settings.topic_prefix == ""
    assert settings.topics_dir == "topics"
    assert settings.web_host == "127.0.0.1"
    assert settings.web_port == 6066
    assert settings.broker_dir == "var/kafka"
    assert settings.broker_port == 9092
    assert settings.kafka_cache == "~/.cache/scorestream"
    assert settings.security_protocol == "PLAINTEXT"


def test_environment_variables_are_coerced_to_the_field_types() -> None:
    settings = Settings.load(
        environ={
            "SCORESTREAM_BOOTSTRAP": "kafka:29092",
            "SCORESTREAM_BROKER_PORT": "9192",
            "SCORESTREAM_BROKER_DIR": "/tmp/b2",
            "SCORESTREAM_TICK_INTERVAL": "0.25",
            "SCORESTREAM_TOPIC_PREFIX": "t-1-",
            "UNRELATED": "x",
        }
    )
    assert settings.bootstrap == "kafka:29092"
    assert settings.broker_port == 9192
    assert settings.broker_dir == "/tmp/b2"
    assert settings.tick_interval == 0.25
    assert settings.topic_prefix == "t-1-"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BROKER_PORT", "ninety", "SCORESTREAM_BROKER_PORT: expected an integer, got 'ninety'"),
        ("WEB_PORT", "6066.5", "SCORESTREAM_WEB_PORT: expected an integer"),
        ("LATENESS", "soon", "SCORESTREAM_LATENESS: expected a number, got 'soon'"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(environ={f"SCORESTREAM_{name}": value})


def test_the_config_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "scorestream.yaml"
    path.write_text("bootstrap: file:9092\nbroker_port: 9300\ntopic_prefix: f-\n", "utf-8")
    env = {"SCORESTREAM_TOPIC_PREFIX": "env-"}
    settings = Settings.load(environ=env, config_file=str(path))
    assert (settings.bootstrap, settings.broker_port, settings.topic_prefix) == (
        "file:9092",
        9300,
        "env-",
    )
    via_env = Settings.load(environ={"SCORESTREAM_CONFIG": str(path)})
    assert via_env.broker_port == 9300


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("brokr_port: 1\n", "utf-8")
    with pytest.raises(ConfigError, match=rf"{path}: unknown setting 'brokr_port'"):
        Settings.load(environ={}, config_file=str(path))
    path.write_text("- 1\n", "utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        Settings.load(environ={}, config_file=str(path))
    with pytest.raises(ConfigError, match="cannot read config file"):
        Settings.load(environ={}, config_file=str(tmp_path / "missing.yaml"))


def test_topic_applies_the_prefix() -> None:
    assert Settings().topic("events.email") == "events.email"
    assert Settings(topic_prefix="t-ab12cd34-").topic("events.email") == "t-ab12cd34-events.email"


def test_kafka_security_leaves_out_empty_options() -> None:
    assert Settings().kafka_security() == {"security.protocol": "PLAINTEXT"}
    settings = Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="u",
        sasl_password="p",
        ssl_cafile="/ca.pem",
    )
    assert settings.kafka_security() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "u",
        "sasl.password": "p",
        "ssl.ca.location": "/ca.pem",
    }


def test_describe_lists_every_setting_with_its_variable() -> None:
    text = describe()
    lines = text.splitlines()
    assert len(lines) == len(fields(Settings))
    for f in fields(Settings):
        assert f"SCORESTREAM_{f.name.upper()}" in text
    assert any("SCORESTREAM_BROKER_PORT" in line and "9092" in line for line in lines)
