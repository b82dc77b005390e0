"""Invalid rule files fail at load, naming the file, the rule id and the YAML path.

spec/rules.md: "A file is validated as a whole before anything is scored: an error
names the file, the rule ``id`` or the YAML path, and what is wrong, and nothing
starts." Every problem is one line of ``RulesError.problems``, of the form
``<file>: rule '<id>' (<yaml.path>): <what>`` or ``<file>: <yaml.path>: <what>``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from scorestream.engine.rules import RulesError, load_rules

ROOT = Path(__file__).resolve().parents[2]
PLANS = sorted((ROOT / "rules").glob("*.yaml"))

# A valid one-model plan; `{extra_model}` and `{extra_rules}` are spliced in by the tests.
HEAD = """\
version: 1
models:
  engagement:
{model_keys}    rules:
      - id: home-visit
        event: page_view
        where: {{url: "/"}}
        points: 5
{extra_rules}"""


def plan(model_keys: str = "", extra_rules: str = "") -> str:
    return HEAD.format(model_keys=model_keys, extra_rules=extra_rules)


def problems_of(
    tmp_path: Path, text: str | bytes, name: str = "plan.yaml"
) -> tuple[str, list[str]]:
    """Write the file, load it, return (path as named in messages, problems)."""
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert info.value.problems, "a RulesError must list at least one problem"
    assert str(info.value) == "\n".join(info.value.problems)
    return str(path), info.value.problems


def test_the_base_plan_is_valid(tmp_path: Path) -> None:
    # Guard for every test below: the errors come from the change, not from the base.
    path = tmp_path / "plan.yaml"
    path.write_text(plan(), encoding="utf-8")
    rules = load_rules(path)
    assert [m.name for m in rules.models] == ["engagement"]


# ------------------------------------------------------------------ one test per kind


def test_unknown_key_typo_is_named_with_rule_and_path(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: article-read
        event: page_view
        pionts: 10
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert (
        f"{src}: rule 'article-read' (models.engagement.rules[1].pionts): unknown key 'pionts'"
        in problems
    )
    # ... and, since `points` is then absent, that is reported for the same rule too.
    assert any(
        p.startswith(f"{src}: rule 'article-read' (models.engagement.rules[1].points): ")
        and "required" in p
        for p in problems
    ), problems


def test_on_instead_of_event_is_explained(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare `on` as the boolean true.
    text = plan(
        extra_rules="""\
      - id: pricing-visit
        on: page_view
        points: 15
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: rule 'pricing-visit' (models.engagement.rules[1]): key True was read as a "
        "boolean by YAML; write 'event:' if you meant 'on:', or quote the key"
    ]


@pytest.mark.parametrize("bad", ["1 day", "5x", "0d", "1.5h", "-1d", "1D", "24"])
def test_bad_limit_duration(tmp_path: Path, bad: str) -> None:
    text = plan(
        extra_rules=f"""\
      - id: article-read
        event: page_view
        points: 10
        limit: {{count: 3, per: "{bad}"}}
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: rule 'article-read' (models.engagement.rules[1].limit.per): "
        f"invalid duration {bad!r}: use a whole number and one of s, m, h, d, w (e.g. 24h)"
    ]


def test_bad_unless_duration(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: email-ignored
        event: email_sent
        unless: {event: email_open, within: 1 day}
        points: -5
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: rule 'email-ignored' (models.engagement.rules[1].unless.within): "
        "invalid duration '1 day': use a whole number and one of s, m, h, d, w (e.g. 24h)"
    ]


@pytest.mark.parametrize("kind", ["half_life", "expire_after"])
def test_bad_decay_duration_names_the_model_path(tmp_path: Path, kind: str) -> None:
    text = plan(model_keys=f"    decay: {{{kind}: 0d}}\n")
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: models.engagement.decay.{kind}: invalid duration '0d': "
        "use a whole number and one of s, m, h, d, w (e.g. 24h)"
    ]


def test_decay_with_both_kinds(tmp_path: Path) -> None:
    text = plan(model_keys="    decay: {half_life: 30d, expire_after: 90d}\n")
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: models.engagement.decay: give exactly one of half_life or expire_after"
    ]


def test_unknown_operator(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: article-read
        event: page_view
        where: {url: {like: "/blog/%"}}
        points: 10
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{src}: rule 'article-read' (models.engagement.rules[1].where.url.like): "
        "unknown operator 'like'"
    )
    # The message lists the operators one may use instead.
    for op in ("eq", "ne", "in", "not_in", "glob", "regex", "gt", "gte", "lt", "lte"):
        assert op in problems[0]


def test_regex_that_does_not_compile_fails_at_load(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: docs
        event: page_view
        where: {url: {regex: "/docs/(unclosed"}}
        points: 1
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{src}: rule 'docs' (models.engagement.rules[1].where.url.regex): "
        "invalid regular expression '/docs/(unclosed': "
    )


def test_gt_with_a_string(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: big-basket
        event: cart_add
        where: {value: {gt: "100"}}
        points: 20
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: rule 'big-basket' (models.engagement.rules[1].where.value.gt): gt takes a number"
    ]


def test_in_with_a_scalar_on_a_nested_path(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: acme-form
        event: form_submit
        where: {fields.company: {in: acme}}
        points: 20
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: rule 'acme-form' (models.engagement.rules[1].where.fields.company.in): "
        "in takes a list of strings, numbers or booleans"
    ]


def test_attribute_rule_condition_errors_name_the_where_path(tmp_path: Path) -> None:
    text = """\
version: 1
models:
  fit:
    rules:
      - {id: a, attribute: job_title, where: {like: x}, points: 1}
      - {id: b, attribute: job_title, where: {regex: "["}, points: 1}
      - {id: c, attribute: company_size, where: {gte: "200"}, points: 1}
"""
    src, problems = problems_of(tmp_path, text)
    assert len(problems) == 3
    assert problems[0].startswith(f"{src}: rule 'a' (models.fit.rules[0].where.like): unknown op")
    assert problems[1].startswith(
        f"{src}: rule 'b' (models.fit.rules[1].where.regex): invalid regular expression '[': "
    )
    assert problems[2] == f"{src}: rule 'c' (models.fit.rules[2].where.gte): gte takes a number"


def test_duplicate_rule_id_in_a_model(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: home-visit
        event: page_view
        where: {url: "/index.html"}
        points: 5
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: rule 'home-visit' (models.engagement.rules[1].id): "
        "duplicate rule id 'home-visit' in model 'engagement'"
    ]


def test_same_rule_id_in_two_models_is_fine(tmp_path: Path) -> None:
    text = plan() + (
        "  fit:\n    rules:\n      - {id: home-visit, attribute: country, points: 1}\n"
    )
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    rules = load_rules(path)
    assert [m.name for m in rules.models] == ["engagement", "fit"]


def test_duplicate_threshold_name(tmp_path: Path) -> None:
    text = plan(
        model_keys="""\
    thresholds:
      - {name: mql, enter: 50}
      - {name: mql, enter: 60}
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: models.engagement.thresholds[1].name: duplicate threshold name 'mql'"
    ]


def test_exit_above_enter(tmp_path: Path) -> None:
    text = plan(model_keys="    thresholds:\n      - {name: mql, enter: 50, exit: 60}\n")
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: models.engagement.thresholds[0].exit: exit (60) must not be above enter (50)"
    ]


def test_exit_defaults_to_enter(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(plan(model_keys="    thresholds:\n      - {name: mql, enter: 50}\n"))
    (threshold,) = load_rules(path).models[0].thresholds
    assert (threshold.enter, threshold.exit) == (50.0, 50.0)


def test_min_score_above_max_score(tmp_path: Path) -> None:
    text = plan(model_keys="    min_score: 10\n    max_score: 5\n")
    src, problems = problems_of(tmp_path, text)
    assert problems == [f"{src}: models.engagement.min_score: min_score is greater than max_score"]


@pytest.mark.parametrize(
    ("rule_id", "keys"),
    [
        ("both", "        event: page_view\n        attribute: job_title\n"),
        ("neither", ""),
    ],
)
def test_rule_with_both_or_neither_of_event_and_attribute(
    tmp_path: Path, rule_id: str, keys: str
) -> None:
    text = plan(extra_rules=f"      - id: {rule_id}\n{keys}        points: 1\n")
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: rule '{rule_id}' (models.engagement.rules[1]): "
        "give exactly one of 'event' (event rule) or 'attribute' (attribute rule)"
    ]


def test_limit_and_unless_on_an_attribute_rule(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: cto
        attribute: job_title
        where: CTO
        points: 15
        limit: {count: 1}
        unless: {event: email_open, within: 1d}
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: rule 'cto' (models.engagement.rules[1].limit): limit applies to event rules only",
        f"{src}: rule 'cto' (models.engagement.rules[1].unless): "
        "unless applies to event rules only",
    ]


def test_per_property_points_on_an_attribute_rule(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: size
        attribute: company_size
        points: {per: company_size, factor: 0.1}
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{src}: rule 'size' (models.engagement.rules[1].points): "
        "attribute rules award fixed points"
    ]


NAME_RULES = "names may use letters, digits, '_', '.', '-' (no ':')"


def test_model_name_with_a_colon(tmp_path: Path) -> None:
    text = plan().replace("  engagement:", "  'eng:agement':")
    src, problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith(f"{src}: models.eng:agement: model ")
    assert NAME_RULES in problems[0]


def test_rule_id_with_a_colon(tmp_path: Path) -> None:
    text = plan(
        extra_rules='      - id: "blog:read"\n        event: page_view\n        points: 1\n'
    )
    src, problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith(f"{src}: rule 'blog:read' (models.engagement.rules[1].id): ")
    assert NAME_RULES in problems[0]


def test_threshold_name_with_a_colon(tmp_path: Path) -> None:
    text = plan(model_keys="    thresholds:\n      - {name: 'sales:ready', enter: 100}\n")
    src, problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith(f"{src}: models.engagement.thresholds[0].name: ")
    assert NAME_RULES in problems[0]


def test_missing_version(tmp_path: Path) -> None:
    src, problems = problems_of(tmp_path, plan().replace("version: 1\n", ""))
    assert len(problems) == 1
    assert problems[0].startswith(f"{src}: version: ")
    assert "required" in problems[0].lower()


@pytest.mark.parametrize(
    "version",
    ["2", "0", "'1'", "true", "yes", "1.0"],
)
def test_unsupported_version(tmp_path: Path, version: str) -> None:
    src, problems = problems_of(tmp_path, plan().replace("version: 1", f"version: {version}"))
    assert problems == [f"{src}: version: unsupported version; this scorestream reads version: 1"]


def test_not_yaml(tmp_path: Path) -> None:
    src, problems = problems_of(tmp_path, "version: 1\nmodels: [unclosed\n  - : :\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"{src}: not valid YAML (line 3, column 5): ")


def test_not_utf8(tmp_path: Path) -> None:
    src, problems = problems_of(tmp_path, b"version: 1\nmodels: \xff\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"{src}: not valid YAML")


@pytest.mark.parametrize("text", ["", "just a sentence\n", "- a\n- b\n"])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    src, problems = problems_of(tmp_path, text)
    assert problems == [f"{src}: expected a mapping with 'version' and 'models'"]


def test_empty_models(tmp_path: Path) -> None:
    src, problems = problems_of(tmp_path, "version: 1\nmodels: {}\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"{src}: models: ")
    assert "at least 1" in problems[0]


def test_model_without_rules(tmp_path: Path) -> None:
    src, problems = problems_of(tmp_path, "version: 1\nmodels:\n  engagement:\n    rules: []\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"{src}: models.engagement.rules: ")
    assert "at least 1" in problems[0]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert info.value.problems == [f"{path}: cannot read rule file: No such file or directory"]


# ------------------------------------------------------------------ several problems at once


def test_several_compile_problems_are_reported_together(tmp_path: Path) -> None:
    text = plan(
        model_keys="""\
    decay: {half_life: 5x}
    min_score: 10
    max_score: 5
    thresholds:
      - {name: mql, enter: 50, exit: 60}
""",
        extra_rules="""\
      - id: home-visit
        event: page_view
        points: 1
      - id: article-read
        event: page_view
        points: 10
        limit: {count: 3, per: 1 day}
      - id: broken-regex
        event: page_view
        where: {url: {regex: "("}}
        points: 1
""",
    )
    src, problems = problems_of(tmp_path, text)
    expected_prefixes = [
        f"{src}: models.engagement.decay.half_life: invalid duration '5x'",
        f"{src}: models.engagement.min_score: min_score is greater than max_score",
        f"{src}: models.engagement.thresholds[0].exit: exit (60) must not be above enter (50)",
        f"{src}: rule 'home-visit' (models.engagement.rules[1].id): duplicate rule id",
        f"{src}: rule 'article-read' (models.engagement.rules[2].limit.per): invalid duration",
        f"{src}: rule 'broken-regex' (models.engagement.rules[3].where.url.regex): invalid reg",
    ]
    for prefix in expected_prefixes:
        assert sum(p.startswith(prefix) for p in problems) == 1, (prefix, problems)
    assert len(problems) == len(expected_prefixes)


def test_several_structure_problems_are_reported_together(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: a
        event: page_view
        points: 1
        colour: red
      - id: b
        event: page_view
        points: 1
        limit: {count: 0}
"""
    ) + ("  fit:\n    rules:\n      - {id: c, attribute: country, points: 1, wieght: 2}\n")
    src, problems = problems_of(tmp_path, text)
    assert f"{src}: rule 'a' (models.engagement.rules[1].colour): unknown key 'colour'" in problems
    assert f"{src}: rule 'c' (models.fit.rules[0].wieght): unknown key 'wieght'" in problems
    assert any(
        p.startswith(f"{src}: rule 'b' (models.engagement.rules[2].limit.count): ")
        for p in problems
    ), problems
    assert len(problems) == 3


def test_structure_and_compile_problems_are_reported_together(tmp_path: Path) -> None:
    text = plan(
        extra_rules="""\
      - id: article-read
        event: page_view
        points: 10
        limit: {count: 3, per: 1 day}
      - id: pricing-visit
        event: page_view
        pionts: 15
"""
    )
    src, problems = problems_of(tmp_path, text)
    assert (
        f"{src}: rule 'pricing-visit' (models.engagement.rules[2].pionts): unknown key 'pionts'"
        in problems
    )
    assert any(
        p.startswith(f"{src}: rule 'article-read' (models.engagement.rules[1].limit.per): ")
        for p in problems
    ), problems


# ------------------------------------------------------------------ the shipped plans


@pytest.mark.parametrize("path", PLANS, ids=[p.name for p in PLANS])
def test_shipped_plans_load_and_summarise_every_model_and_threshold(path: Path) -> None:
    rules = load_rules(path)
    summary = rules.summary()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert summary.splitlines()[0] == f"{path}: {rules.version}"
    assert set(rules.model_by_name) == set(raw["models"])
    for model_name, model in raw["models"].items():
        assert f"  model {model_name}: " in summary
        for threshold in model.get("thresholds", []):
            assert f"    threshold {threshold['name']}: enter " in summary
        for rule in model["rules"]:
            assert f"    rule {rule['id']}: " in summary


@pytest.mark.parametrize("path", PLANS, ids=[p.name for p in PLANS])
def test_rules_version_is_the_sha256_of_the_file_bytes(path: Path) -> None:
    rules = load_rules(path)
    assert rules.version == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert rules.source == str(path)


def test_rules_version_changes_with_any_byte_even_a_comment(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(plan(), encoding="utf-8")
    first = load_rules(path).version
    path.write_text(plan() + "# a comment\n", encoding="utf-8")
    second = load_rules(path).version
    assert first != second
    assert second == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_key_written_twice_is_an_error(tmp_path: Path) -> None:
    text = (
        "version: 1\nmodels:\n  engagement:\n    rules:\n"
        "      - {id: a, event: page_view, points: 5}\n"
        "  engagement:\n    rules:\n      - {id: b, event: page_view, points: 7}\n"
    )
    src, problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith(f"{src}: not valid YAML (line 6, column 3): duplicate key ")
    assert "'engagement'" in problems[0]
