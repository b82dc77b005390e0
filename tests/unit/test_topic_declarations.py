"""Topic declarations in topics/: loading, validation errors, co-partitioning, JSON Schemas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from scorestream import cli, topics
from scorestream.settings import ConfigError, Settings
from scorestream.topics import TopicDecl, TopicDeclarationError, load_declarations

ROOT = Path(__file__).resolve().parents[2]
TOPICS_DIR = ROOT / "topics"
SCHEMAS_DIR = TOPICS_DIR / "schemas"

INPUTS = {
    "events.page_view",
    "events.email",
    "events.form",
    "events.cart",
    "events.custom",
    "contacts.profile",
}
INTERNALS = {"scorestream.repartition", "scorestream.state-changelog", "scorestream.rescore"}
OUTPUTS = {"leads.sales_ready", "contacts.scores", "events.dlq"}
SEVEN_DAYS_MS = "604800000"
THIRTY_DAYS_MS = "2592000000"


def by_name(decls: list[TopicDecl]) -> dict[str, TopicDecl]:
    return {d.name: d for d in decls}


# ------------------------------------------------------------------ the real topics/


def test_all_declared_topics_load_with_their_roles() -> None:
    decls = by_name(load_declarations(TOPICS_DIR))
    assert set(decls) == INPUTS | INTERNALS | OUTPUTS | {"scorestream.rules"}
    assert {n for n, d in decls.items() if d.role == "control"} == {"scorestream.rules"}
    assert {n for n, d in decls.items() if d.role == "input"} == INPUTS
    assert {n for n, d in decls.items() if d.role == "internal"} == INTERNALS
    assert {n for n, d in decls.items() if d.role == "output"} == OUTPUTS
    assert {n for n, d in decls.items() if d.copartitioned} == INPUTS | INTERNALS
    assert all(d.replication == 1 for d in decls.values())
    assert all(d.key and d.description for d in decls.values())


def test_declarations_are_sorted_by_name() -> None:
    names = [d.name for d in load_declarations(TOPICS_DIR)]
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_input_topics(name: str) -> None:
    decl = by_name(load_declarations(TOPICS_DIR))[name]
    assert decl.partitions == 6
    assert decl.configs == {"cleanup.policy": "delete", "retention.ms": SEVEN_DAYS_MS}
    assert decl.schema_file == "schemas/event.schema.json"


def test_the_plan_topic_keeps_every_publication_in_one_partition() -> None:
    rules = by_name(load_declarations(TOPICS_DIR))["scorestream.rules"]
    # One partition: every worker reads all of it, in publication order; compacted on
    # a key per publication, so the history of plans stays.
    assert (rules.partitions, rules.configs) == (1, {"cleanup.policy": "compact"})
    assert not rules.copartitioned
    assert rules.schema_file == "schemas/rules.schema.json"


def test_output_and_internal_topics() -> None:
    decls = by_name(load_declarations(TOPICS_DIR))
    leads = decls["leads.sales_ready"]
    assert (leads.partitions, leads.schema_file) == (6, "schemas/sales_ready.schema.json")
    assert leads.configs == {"cleanup.policy": "delete", "retention.ms": THIRTY_DAYS_MS}
    scores = decls["contacts.scores"]
    assert (scores.partitions, scores.schema_file) == (6, "schemas/scores.schema.json")
    assert scores.configs == {"cleanup.policy": "compact"}
    dlq = decls["events.dlq"]
    assert (dlq.partitions, dlq.schema_file) == (3, "schemas/dlq.schema.json")
    assert dlq.configs == {
        "cleanup.policy": "delete",
        "retention.ms": THIRTY_DAYS_MS,
        "max.message.bytes": "4194304",
    }
    repartition = decls["scorestream.repartition"]
    assert (repartition.partitions, repartition.schema_file) == (6, None)
    assert repartition.configs == {"cleanup.policy": "delete", "retention.ms": SEVEN_DAYS_MS}
    changelog = decls["scorestream.state-changelog"]
    assert (changelog.partitions, changelog.schema_file) == (6, None)
    assert changelog.configs == {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}


def test_declarations_are_frozen() -> None:
    decl = load_declarations(TOPICS_DIR)[0]
    with pytest.raises(ValueError, match="frozen"):
        decl.partitions = 12  # type: ignore[misc]


# --------------------------------------------------------------- bad declarations


GOOD: dict[str, Any] = {
    "name": "events.email",
    "role": "input",
    "partitions": 6,
    "replication": 1,
    "configs": {"retention.ms": 604800000, "cleanup.policy": "delete"},
    "key": "contact_id",
    "schema": "schemas/event.schema.json",
    "description": "E-mail events.",
}


def write_dir(tmp_path: Path, *decls: dict[str, Any]) -> Path:
    folder = tmp_path / "topics"
    (folder / "schemas").mkdir(parents=True)
    shutil.copy(SCHEMAS_DIR / "event.schema.json", folder / "schemas" / "event.schema.json")
    for decl in decls:
        (folder / f"{decl['name']}.yaml").write_text(yaml.safe_dump(decl), encoding="utf-8")
    return folder


def test_a_minimal_valid_declaration_loads_with_string_configs(tmp_path: Path) -> None:
    decl = {**GOOD, "configs": {"min.cleanable.dirty.ratio": 0.25, "preallocate": False}}
    (loaded,) = load_declarations(write_dir(tmp_path, decl))
    assert loaded.configs == {"min.cleanable.dirty.ratio": "0.25", "preallocate": "false"}
    assert loaded.schema_path(tmp_path / "topics") == tmp_path / "topics/schemas/event.schema.json"


def test_missing_configs_mean_none(tmp_path: Path) -> None:
    decl = {k: v for k, v in GOOD.items() if k != "configs"}
    (loaded,) = load_declarations(write_dir(tmp_path, decl))
    assert loaded.configs == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"partitions": 0}, "partitions: must be >= 1"),
        ({"partitions": -3}, "partitions: must be >= 1"),
        ({"partitions": "six"}, "partitions: must be an integer"),
        ({"partitions": 6.5}, "partitions: must be an integer"),
        ({"replication": 0}, "replication: must be >= 1"),
        ({"role": "source"}, "role: must be one of 'input', 'output', 'internal' or 'control'"),
        ({"role": None}, "role: must be one of"),
        ({"retention": "7d"}, "retention: unknown field"),
        ({"schema_file": "schemas/event.schema.json"}, "schema_file: unknown field"),
        ({"configs": {"retention.msec": 1}}, "configs: unknown topic config 'retention.msec'"),
        ({"configs": {"retention.ms": [1, 2]}}, "configs: retention.ms: must be a string or a"),
        ({"configs": {"retention.ms": ""}}, "configs: retention.ms: must be a string or a"),
        ({"configs": ["retention.ms"]}, "configs: "),
        ({"key": ""}, "key: string should have at least 1 character"),
        ({"description": 42}, "description: "),
        ({"schema": "/etc/passwd"}, "schema: must be a relative path under schemas/"),
        ({"schema": "schemas/../../x.json"}, "schema: must be a relative path under schemas/"),
        ({"schema": "event.schema.json"}, "schema: must be a relative path under schemas/"),
        ({"schema": "schemas/nope.schema.json"}, "schema: cannot read"),
        ({"name": "events.mail"}, "name: 'events.mail' differs from the file name"),
    ],
)
def test_a_bad_declaration_names_file_and_field(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    folder = write_dir(tmp_path)
    (folder / "events.email.yaml").write_text(yaml.safe_dump({**GOOD, **change}), "utf-8")
    with pytest.raises(TopicDeclarationError) as info:
        load_declarations(folder)
    assert str(info.value).startswith(f"{folder / 'events.email.yaml'}: ")
    assert message in str(info.value)


@pytest.mark.parametrize("field", ["name", "role", "partitions", "replication", "key", "schema"])
def test_a_missing_field_is_named(tmp_path: Path, field: str) -> None:
    folder = write_dir(tmp_path)
    decl = {k: v for k, v in GOOD.items() if k != field}
    (folder / "events.email.yaml").write_text(yaml.safe_dump(decl), "utf-8")
    with pytest.raises(TopicDeclarationError, match=rf"events\.email\.yaml: {field}: required"):
        load_declarations(folder)


def test_every_problem_of_a_file_is_listed(tmp_path: Path) -> None:
    folder = write_dir(tmp_path)
    decl = {**GOOD, "partitions": 0, "replication": 0}
    (folder / "events.email.yaml").write_text(yaml.safe_dump(decl), "utf-8")
    with pytest.raises(TopicDeclarationError) as info:
        load_declarations(folder)
    file = folder / "events.email.yaml"
    assert str(info.value).splitlines() == [
        f"{file}: partitions: must be >= 1",
        f"{file}: replication: must be >= 1",
    ]


def test_a_declaration_with_bad_yaml_or_shape_fails(tmp_path: Path) -> None:
    folder = write_dir(tmp_path)
    bad = folder / "events.email.yaml"
    bad.write_text("name: [unclosed\n", "utf-8")
    with pytest.raises(TopicDeclarationError, match=r"events\.email\.yaml: not valid YAML"):
        load_declarations(folder)
    bad.write_text("- a\n- b\n", "utf-8")
    with pytest.raises(TopicDeclarationError, match=r"events\.email\.yaml: expected a mapping"):
        load_declarations(folder)


def test_a_schema_that_is_not_json_fails(tmp_path: Path) -> None:
    folder = write_dir(tmp_path, GOOD)
    (folder / "schemas" / "event.schema.json").write_text("{not json", "utf-8")
    with pytest.raises(TopicDeclarationError, match=r"events\.email\.yaml: schema: .* not JSON"):
        load_declarations(folder)


def test_an_empty_or_missing_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(TopicDeclarationError, match="no such folder"):
        load_declarations(tmp_path / "nope")
    with pytest.raises(TopicDeclarationError, match=r"no topic declarations \(\*\.yaml\)"):
        load_declarations(write_dir(tmp_path))


def test_declaration_errors_are_usage_errors() -> None:
    assert issubclass(TopicDeclarationError, cli.UsageError)


# ---------------------------------------------------------------- co-partitioning


def test_copartitioned_topics_need_the_same_partition_count(tmp_path: Path) -> None:
    email = {**GOOD, "partitions": 3}
    repartition = {
        **GOOD,
        "name": "scorestream.repartition",
        "role": "internal",
        "schema": None,
    }
    folder = write_dir(tmp_path, email, repartition)
    with pytest.raises(TopicDeclarationError) as info:
        load_declarations(folder)
    text = str(info.value)
    assert text.startswith("partitions: the input and internal topics are co-partitioned")
    assert f"{folder / 'events.email.yaml'}: 3" in text
    assert f"{folder / 'scorestream.repartition.yaml'}: 6" in text


def test_output_topics_may_have_their_own_partition_count(tmp_path: Path) -> None:
    dlq = {**GOOD, "name": "events.dlq", "role": "output", "partitions": 3, "schema": None}
    folder = write_dir(tmp_path, GOOD, dlq)
    assert {d.name: d.partitions for d in load_declarations(folder)} == {
        "events.dlq": 3,
        "events.email": 6,
    }


def test_the_real_copartitioned_group_breaks_when_one_file_changes(tmp_path: Path) -> None:
    folder = tmp_path / "topics"
    shutil.copytree(TOPICS_DIR, folder)
    path = folder / "scorestream.state-changelog.yaml"
    data = yaml.safe_load(path.read_text("utf-8"))
    path.write_text(yaml.safe_dump({**data, "partitions": 12}), "utf-8")
    with pytest.raises(TopicDeclarationError, match=r"state-changelog\.yaml: 12"):
        load_declarations(folder)


# ------------------------------------------------------------------------- CLI


def test_topics_apply_exits_2_on_a_bad_declaration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_dir(tmp_path, {**GOOD, "partitions": 0})
    monkeypatch.setenv("SCORESTREAM_TOPICS_DIR", str(folder))
    assert cli.main(["topics", "apply"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{folder / 'events.email.yaml'}: partitions: must be >= 1" in err


def test_topics_apply_exits_1_when_kafka_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCORESTREAM_TOPICS_DIR", str(TOPICS_DIR))
    monkeypatch.setenv("SCORESTREAM_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setattr(topics, "APPLY_TIMEOUT", 1.5)
    assert cli.main(["topics", "apply"]) == cli.EXIT_FAILURE
    assert "cannot reach Kafka at 127.0.0.1:1 within 2 s" in capsys.readouterr().err


def test_apply_raises_when_kafka_is_unreachable() -> None:
    settings = Settings(bootstrap="127.0.0.1:1")
    with pytest.raises(topics.KafkaUnavailableError, match="cannot reach Kafka"):
        topics.apply(load_declarations(TOPICS_DIR), settings, timeout=1.0)


# ------------------------------------------------------------------ JSON Schemas


def schema(name: str) -> Draft202012Validator:
    data = json.loads((SCHEMAS_DIR / f"{name}.schema.json").read_text("utf-8"))
    return Draft202012Validator(data)


def test_every_schema_file_is_a_valid_draft_2020_12_schema() -> None:
    files = sorted(SCHEMAS_DIR.glob("*.json"))
    assert [f.name for f in files] == [
        "dlq.schema.json",
        "event.schema.json",
        "rules.schema.json",
        "sales_ready.schema.json",
        "scores.schema.json",
    ]
    for file in files:
        data = json.loads(file.read_text("utf-8"))
        assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(data)


def test_every_declared_schema_exists() -> None:
    for decl in load_declarations(TOPICS_DIR):
        path = decl.schema_path(TOPICS_DIR)
        assert path is None or path.is_file(), decl.name


EVENT = {
    "event_id": "e-1",
    "type": "page_view",
    "contact_id": "c-42",
    "occurred_at": "2026-03-01T10:15:00Z",
    "properties": {"url": "https://example.com/pricing", "utm_source": "newsletter"},
}

VALID_EVENTS: list[dict[str, Any]] = [
    EVENT,
    {**EVENT, "contact_id": None} | {"anonymous_id": "anon-1"},
    {**EVENT, "occurred_at": "2026-03-01T11:15:00.123+01:00"},
    {**EVENT, "event_id": "x" * 128, "contact_id": "c" * 256},
    {**EVENT, "type": "email_click", "properties": {"campaign_id": "spring", "link_url": "u"}},
    {**EVENT, "type": "email_open", "properties": {}},
    {**EVENT, "type": "form_submit", "properties": {"form_id": "demo", "fields": {"a": 1}}},
    {**EVENT, "type": "cart_add", "properties": {"product_id": "p-1", "value": 19.99}},
    {**EVENT, "type": "purchase"} | {"properties": {"value": 100, "currency": "EUR"}},
    {**EVENT, "type": "identify", "anonymous_id": "anon-1", "properties": {}},
    {**EVENT, "type": "profile_update", "properties": {"attributes": {"country": "DE"}}},
    {**EVENT, "type": "subscription_renewed", "properties": {"plan": "pro"}},
    {k: v for k, v in EVENT.items() if k != "properties"} | {"type": "app_download"},
]


def _drop_none(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if v is not None}


@pytest.mark.parametrize("event", [_drop_none(e) for e in VALID_EVENTS])
def test_the_event_schema_accepts_valid_events(event: dict[str, Any]) -> None:
    assert list(schema("event").iter_errors(event)) == []


INVALID_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("no ids", {k: v for k, v in EVENT.items() if k != "contact_id"}),
    ("no event_id", {k: v for k, v in EVENT.items() if k != "event_id"}),
    ("empty event_id", {**EVENT, "event_id": ""}),
    ("long event_id", {**EVENT, "event_id": "x" * 129}),
    ("empty contact_id", {**EVENT, "contact_id": ""}),
    ("long anonymous_id", {**EVENT, "anonymous_id": "a" * 257}),
    ("type casing", {**EVENT, "type": "PageView"}),
    ("type too long", {**EVENT, "type": "a" * 65}),
    ("no offset", {**EVENT, "occurred_at": "2026-03-01T10:15:00"}),
    ("date only", {**EVENT, "occurred_at": "2026-03-01"}),
    ("epoch number", {**EVENT, "occurred_at": 1772360100}),
    ("properties list", {**EVENT, "properties": ["url"]}),
    ("page_view without url", {**EVENT, "properties": {"title": "Pricing"}}),
    ("page_view without properties", {k: v for k, v in EVENT.items() if k != "properties"}),
    ("page_view url number", {**EVENT, "properties": {"url": 5}}),
    ("form_submit without form_id", {**EVENT, "type": "form_submit", "properties": {}}),
    ("cart value string", {**EVENT, "type": "cart_add", "properties": {"value": "19.99"}}),
    ("identify with one id", {**EVENT, "type": "identify", "properties": {}}),
    ("profile_update without attributes", {**EVENT, "type": "profile_update", "properties": {}}),
    (
        "profile_update attributes list",
        {**EVENT, "type": "profile_update", "properties": {"attributes": []}},
    ),
    ("not an object", ["event"]),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("why", "event"), INVALID_EVENTS, ids=[w for w, _ in INVALID_EVENTS])
def test_the_event_schema_rejects_invalid_events(why: str, event: dict[str, Any]) -> None:
    assert not schema("event").is_valid(event), why


LEAD = {
    "crossing_id": "c-42:engagement:sales_ready:3",
    "contact_id": "c-42",
    "model": "engagement",
    "threshold": "sales_ready",
    "direction": "up",
    "score": 103.5,
    "previous_score": 88.0,
    "occurred_at": "2026-03-01T10:15:00Z",
    "rules_version": "sha256:abc",
    "top_contributors": [{"rule_id": "pricing-visit", "points": 45.0}],
}


def test_the_sales_ready_schema() -> None:
    check = schema("sales_ready")
    assert check.is_valid(LEAD)
    assert check.is_valid({**LEAD, "direction": "down", "anonymous": True, "extra": 1})
    assert check.is_valid({**LEAD, "top_contributors": []})
    assert not check.is_valid({**LEAD, "anonymous": "yes"})
    assert not check.is_valid({**LEAD, "direction": "sideways"})
    assert not check.is_valid({**LEAD, "score": "103.5"})
    assert not check.is_valid({**LEAD, "occurred_at": "yesterday"})
    assert not check.is_valid({**LEAD, "top_contributors": [{"rule_id": "x"}]})
    for field in LEAD:
        assert not check.is_valid({k: v for k, v in LEAD.items() if k != field}), field


SCORES = {
    "contact_id": "c-42",
    "scores": {"engagement": 103.5, "fit": 20.0},
    "tiers": {"engagement": "sales_ready", "fit": None},
    "updated_at": "2026-03-01T10:15:00Z",
    "rules_version": "sha256:abc",
}


def test_the_scores_schema() -> None:
    check = schema("scores")
    assert check.is_valid(SCORES)
    assert check.is_valid({**SCORES, "extra": {"a": 1}})
    assert not check.is_valid({**SCORES, "scores": {"engagement": "high"}})
    assert not check.is_valid({**SCORES, "tiers": {"engagement": 3}})
    assert not check.is_valid({**SCORES, "updated_at": "2026-03-01 10:15"})
    for field in SCORES:
        assert not check.is_valid({k: v for k, v in SCORES.items() if k != field}), field


DLQ = {
    "error": "missing field: occurred_at",
    "topic": "events.page_view",
    "partition": 0,
    "offset": 17,
    "payload": "eyJ0eXBlIjogInBhZ2VfdmlldyJ9",
}


def test_the_dlq_schema() -> None:
    check = schema("dlq")
    assert check.is_valid(DLQ)
    assert check.is_valid({**DLQ, "key": "c-42"})
    assert not check.is_valid({**DLQ, "partition": -1})
    assert not check.is_valid({**DLQ, "offset": 1.5})
    assert not check.is_valid({**DLQ, "error": ""})
    for field in DLQ:
        assert not check.is_valid({k: v for k, v in DLQ.items() if k != field}), field


@pytest.mark.parametrize(("days", "expected"), [(400.0, str(400 * 86_400_000)), (-1.0, "-1")])
def test_event_retention_days_set_the_input_topics_retention_only(
    days: float, expected: str
) -> None:
    decls = load_declarations(ROOT / "topics")
    changed = topics.with_retention(decls, Settings(event_retention_days=days))
    for before, after in zip(decls, changed, strict=True):
        if before.role == "input":
            assert after.configs["retention.ms"] == expected
            assert {k: v for k, v in after.configs.items() if k != "retention.ms"} == {
                k: v for k, v in before.configs.items() if k != "retention.ms"
            }
        else:
            assert after == before
    assert sum(d.role == "input" for d in decls) == 6


def test_event_retention_days_zero_keeps_the_declarations_and_bad_values_fail() -> None:
    decls = load_declarations(ROOT / "topics")
    assert topics.with_retention(decls, Settings()) == decls
    with pytest.raises(ConfigError, match="EVENT_RETENTION_DAYS"):
        topics.with_retention(decls, Settings(event_retention_days=-3.0))


def test_deleting_topics_needs_a_prefix() -> None:
    # Checked before any Kafka call: nothing listens on this bootstrap.
    with pytest.raises(ValueError, match="without a topic prefix"):
        topics.delete_prefixed(Settings(bootstrap="127.0.0.1:1"))
