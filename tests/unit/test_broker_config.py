"""The local broker's configuration and process bookkeeping (no Java needed here)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scorestream import broker, cli
from scorestream.settings import Settings


def config(tmp_path: Path, port: int = 9192) -> broker.BrokerConfig:
    return broker.BrokerConfig(home=tmp_path / "kafka", port=port, cache_root=tmp_path / "cache")


def test_one_kafka_version_is_pinned() -> None:
    assert broker.KAFKA_VERSION == "3.9.2"
    assert broker.BrokerConfig(home=Path("x")).version == broker.KAFKA_VERSION


def test_from_settings_uses_folder_port_and_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/dev")
    settings = Settings(broker_dir="/srv/k", broker_port=9300, kafka_cache="~/cache")
    cfg = broker.BrokerConfig.from_settings(settings)
    assert cfg.home == Path("/srv/k")
    assert (cfg.port, cfg.controller_port, cfg.bootstrap) == (9300, 9301, "127.0.0.1:9300")
    assert cfg.libs_dir == Path(f"/home/dev/cache/kafka-{broker.KAFKA_VERSION}/libs")
    assert cfg.data_dir == Path("/srv/k/data")
    assert cfg.logs_dir == Path("/srv/k/logs")
    assert cfg.pid_file == Path("/srv/k/kafka.pid")


def test_default_folder_is_var_kafka_under_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = broker.BrokerConfig.from_settings(Settings())
    assert cfg.home == tmp_path / "var" / "kafka"
    assert cfg.port == 9092


def test_server_properties_describe_one_combined_kraft_node(tmp_path: Path) -> None:
    cfg = config(tmp_path, port=9192)
    props = broker.server_properties(cfg)
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9193"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9192,CONTROLLER://127.0.0.1:9193"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9192"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")
    for key, value in {
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
    }.items():
        assert props[key] == value, key


def test_write_config_writes_properties_and_log4j(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    broker.write_config(cfg)
    lines = cfg.properties_file.read_text().splitlines()
    assert "controller.quorum.voters=1@127.0.0.1:9193" in lines
    assert "log4j.appender.file.File=${kafka.logs.dir}/server.log" in cfg.log4j_file.read_text()
    assert cfg.data_dir.is_dir()
    assert cfg.logs_dir.is_dir()


def test_the_pom_asks_for_kafka_and_a_logging_backend() -> None:
    pom = broker._pom("3.9.2")
    assert "<artifactId>kafka_2.13</artifactId><version>3.9.2</version>" in pom
    assert "<artifactId>slf4j-reload4j</artifactId>" in pom
    assert "<artifactId>reload4j</artifactId><version>1.2.25</version>" in pom


def test_nothing_is_fetched_in_an_empty_cache(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert not broker.is_fetched(cfg)
    cfg.libs_dir.mkdir(parents=True)
    (cfg.libs_dir / f"kafka_2.13-{broker.KAFKA_VERSION}.jar").write_bytes(b"")
    assert broker.is_fetched(cfg)
    assert broker.fetch(cfg) == cfg.libs_dir  # already there: no Maven run


def test_fetch_without_maven_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(broker.BrokerError, match=r"Maven \(mvn\) is not on PATH"):
        broker.fetch(config(tmp_path))


def test_no_pid_file_or_a_stale_one_means_not_running(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert broker.running_pid(cfg) is None
    cfg.home.mkdir(parents=True)
    cfg.pid_file.write_text("not a pid\n")
    assert not broker.is_running(cfg)
    cfg.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a Kafka broker
    assert not broker.is_running(cfg)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    cfg.pid_file.write_text(dead.stdout)
    assert not broker.is_running(cfg)


def test_stop_without_a_broker_does_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.home.mkdir(parents=True)
    cfg.pid_file.write_text("999999999\n")
    assert broker.stop(cfg) is False
    assert not cfg.pid_file.exists()


def test_start_refuses_a_port_used_by_another_process(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(broker.BrokerError, match=f"port 127.0.0.1:{port} is in use"):
            broker.ensure_running(config(tmp_path, port=port))


def test_status_of_a_stopped_broker_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCORESTREAM_BROKER_DIR", str(tmp_path / "kafka"))
    monkeypatch.setenv("SCORESTREAM_BROKER_PORT", "1")
    assert cli.main(["broker", "status"]) == 1
    assert capsys.readouterr().out == f"not running (folder {tmp_path / 'kafka'}, port 1)\n"
