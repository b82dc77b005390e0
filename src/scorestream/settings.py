"""Settings from ``SCORESTREAM_*`` environment variables, with an optional YAML file.

Precedence, highest first: environment variable, config file (``SCORESTREAM_CONFIG``
or ``--config``), built-in default. Every setting is listed in :data:`SETTINGS`, which
is also what ``scorestream --help`` and the README print, so the three cannot drift.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from scorestream.engine.errors import ScorestreamError

ENV_PREFIX = "SCORESTREAM_"


class ConfigError(ScorestreamError, ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def _as_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}: expected an integer, got {raw!r}") from None


def _as_float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}: expected a number, got {raw!r}") from None


def _as_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{ENV_PREFIX}{name.upper()}: expected true/false, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Field docs are printed by ``--help``."""

    bootstrap: str = field(default="localhost:9092", metadata={"doc": "Kafka bootstrap servers"})
    rules: str = field(
        default="rules/b2b.yaml", metadata={"doc": "scoring plan file (YAML) used by the worker"}
    )
    topics_dir: str = field(default="topics", metadata={"doc": "folder of topic declarations"})
    topic_prefix: str = field(
        default="", metadata={"doc": "prefix added to every declared topic name (tests, tenants)"}
    )
    event_retention_days: float = field(
        default=0.0,
        metadata={
            "doc": "days of history `topics apply` keeps on the input topics, which is what "
            "`rescore` can rebuild from; 0: as declared in topics/ (7 days), -1: forever"
        },
    )
    app_id: str = field(
        default="scorestream",
        metadata={"doc": "Faust app id = consumer group; local state under STATE_DIR/APP_ID"},
    )
    state_dir: str = field(default="var/state", metadata={"doc": "local RocksDB state folder"})
    web_host: str = field(default="127.0.0.1", metadata={"doc": "HTTP API / metrics bind address"})
    web_port: int = field(default=6066, metadata={"doc": "HTTP API / metrics port"})
    max_message_bytes: int = field(
        default=1_000_000, metadata={"doc": "larger input messages go to the DLQ"}
    )
    checkpoint_interval: float = field(
        default=1.0,
        metadata={"doc": "seconds between state checkpoints (changelog flush + offset commit)"},
    )
    tick_interval: float = field(
        default=1.0, metadata={"doc": "seconds between timer/decay sweeps of idle contacts"}
    )
    lateness: float = field(
        default=5.0,
        metadata={
            "doc": "seconds of event time that timers and decay stay behind the newest event "
            "(a late event within it still cancels a timer)"
        },
    )
    idle_timeout: float = field(
        default=2.0,
        metadata={
            "doc": "seconds with nothing to apply after which the stream counts as quiet: "
            "timers and decay then reach the newest event time (and follow the wall clock "
            "if that is within LIVE_HORIZON)"
        },
    )
    live_horizon: float = field(
        default=3600.0,
        metadata={
            "doc": "a quiet stream whose newest event is at most this many seconds old is "
            "live and its clock follows the wall clock; an older backlog stays at its own time"
        },
    )
    merge_idle: float = field(
        default=0.0,
        metadata={
            "doc": "seconds to wait for an emptied, caught-up input topic before applying "
            "other topics' later events without it (Kafka Streams' max.task.idle.ms)"
        },
    )
    merge_fresh_poll: bool = field(
        default=True,
        metadata={
            "doc": "before applying an event past an input read to its end, wait for a "
            "fetch of that input made after the event reached the worker (docs/rules.md, "
            "late events); false: lower latency, but an event that reaches Kafka while a "
            "newer one of its contact waits in the worker can be applied after it "
            "(README, Benchmarks)"
        },
    )
    merge_frontiers: bool = field(
        default=False,
        metadata={
            "doc": "with several workers, tell the others every 50 ms how far this one's "
            "release has got, so a repartition input behind its end holds back only "
            "records at or past that frontier (docs/rules.md, across workers)"
        },
    )
    merge_buffer: int = field(
        default=20_000,
        metadata={"doc": "messages buffered per topic-partition before fetching it pauses"},
    )
    identify_wait: float = field(
        default=30.0,
        metadata={
            "doc": "seconds an identified contact's later events wait for its anonymous "
            "visitor's state from a partition on another worker before they are applied "
            "without it (it is merged late when it comes); other contacts do not wait"
        },
    )
    producer_linger_ms: int = field(
        default=10,
        metadata={
            "doc": "milliseconds the worker's producer gathers records (crossings, "
            "changelog, hand-overs) into one request: lower gives crossings sooner, higher "
            "costs the broker and the workers less CPU"
        },
    )
    fetch_max_wait_ms: int = field(
        default=200,
        metadata={
            "doc": "milliseconds the broker may hold the worker's fetch request waiting for "
            "data: it bounds how long records of busy partitions can wait behind a fetch "
            "of quiet ones (README, Benchmarks)"
        },
    )
    rescore_hold: float = field(
        default=300.0,
        metadata={
            "doc": "seconds a worker holds at a rescore's hand-over point waiting for the "
            "rebuilt states before it goes on under its current plan (it takes the states "
            "when they come)"
        },
    )
    session_timeout: float = field(
        default=8.0,
        metadata={
            "doc": "consumer group session timeout: a worker that dies without a word gives "
            "up its partitions after this many seconds"
        },
    )
    heartbeat_interval: float = field(
        default=2.5, metadata={"doc": "seconds between consumer group heartbeats"}
    )
    cache_contacts: int = field(
        default=200_000, metadata={"doc": "contact states kept in memory per worker"}
    )
    rocksdb_block_cache_mb: int = field(
        default=64, metadata={"doc": "RocksDB block cache per partition store, MiB"}
    )
    log_level: str = field(default="info", metadata={"doc": "worker log level"})
    # Access to the HTTP API and the lead board.
    api_token: str = field(
        default="",
        repr=False,  # a secret: never in a log line or a traceback's repr
        metadata={
            "doc": "bearer token that /contacts, /status and the lead board require "
            "(empty: none; then the worker and the board bind to loopback only)"
        },
    )
    allow_insecure_bind: bool = field(
        default=False,
        metadata={
            "doc": "let the worker and the board bind beyond loopback without API_TOKEN "
            "(only behind something else that checks who may read)"
        },
    )
    board_host: str = field(default="127.0.0.1", metadata={"doc": "lead board bind address"})
    board_port: int = field(default=6067, metadata={"doc": "lead board port"})
    board_worker_url: str = field(
        default="",
        metadata={
            "doc": "a worker's HTTP API for the board's contact pages "
            "(empty: http://127.0.0.1:WEB_PORT)"
        },
    )
    board_top: int = field(
        default=25, metadata={"doc": "hottest contacts the board shows per model"}
    )
    # The HTTP collector for website trackers (``scorestream collect``).
    collector_host: str = field(
        default="127.0.0.1", metadata={"doc": "collector bind address (HTTP, tracker.js)"}
    )
    collector_port: int = field(default=6068, metadata={"doc": "collector port"})
    collector_sites: str = field(
        default="",
        metadata={
            "doc": "YAML file of the collector's sites: write key, allowed origins, rate "
            "limit, consent, e-mail field (required by collect)"
        },
    )
    collector_max_body_bytes: int = field(
        default=1_000_000,
        metadata={"doc": "largest request body the collector reads; larger answers 413"},
    )
    collector_max_in_flight: int = field(
        default=20_000,
        metadata={
            "doc": "events the collector holds while Kafka has not acknowledged them; "
            "beyond it requests answer 503"
        },
    )
    collector_produce_timeout: float = field(
        default=5.0,
        metadata={
            "doc": "seconds the collector waits for Kafka's acknowledgement before it "
            "answers 503 (the producer's message.timeout.ms)"
        },
    )
    collector_retry_after: int = field(
        default=2, metadata={"doc": "Retry-After seconds of the collector's 503 answers"}
    )
    collector_store_client_address: bool = field(
        default=False,
        metadata={"doc": "add the client's IP address to each event (client_address)"},
    )
    collector_trust_forwarded: bool = field(
        default=False,
        metadata={
            "doc": "take the client address from X-Forwarded-For (only behind a proxy that sets it)"
        },
    )
    # The local development broker (``scorestream broker ...``).
    broker_dir: str = field(
        default="var/kafka",
        metadata={"doc": "local broker folder: server.properties, data/, logs/, pid file"},
    )
    broker_port: int = field(
        default=9092, metadata={"doc": "local broker port on 127.0.0.1 (controller: port + 1)"}
    )
    kafka_cache: str = field(
        default="~/.cache/scorestream",
        metadata={"doc": "cache of the Kafka jars from Maven Central (kafka-<version>/libs)"},
    )
    # Kafka security, passed through to every client unchanged.
    security_protocol: str = field(
        default="PLAINTEXT",
        metadata={"doc": "Kafka security.protocol (PLAINTEXT, SSL, SASL_SSL...)"},
    )
    sasl_mechanism: str = field(
        default="", metadata={"doc": "Kafka sasl.mechanism (PLAIN, SCRAM-SHA-256...)"}
    )
    sasl_username: str = field(default="", metadata={"doc": "Kafka SASL user name"})
    sasl_password: str = field(default="", metadata={"doc": "Kafka SASL password"})
    ssl_cafile: str = field(default="", metadata={"doc": "CA bundle for Kafka TLS"})
    ssl_certfile: str = field(default="", metadata={"doc": "client certificate for Kafka TLS"})
    ssl_keyfile: str = field(default="", metadata={"doc": "client key for Kafka TLS"})

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, config_file: str | None = None
    ) -> Settings:
        """Build settings from a config file (optional) and the environment."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        path = config_file or env.get(f"{ENV_PREFIX}CONFIG")
        if path:
            values.update(_read_config_file(Path(path)))
        for f in fields(cls):
            raw = env.get(f"{ENV_PREFIX}{f.name.upper()}")
            if raw is not None:
                values[f.name] = raw
        return cls(**{name: _coerce(name, value) for name, value in values.items()})

    def kafka_security(self) -> dict[str, str]:
        """Security options in librdkafka (confluent-kafka) spelling; empty ones left out."""
        conf = {"security.protocol": self.security_protocol}
        for key, value in (
            ("sasl.mechanism", self.sasl_mechanism),
            ("sasl.username", self.sasl_username),
            ("sasl.password", self.sasl_password),
            ("ssl.ca.location", self.ssl_cafile),
            ("ssl.certificate.location", self.ssl_certfile),
            ("ssl.key.location", self.ssl_keyfile),
        ):
            if value:
                conf[key] = value
        return conf

    def topic(self, name: str) -> str:
        """The real name of a declared topic (with the configured prefix)."""
        return f"{self.topic_prefix}{name}"


_COERCE: dict[type | str, Callable[[str, str], Any]] = {
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
}


def _coerce(name: str, value: Any) -> Any:
    kinds = {f.name: f.type for f in fields(Settings)}
    if name not in kinds:
        raise ConfigError(f"unknown setting {name!r}")
    kind = kinds[name]
    if kind == "str":
        return str(value)
    conv = _COERCE[kind]
    return conv(name, str(value))


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting names to values")
    known = {f.name for f in fields(Settings)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}: unknown setting {key!r}")
    return dict(data)


def describe() -> str:
    """One line per setting: variable name, default and meaning (for --help and README)."""
    lines = []
    for f in fields(Settings):
        lines.append(
            f"  {ENV_PREFIX}{f.name.upper():<26} default {f.default!r}: {f.metadata.get('doc', '')}"
        )
    return "\n".join(lines)
