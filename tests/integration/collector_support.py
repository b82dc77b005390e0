"""Helpers for the collector's integration tests: a ``scorestream collect`` process."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from support import free_port, log_tail, metric_value, read_topic, spawn, stop_process

KEY = "wk_test_site_0001"


def write_sites(path: Path, sites: list[dict[str, Any]]) -> Path:
    """A sites file for the collector."""
    path.write_text(yaml.safe_dump({"sites": sites}), encoding="utf-8")
    return path


def site(origins: list[str], **over: Any) -> dict[str, Any]:
    """One site entry: the test key, the given origins, a generous rate limit."""
    return {
        "name": "test",
        "write_key": KEY,
        "origins": origins,
        "rate_limit": {"events_per_second": 1000, "burst": 5000},
        **over,
    }


@dataclass
class CollectorProc:
    """One ``scorestream collect`` subprocess."""

    bootstrap: str
    prefix: str
    sites: Path
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CollectorProc:
        env = {
            "SCORESTREAM_BOOTSTRAP": self.bootstrap,
            "SCORESTREAM_TOPIC_PREFIX": self.prefix,
            "SCORESTREAM_COLLECTOR_PORT": str(self.port),
            "SCORESTREAM_COLLECTOR_SITES": str(self.sites),
            **self.extra_env,
        }
        self.proc = spawn("collect", env, self.log_path)
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited: {self.tail()}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"collector not ready in {timeout}s: {self.tail()}")

    def post(
        self, body: Any, key: str = KEY, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """POST /v1/events; (status, JSON body, headers)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.base}/v1/events?key={key}",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else {}, dict(exc.headers)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. ``metric("x_total", 'reason="busy"')``."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as resp:
            value = metric_value(resp.read().decode(), name, labels)
        return 0.0 if value is None else value

    def stop(self) -> int | None:
        return None if self.proc is None else stop_process(self.proc, 30)

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


def events_in(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict[str, Any], int]]:
    """Every event of a topic: (key, decoded value, partition)."""
    out = []
    for key, value, part, _ in read_topic(bootstrap, topic):
        assert value is not None
        out.append((key, json.loads(value), part))
    return out
