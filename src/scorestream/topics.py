"""Topic declarations (``topics/*.yaml``) and ``scorestream topics apply``.

Each file declares one topic: name, role, partition count, replication factor, topic
configs, what the key is, a JSON Schema of the values and a description. They load
into frozen pydantic models; anything wrong fails at once with a message naming the
file and the field.

The input topics and the internal ones are *co-partitioned*: a contact's events, its
forwarded events and its state changelog must live in partitions with the same number,
so all of them need one partition count. The loader checks that; ``apply`` never adds
partitions to them (that would move keys to other partitions) and reports it instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from scorestream.cli import UsageError
from scorestream.settings import Settings

if TYPE_CHECKING:
    from concurrent.futures import Future

    from confluent_kafka.admin import AdminClient, ConfigEntry, TopicMetadata

Role = Literal["input", "output", "internal"]
#: Roles whose topics form the one co-partitioned group.
COPARTITIONED_ROLES: frozenset[str] = frozenset({"input", "internal"})
#: Prefix of the lines of :func:`apply` that need a person to act.
MANUAL = "MANUAL:"
APPLY_TIMEOUT = 15.0

# Topic-level configs of Kafka 3.9 (``describe_configs`` of a topic lists exactly these).
# A name outside this set is a typo that Kafka would reject only at creation.
TOPIC_CONFIGS: frozenset[str] = frozenset(
    {
        "cleanup.policy",
        "compression.gzip.level",
        "compression.lz4.level",
        "compression.type",
        "compression.zstd.level",
        "delete.retention.ms",
        "file.delete.delay.ms",
        "flush.messages",
        "flush.ms",
        "follower.replication.throttled.replicas",
        "index.interval.bytes",
        "leader.replication.throttled.replicas",
        "local.retention.bytes",
        "local.retention.ms",
        "max.compaction.lag.ms",
        "max.message.bytes",
        "message.downconversion.enable",
        "message.format.version",
        "message.timestamp.after.max.ms",
        "message.timestamp.before.max.ms",
        "message.timestamp.difference.max.ms",
        "message.timestamp.type",
        "min.cleanable.dirty.ratio",
        "min.compaction.lag.ms",
        "min.insync.replicas",
        "preallocate",
        "remote.log.copy.disable",
        "remote.log.delete.on.disable",
        "remote.storage.enable",
        "retention.bytes",
        "retention.ms",
        "segment.bytes",
        "segment.index.bytes",
        "segment.jitter.ms",
        "segment.ms",
        "unclean.leader.election.enable",
    }
)
# Configs whose value is a comma-separated set: order does not matter.
_LIST_CONFIGS = frozenset({"cleanup.policy"})
_TOPIC_NAME = r"^[A-Za-z0-9._-]{1,200}$"

_kafka_log = logging.getLogger("scorestream.topics.librdkafka")


class TopicDeclarationError(UsageError):
    """A topic declaration is invalid; the message names the file and the field."""


class KafkaUnavailableError(Exception):
    """The cluster did not answer within the timeout."""


class TopicApplyError(Exception):
    """Kafka refused a change; ``lines`` are the results of the topics done before."""

    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.lines = lines


class TopicDecl(BaseModel):
    """One declared topic (one ``topics/<name>.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: Annotated[str, Field(pattern=_TOPIC_NAME)]
    role: Role
    partitions: Annotated[int, Field(strict=True, ge=1)]
    replication: Annotated[int, Field(strict=True, ge=1)]
    configs: dict[str, str] = Field(default_factory=dict)
    key: Annotated[str, Field(strict=True, min_length=1)]
    schema_file: Annotated[str | None, Field(alias="schema")]
    description: Annotated[str, Field(strict=True, min_length=1)]

    @field_validator("configs", mode="before")
    @classmethod
    def _configs_as_strings(cls, value: Any) -> Any:
        """Config values may be written as strings or numbers; Kafka wants strings."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            return value  # pydantic reports the wrong type
        out: dict[str, str] = {}
        for key, raw in value.items():
            if key not in TOPIC_CONFIGS:
                raise ValueError(f"unknown topic config {key!r}")
            out[key] = _config_value(key, raw)
        return out

    @field_validator("schema_file")
    @classmethod
    def _relative_schema_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or path.parts[:1] != ("schemas",):
            raise ValueError("must be a relative path under schemas/, e.g. schemas/x.schema.json")
        return value

    @property
    def copartitioned(self) -> bool:
        """Whether the topic belongs to the co-partitioned group (input and internal)."""
        return self.role in COPARTITIONED_ROLES

    def schema_path(self, topics_dir: Path) -> Path | None:
        """The JSON Schema file of the values, or None for binary values."""
        return None if self.schema_file is None else topics_dir / self.schema_file


def _config_value(key: str, raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        return str(int(raw)) if raw.is_integer() else repr(raw)
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    raise ValueError(f"{key}: must be a string or a number")


# ---------------------------------------------------------------------------- load


def _field_error(err: ErrorDetails) -> str:
    where = ".".join(str(part) for part in err["loc"]) or "(top level)"
    ctx = err.get("ctx", {})
    kind = err["type"]
    if kind == "missing":
        text = "required"
    elif kind == "extra_forbidden":
        text = "unknown field"
    elif kind == "greater_than_equal":
        text = f"must be >= {ctx['ge']}"
    elif kind in {"int_type", "int_parsing", "int_from_float"}:
        text = "must be an integer"
    elif kind == "literal_error":
        text = f"must be one of {ctx['expected']}"
    elif kind == "string_pattern_mismatch" and where == "name":
        text = "must be 1-200 characters from A-Z a-z 0-9 . _ -"
    elif kind == "value_error":
        text = str(ctx.get("error", err["msg"]))
    else:
        text = err["msg"][0].lower() + err["msg"][1:]
    return f"{where}: {text}"


def load_declaration(path: Path) -> TopicDecl:
    """Load and validate one declaration file (not the checks across files)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopicDeclarationError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TopicDeclarationError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TopicDeclarationError(f"{path}: expected a mapping of fields (name, role, ...)")
    try:
        decl = TopicDecl.model_validate(data)
    except ValidationError as exc:
        problems = [f"{path}: {_field_error(err)}" for err in exc.errors(include_url=False)]
        raise TopicDeclarationError("\n".join(problems)) from None
    if path.name != f"{decl.name}.yaml":
        raise TopicDeclarationError(f"{path}: name: {decl.name!r} differs from the file name")
    schema = decl.schema_path(path.parent)
    if schema is not None:
        try:
            json.loads(schema.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TopicDeclarationError(
                f"{path}: schema: cannot read {schema}: {exc.strerror}"
            ) from None
        except ValueError as exc:
            raise TopicDeclarationError(f"{path}: schema: {schema} is not JSON: {exc}") from None
    return decl


def check_copartitioned(decls: Iterable[tuple[Path, TopicDecl]]) -> None:
    """All input and internal topics must have one partition count; fail naming the files."""
    group = [(path, decl) for path, decl in decls if decl.copartitioned]
    counts = {decl.partitions for _, decl in group}
    if len(counts) > 1:
        listing = ", ".join(f"{path}: {decl.partitions}" for path, decl in group)
        raise TopicDeclarationError(
            "partitions: the input and internal topics are co-partitioned and need the same "
            f"partition count; found {listing}"
        )


def load_declarations(topics_dir: Path | str) -> list[TopicDecl]:
    """Load every ``*.yaml`` of ``topics_dir``, validated and sorted by name."""
    folder = Path(topics_dir)
    if not folder.is_dir():
        raise TopicDeclarationError(f"{folder}: no such folder of topic declarations")
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise TopicDeclarationError(f"{folder}: no topic declarations (*.yaml)")
    loaded = [(path, load_declaration(path)) for path in files]
    check_copartitioned(loaded)
    return [decl for _, decl in loaded]


# --------------------------------------------------------------------------- apply


def admin_client(settings: Settings) -> AdminClient:
    """A confluent-kafka AdminClient for the configured cluster."""
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415 (slow import)

    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap,
        "logger": _kafka_log,
        **settings.kafka_security(),
    }
    return AdminClient(conf)


def _same_value(key: str, declared: str, actual: str | None) -> bool:
    if actual is None:
        return False
    if key in _LIST_CONFIGS:
        return {p.strip() for p in declared.split(",")} == {p.strip() for p in actual.split(",")}
    if declared == actual:
        return True
    try:
        return float(declared) == float(actual)
    except ValueError:
        return False


def _settled(future: Future[Any], timeout: float, what: str, errors: list[str]) -> bool:
    """Wait for an admin request; on failure add ``what: reason`` to ``errors``."""
    from confluent_kafka import KafkaException  # noqa: PLC0415

    try:
        future.result(timeout=timeout)
    except KafkaException as exc:
        errors.append(f"{what}: {exc.args[0].str()}")
        return False
    except TimeoutError:
        errors.append(f"{what}: no answer within {timeout:.0f} s")
        return False
    return True


def _reconcile(
    admin: AdminClient,
    decl: TopicDecl,
    *,
    name: str,
    topic: TopicMetadata,
    entries: Mapping[str, ConfigEntry],
    dry_run: bool,
    timeout: float,
    errors: list[str],
) -> list[str]:
    """Compare one existing topic with its declaration; fix what is safe to fix."""
    from confluent_kafka.admin import (  # noqa: PLC0415
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        ResourceType,
    )

    ops: dict[str, Any] = {"validate_only": dry_run, "request_timeout": timeout}
    changes: list[str] = []
    manual: list[str] = []
    current = {key: entries[key].value if key in entries else None for key in decl.configs}
    drift = {k: v for k, v in current.items() if not _same_value(k, decl.configs[k], v)}
    if drift:
        alter = ConfigResource(
            ResourceType.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(key, decl.configs[key], incremental_operation=AlterConfigOpType.SET)
                for key in drift
            ],
        )
        (future,) = admin.incremental_alter_configs([alter], **ops).values()
        if not _settled(future, timeout, f"{name}: incremental_alter_configs", errors):
            return []
        changes += [f"{key} {old} -> {decl.configs[key]}" for key, old in drift.items()]

    have = len(topic.partitions)
    if have < decl.partitions and decl.copartitioned:
        manual.append(
            f"{MANUAL} {name}: {have} partitions, {decl.partitions} declared; it is "
            "co-partitioned with the input and internal topics and adding partitions would "
            "move keys: recreate the group of topics or migrate by hand"
        )
    elif have < decl.partitions:
        grow = NewPartitions(name, decl.partitions)
        (future,) = admin.create_partitions([grow], operation_timeout=timeout, **ops).values()
        if not _settled(future, timeout, f"{name}: create_partitions", errors):
            return []
        changes.append(f"partitions {have} -> {decl.partitions}")
    elif have > decl.partitions:
        manual.append(
            f"{MANUAL} {name}: {have} partitions, {decl.partitions} declared; Kafka cannot "
            "remove partitions: recreate the topic or change the declaration"
        )

    replication = min((len(p.replicas) for p in topic.partitions.values()), default=0)
    if replication != decl.replication:
        manual.append(
            f"{MANUAL} {name}: replication factor {replication}, {decl.replication} declared; "
            "change it with a partition reassignment (kafka-reassign-partitions)"
        )

    if changes:
        verb = "would alter" if dry_run else "altered"
        return [f"{verb} {name}: {', '.join(changes)}", *manual]
    return manual or [f"ok {name}"]


def apply(
    decls: list[TopicDecl],
    settings: Settings,
    dry_run: bool = False,
    timeout: float = APPLY_TIMEOUT,
) -> list[str]:
    """Make the cluster match the declarations; return one line per topic (and problem).

    Creates missing topics, fixes differing configs, adds partitions to output topics.
    What Kafka cannot do safely comes back as lines starting with :data:`MANUAL`.
    With ``dry_run`` nothing changes (creations are still validated by the broker).
    Raises :class:`KafkaUnavailableError` if the cluster does not answer within
    ``timeout`` seconds and :class:`TopicApplyError` if it refuses a change.
    """
    from confluent_kafka import KafkaException  # noqa: PLC0415
    from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType  # noqa: PLC0415

    admin = admin_client(settings)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        reason = exc.args[0].str()
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {settings.bootstrap} within {timeout:.0f} s: {reason}"
        ) from None
    results: dict[str, list[str]] = {}
    errors: list[str] = []
    missing = [d for d in decls if settings.topic(d.name) not in metadata.topics]
    existing = [d for d in decls if settings.topic(d.name) in metadata.topics]

    if missing:
        new = [
            NewTopic(
                settings.topic(d.name),
                num_partitions=d.partitions,
                replication_factor=d.replication,
                config=dict(d.configs),
            )
            for d in missing
        ]
        created = admin.create_topics(
            new, validate_only=dry_run, operation_timeout=timeout, request_timeout=timeout
        )
        for d in missing:
            name = settings.topic(d.name)
            if _settled(created[name], timeout, f"{name}: create_topics", errors):
                what = f"{name} ({d.partitions} partitions, replication {d.replication})"
                results[name] = [f"would create {what}" if dry_run else f"created {what}"]

    if existing:
        resources = [ConfigResource(ResourceType.TOPIC, settings.topic(d.name)) for d in existing]
        described = admin.describe_configs(resources, request_timeout=timeout)
        for d, resource in zip(existing, resources, strict=True):
            name = resource.name
            future = described[resource]
            if not _settled(future, timeout, f"{name}: describe_configs", errors):
                continue
            results[name] = _reconcile(
                admin,
                d,
                name=name,
                topic=metadata.topics[name],
                entries=future.result(),
                dry_run=dry_run,
                timeout=timeout,
                errors=errors,
            )

    lines = [line for d in decls for line in results.get(settings.topic(d.name), [])]
    if errors:
        raise TopicApplyError("Kafka refused changes:\n  " + "\n  ".join(errors), lines)
    return lines


def apply_command(args: argparse.Namespace) -> int:
    """``scorestream topics apply [--dry-run]``: create or update the declared topics."""
    settings = Settings.load(config_file=getattr(args, "config", None))
    decls = load_declarations(settings.topics_dir)  # TopicDeclarationError: exit 2
    try:
        lines = apply(decls, settings, dry_run=bool(args.dry_run), timeout=APPLY_TIMEOUT)
    except KafkaUnavailableError as exc:
        print(f"scorestream: {exc}", file=sys.stderr)
        return 1
    except TopicApplyError as exc:
        for line in exc.lines:
            print(line)
        print(f"scorestream: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    manual = sum(1 for line in lines if line.startswith(MANUAL))
    if manual:
        print(f"scorestream: {manual} difference(s) need manual action", file=sys.stderr)
        return 1
    return 0
