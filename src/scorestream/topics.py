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
import time
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from scorestream import clients
from scorestream.errors import KafkaFailure, UsageError
from scorestream.settings import ConfigError, Settings

if TYPE_CHECKING:
    from concurrent.futures import Future

    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient, ClusterMetadata, ConfigEntry, TopicMetadata

Role = Literal["input", "output", "internal", "control"]
#: Roles whose topics form the one co-partitioned group.
COPARTITIONED_ROLES: frozenset[str] = frozenset({"input", "internal"})
#: Prefix of the lines of :func:`apply` that need a person to act.
MANUAL = "MANUAL:"
APPLY_TIMEOUT = 15.0
#: libyaml's safe loader when PyYAML has it: thirteen declarations are read at every start,
#: and the pure-Python parser took about 7 ms each (measured on ``scorestream score``)
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

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

_log = logging.getLogger(__name__)
_kafka_log = logging.getLogger("scorestream.topics.librdkafka")


class TopicDeclarationError(UsageError):
    """A topic declaration is invalid; the message names the file and the field."""


class KafkaUnavailableError(KafkaFailure):
    """The cluster did not answer within the timeout."""


class TopicApplyError(KafkaFailure):
    """Kafka refused a change; ``lines`` are the results of the topics done before."""

    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.lines = lines


class TopicDecl(BaseModel):
    """One declared topic (one ``topics/<name>.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
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

    return AdminClient(clients.admin(settings, _kafka_log))


def delete_prefixed(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with the configured prefix; return them.

    The clean-up of tests and benchmarks, which run on topics of their own prefix. An
    empty prefix is refused: it would name every topic of the cluster.
    """
    if not settings.topic_prefix:
        raise ValueError("refusing to delete topics without a topic prefix")
    admin = admin_client(settings)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=timeout).values():
            future.result()
    return names


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


class _Applier:
    """One run of :func:`apply`: the admin client, the options and what was changed.

    Kafka answers an admin request once the controller has committed it; brokers see
    the change a moment later. So after changing anything, :meth:`await_visible` waits
    until metadata and configs show it, and the next run (or the worker) does not find
    a stale picture.
    """

    def __init__(self, admin: AdminClient, dry_run: bool, timeout: float) -> None:
        self.admin = admin
        self.dry_run = dry_run
        self.timeout = timeout
        self.errors: list[str] = []
        self.expect_partitions: dict[str, int] = {}
        self.expect_configs: dict[str, dict[str, str]] = {}

    def wait(self, future: Future[Any], what: str) -> KafkaError | None:
        """Wait for an admin request; None when it succeeded, else its error."""
        from confluent_kafka import KafkaError, KafkaException  # noqa: PLC0415

        try:
            future.result(timeout=self.timeout)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            return error
        except TimeoutError:
            return KafkaError(KafkaError._TIMED_OUT, f"{what}: no answer within {self.timeout} s")
        return None

    def settled(self, future: Future[Any], what: str) -> bool:
        """Wait for an admin request; on failure record ``what: reason`` as an error."""
        error = self.wait(future, what)
        if error is not None:
            self.errors.append(f"{what}: {error.str()}")
        return error is None

    def create(self, missing: list[tuple[str, TopicDecl]]) -> dict[str, list[str]]:
        """Create (or validate, in a dry run) the missing topics; one line each.

        A topic that exists after all (created meanwhile, or not yet in the metadata we
        read) gets no line; the caller reconciles it like any existing topic.
        """
        from confluent_kafka import KafkaError  # noqa: PLC0415
        from confluent_kafka.admin import NewTopic  # noqa: PLC0415

        new = [
            NewTopic(name, d.partitions, d.replication, config=dict(d.configs))
            for name, d in missing
        ]
        futures = self.admin.create_topics(
            new,
            validate_only=self.dry_run,
            operation_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        results: dict[str, list[str]] = {}
        for name, d in missing:
            error = self.wait(futures[name], f"{name}: create_topics")
            if error is not None and error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                self.errors.append(f"{name}: create_topics: {error.str()}")
            elif error is None:
                what = f"{name} ({d.partitions} partitions, replication {d.replication})"
                results[name] = [f"would create {what}" if self.dry_run else f"created {what}"]
                if not self.dry_run:
                    self.expect_partitions[name] = d.partitions
                    self.expect_configs[name] = dict(d.configs)
        return results

    def reconcile(
        self, name: str, decl: TopicDecl, topic: TopicMetadata, entries: Mapping[str, ConfigEntry]
    ) -> list[str]:
        """Compare one existing topic with its declaration; fix what is safe to fix."""
        from confluent_kafka.admin import (  # noqa: PLC0415
            AlterConfigOpType,
            ConfigEntry,
            ConfigResource,
            NewPartitions,
            ResourceType,
        )

        ops: dict[str, Any] = {"validate_only": self.dry_run, "request_timeout": self.timeout}
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
            (future,) = self.admin.incremental_alter_configs([alter], **ops).values()
            if not self.settled(future, f"{name}: incremental_alter_configs"):
                return []
            changes += [f"{key} {old} -> {decl.configs[key]}" for key, old in drift.items()]
            if not self.dry_run:
                self.expect_configs[name] = {key: decl.configs[key] for key in drift}

        have = len(topic.partitions)
        if have < decl.partitions and decl.copartitioned:
            manual.append(
                f"{MANUAL} {name}: {have} partitions, {decl.partitions} declared; it is "
                "co-partitioned with the input and internal topics and adding partitions would "
                "move keys: recreate the group of topics or migrate by hand"
            )
        elif have < decl.partitions:
            grow = NewPartitions(name, decl.partitions)
            futures = self.admin.create_partitions([grow], operation_timeout=self.timeout, **ops)
            if not self.settled(futures[name], f"{name}: create_partitions"):
                return []
            changes.append(f"partitions {have} -> {decl.partitions}")
            if not self.dry_run:
                self.expect_partitions[name] = decl.partitions
        elif have > decl.partitions:
            manual.append(
                f"{MANUAL} {name}: {have} partitions, {decl.partitions} declared; Kafka cannot "
                "remove partitions: recreate the topic or change the declaration"
            )

        replication = min((len(p.replicas) for p in topic.partitions.values()), default=0)
        if replication != decl.replication:
            manual.append(
                f"{MANUAL} {name}: replication factor {replication}, {decl.replication} "
                "declared; change it with a partition reassignment (kafka-reassign-partitions)"
            )

        if changes:
            verb = "would alter" if self.dry_run else "altered"
            return [f"{verb} {name}: {', '.join(changes)}", *manual]
        return manual or [f"ok {name}"]

    def metadata(self, names: Iterable[str]) -> ClusterMetadata:
        """Cluster metadata that lists every one of ``names`` (waits while one is missing)."""
        wanted = set(names)
        deadline = time.monotonic() + self.timeout
        while True:
            metadata = self.admin.list_topics(timeout=self.timeout)
            if wanted <= set(metadata.topics) or time.monotonic() >= deadline:
                return metadata
            time.sleep(0.1)

    def configs(
        self, names: list[str], *, report: bool = True
    ) -> dict[str, dict[str, ConfigEntry]]:
        """The config entries of ``names``; topics whose request failed are left out
        (and recorded as errors if ``report``)."""
        from confluent_kafka.admin import ConfigResource, ResourceType  # noqa: PLC0415

        if not names:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
        futures = self.admin.describe_configs(resources, request_timeout=self.timeout)
        out: dict[str, dict[str, ConfigEntry]] = {}
        for resource in resources:
            future, what = futures[resource], f"{resource.name}: describe_configs"
            if self.settled(future, what) if report else self.wait(future, what) is None:
                out[resource.name] = future.result()
        return out

    def await_visible(self) -> bool:
        """Wait until the brokers show every change made; False if they did not in time."""
        deadline = time.monotonic() + self.timeout
        while self.expect_partitions or self.expect_configs:
            metadata = self.admin.list_topics(timeout=self.timeout)
            for name, count in list(self.expect_partitions.items()):
                if name in metadata.topics and len(metadata.topics[name].partitions) >= count:
                    del self.expect_partitions[name]
            seen = self.configs(list(self.expect_configs), report=False)  # not visible yet
            for name, entries in seen.items():
                wanted = self.expect_configs[name]
                if all(
                    _same_value(k, v, entries[k].value if k in entries else None)
                    for k, v in wanted.items()
                ):
                    del self.expect_configs[name]
            if not (self.expect_partitions or self.expect_configs):
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True


def with_retention(decls: list[TopicDecl], settings: Settings) -> list[TopicDecl]:
    """The declarations with ``EVENT_RETENTION_DAYS`` applied to the input topics.

    The input topics' retention is how far back ``rescore`` can rebuild contacts, and
    how much disk they take: a deployment chooses it without editing ``topics/``.
    """
    days = settings.event_retention_days
    if days == 0:
        return decls
    if days < 0 and days != -1:
        raise ConfigError(
            f"SCORESTREAM_EVENT_RETENTION_DAYS: expected days > 0, 0 or -1, got {days:g}"
        )
    ms = "-1" if days == -1 else str(round(days * 86_400_000))
    return [
        d.model_copy(update={"configs": {**d.configs, "retention.ms": ms}})
        if d.role == "input"
        else d
        for d in decls
    ]


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
    Returns once the brokers show the changes. Raises :class:`KafkaUnavailableError` if
    the cluster does not answer within ``timeout`` seconds and :class:`TopicApplyError`
    if it refuses a change.
    """
    from confluent_kafka import KafkaException  # noqa: PLC0415

    run = _Applier(admin_client(settings), dry_run, timeout)
    try:
        metadata = run.admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        reason = exc.args[0].str()
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {settings.bootstrap} within {timeout:.0f} s: {reason}"
        ) from None
    declared = {settings.topic(d.name): d for d in with_retention(decls, settings)}
    missing = [(name, d) for name, d in declared.items() if name not in metadata.topics]
    results = run.create(missing) if missing else {}

    existing = [name for name in declared if name not in results]
    if existing:
        if not set(existing) <= set(metadata.topics):  # some turned out to exist
            metadata = run.metadata(existing)
        entries = run.configs(existing)
        for name in existing:
            if name in entries and name in metadata.topics:
                topic = metadata.topics[name]
                results[name] = run.reconcile(name, declared[name], topic, entries[name])
            elif name in entries:
                run.errors.append(f"{name}: exists but is not in the metadata")

    if not run.errors and not run.await_visible():
        _log.warning("the brokers did not show every change within %.0f s", timeout)
    lines = [line for name in declared for line in results.get(name, [])]
    if run.errors:
        raise TopicApplyError("Kafka refused changes:\n  " + "\n  ".join(run.errors), lines)
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
