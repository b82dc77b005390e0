"""A second local broker in a temporary folder: start, idempotence, status, stop."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from scorestream import broker, cli
from scorestream.settings import Settings


def free_port_pair() -> int:
    """A port p such that p and p + 1 are free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65535:
            with socket.socket() as a, socket.socket() as b:
                try:
                    a.bind(("127.0.0.1", port))
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of ports")


@pytest.mark.timeout(240)
def test_a_second_broker_starts_answers_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port_pair()
    home = tmp_path / "kafka"
    monkeypatch.setenv("SCORESTREAM_BROKER_DIR", str(home))
    monkeypatch.setenv("SCORESTREAM_BROKER_PORT", str(port))
    config = broker.BrokerConfig.from_settings(Settings.load())
    assert config.home == home
    assert not broker.is_running(config)
    try:
        assert broker.ensure_running(config) == f"127.0.0.1:{port}"
        pid = broker.running_pid(config)
        assert pid is not None
        assert broker.is_formatted(config)
        assert broker.is_reachable(config.bootstrap)
        assert (home / "server.properties").is_file()
        assert (home / "logs" / "server.log").is_file()

        # idempotent: the same process keeps running
        assert broker.ensure_running(config) == f"127.0.0.1:{port}"
        assert broker.running_pid(config) == pid
        assert cli.main(["broker", "start"]) == 0
        assert broker.running_pid(config) == pid
        assert cli.main(["broker", "status"]) == 0
        out = capsys.readouterr().out
        assert f"running (pid {pid}) and reachable at 127.0.0.1:{port}" in out
    finally:
        stopped = broker.stop(config)
    assert stopped
    assert not broker.is_running(config)
    assert not config.pid_file.exists()
    assert not broker.is_reachable(config.bootstrap, timeout=1.0)
    assert broker.stop(config) is False
    assert cli.main(["broker", "stop"]) == 0
    assert cli.main(["broker", "status"]) == 1
    assert f"not running (folder {home}, port {port})" in capsys.readouterr().out

    # a restart reuses the formatted storage
    try:
        broker.ensure_running(config)
        assert broker.running_pid(config) not in (None, pid)
    finally:
        assert broker.stop(config)
