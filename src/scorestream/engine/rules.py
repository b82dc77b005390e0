"""Scoring plans (spec/rules.md): YAML to frozen, validated models, compiled once.

A file is validated as a whole before anything is scored. Every problem becomes one
line of :class:`RulesError` naming the file, the rule id where there is one, the YAML
path, and what is wrong; nothing starts while any remain.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from scorestream.engine.conditions import (
    MISSING,
    ConditionError,
    compile_test,
    compile_where,
    split_path,
)
from scorestream.engine.errors import ScorestreamError
from scorestream.engine.plan import AttributeRule, EventRule, Model, Threshold
from scorestream.engine.timeutil import TimeFormatError, format_duration, parse_duration

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class RulesError(ScorestreamError, ValueError):
    """A rule file is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------- structure (pydantic)


def _number(value: Any) -> Any:
    """YAML numbers for float fields: ints widen, booleans are refused (true is not 1)."""
    if isinstance(value, bool):
        raise ValueError("expected a number")
    return float(value) if isinstance(value, int) else value


Number = Annotated[float, BeforeValidator(_number)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class DecaySpec(_Strict):
    """``{half_life: 30d}`` or ``{expire_after: 90d}``."""

    half_life: str | None = None
    expire_after: str | None = None


class ThresholdSpec(_Strict):
    """``{name: mql, enter: 50, exit: 40}``; exit defaults to enter."""

    name: str = Field(pattern=NAME_PATTERN)
    enter: Number
    exit: Number | None = None


class PerPoints(_Strict):
    """``{per: value, factor: 0.1, max: 50}``: points from a numeric property."""

    per: str
    factor: Number = 1.0
    max: Number | None = None


class LimitSpec(_Strict):
    """``{count: 3, per: 1d}``, or ``{count: 1}`` for once per contact, ever."""

    count: int = Field(ge=1)
    per: str | None = None


class UnlessSpec(_Strict):
    """``{event: email_open, within: 24h, match: [campaign_id]}``."""

    event: str
    within: str
    match: list[str] = Field(default_factory=list)


class RuleSpec(_Strict):
    """One rule: an event rule (``event:``) or an attribute rule (``attribute:``)."""

    id: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    event: str | None = None
    attribute: str | None = None
    where: Any = None
    points: float | PerPoints
    limit: LimitSpec | None = None
    unless: UnlessSpec | None = None

    @field_validator("points", mode="before")
    @classmethod
    def _points(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number or {per: PATH, factor: F, max: M}")
        return float(value) if isinstance(value, int) else value


class ModelSpec(_Strict):
    """One independent score per contact."""

    description: str | None = None
    decay: DecaySpec | None = None
    min_score: Number | None = None
    max_score: Number | None = None
    thresholds: list[ThresholdSpec] = Field(default_factory=list)
    rules: list[RuleSpec] = Field(min_length=1)


class RuleFileSpec(_Strict):
    """The whole file."""

    version: Literal[1]

    @field_validator("version", mode="before")
    @classmethod
    def _integer_version(cls, value: Any) -> Any:
        if type(value) is not int:  # YAML's true/yes and 1.0 are not the version 1
            raise ValueError("unsupported version; this scorestream reads version: 1")
        return value

    description: str | None = None
    models: dict[str, ModelSpec] = Field(min_length=1)


# ---------------------------------------------------------------- compiled form


def ceil_cent(value: float) -> float:
    """The smallest multiple of 0.01 not below ``value`` (thresholds vs reported scores)."""
    return math.ceil(round(value * 100, 6)) / 100


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A validated, compiled scoring plan."""

    source: str
    version: str  # "sha256:<hex of the file bytes>"
    models: tuple[Model, ...]
    model_by_name: Mapping[str, Model]
    #: event type -> rules it triggers (awards, or starts an ``unless`` timer)
    by_type: Mapping[str, tuple[EventRule, ...]]
    #: event type -> ``unless`` rules whose timers it cancels
    cancels: Mapping[str, tuple[EventRule, ...]]
    #: attribute name -> rules that test it
    by_attribute: Mapping[str, tuple[AttributeRule, ...]]
    rules_by_key: Mapping[tuple[str, str], EventRule | AttributeRule] = field(repr=False)

    def summary(self) -> str:
        """Human summary for ``scorestream rules check``."""
        lines = [f"{self.source}: {self.version}"]
        for m in self.models:
            decay = "no decay" if m.decay == "none" else f"{m.decay} {_fmt_dur(m.decay_us)}"
            clamp = ""
            if m.min_score is not None or m.max_score is not None:
                clamp = f", clamp [{_num(m.min_score)}, {_num(m.max_score)}]"
            lines.append(
                f"  model {m.name}: {len(m.event_rules)} event rules, "
                f"{len(m.attribute_rules)} attribute rules, {decay}{clamp}"
            )
            for t in m.thresholds:
                lines.append(f"    threshold {t.name}: enter {_num(t.enter)}, exit {_num(t.exit)}")
            for r in m.event_rules:
                lines.append(f"    rule {r.id}: on {r.event}, {_describe_event_rule(r)}")
            for a in m.attribute_rules:
                lines.append(f"    rule {a.id}: attribute {a.attribute}, {_num(a.points)} points")
        return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else str(value)


def _fmt_dur(us: int) -> str:
    return format_duration(us)


def _describe_event_rule(rule: EventRule) -> str:
    if rule.fixed is not None:
        text = f"{_num(rule.fixed)} points"
    else:
        assert rule.per is not None
        parts, factor, cap = rule.per
        text = f"{'.'.join(parts)} x {_num(factor)} points" + (
            f" (max {_num(cap)})" if cap is not None else ""
        )
    if rule.limit_count is not None:
        per = f" per {_fmt_dur(rule.limit_per)}" if rule.limit_per is not None else " ever"
        text += f", at most {rule.limit_count}{per}"
    if rule.unless_event is not None:
        match = (
            f" matching {', '.join('.'.join(p) for p in rule.unless_match)}"
            if (rule.unless_match)
            else ""
        )
        text += f", unless {rule.unless_event} within {_fmt_dur(rule.unless_within)}{match}"
    return text


# ---------------------------------------------------------------- loading


#: libyaml's parser when PyYAML was built with it (the same documents, the same marks): the
#: pure-Python one took about 7 ms a file, a fifth of ``scorestream score``'s start-up
#: with the topic declarations (see ``scorestream.topics``)
_SafeBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeBase):  # type: ignore[misc]
    """SafeLoader that keeps timestamps as strings (``2026-01-01`` must not become a date)."""


def _construct_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
    """Like SafeLoader's, but a key written twice is an error, not a silent overwrite."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: let the normal constructor report it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _rule_id_at(data: Any, loc: tuple[int | str, ...]) -> str | None:
    """The id of the rule a location points into, if any."""
    if len(loc) >= 4 and loc[0] == "models" and loc[2] == "rules" and isinstance(loc[3], int):
        try:
            rule = data["models"][loc[1]]["rules"][loc[3]]
        except (KeyError, IndexError, TypeError):
            return None
        if isinstance(rule, Mapping) and isinstance(rule.get("id"), str):
            return str(rule["id"])
    return None


def _problem(source: str, data: Any, loc: tuple[int | str, ...], message: str) -> str:
    rule_id = _rule_id_at(data, loc)
    where = _yaml_path(loc) or "(top level)"
    if rule_id is not None:
        return f"{source}: rule {rule_id!r} ({where}): {message}"
    return f"{source}: {where}: {message}"


def _bool_keys(node: Any, loc: tuple[int | str, ...]) -> list[tuple[tuple[int | str, ...], Any]]:
    """Keys that YAML 1.1 turned into booleans (``on:``, ``yes:``...)."""
    found: list[tuple[tuple[int | str, ...], Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, bool):
                found.append((loc, key))
            found.extend(_bool_keys(value, (*loc, str(key))))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_bool_keys(value, (*loc, i)))
    return found


def load_rules(path: str | Path) -> RuleSet:
    """Read, validate and compile a rule file; raise :class:`RulesError` listing every problem."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RulesError([f"{source}: cannot read rule file: {exc.strerror}"]) from None
    return parse_rules(raw, source)


def parse_rules(raw: bytes | str, source: str = "<rules>") -> RuleSet:
    """Validate and compile rule file content."""
    data_bytes = raw.encode("utf-8") if isinstance(raw, str) else raw
    try:
        data = yaml.load(data_bytes, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesError([f"{source}: not valid YAML{where}: {problem}"]) from None
    if not isinstance(data, dict):
        raise RulesError([f"{source}: expected a mapping with 'version' and 'models'"])
    problems = [
        _problem(
            source,
            data,
            loc,
            f"key {key!r} was read as a boolean by YAML; "
            + (
                "write 'event:' if you meant 'on:', or quote the key"
                if key is True
                else "quote the key"
            ),
        )
        for loc, key in _bool_keys(data, ())
    ]
    if problems:  # the structure is unreadable where YAML made booleans of keys
        raise RulesError(_dedupe(problems + _salvage(data, source)))
    try:
        spec = RuleFileSpec.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            # pydantic reports a union's members as loc parts; keep the YAML path only
            loc = tuple(p for p in loc if p not in {"float", "PerPoints", "str", "int"})
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = f"unknown key {loc[-1]!r}"
            elif loc == ("version",) and err["type"] in {"literal_error", "value_error"}:
                message = "unsupported version; this scorestream reads version: 1"
            elif err["type"] == "string_pattern_mismatch":
                message = (
                    "names may use letters, digits, '_', '.', '-' (no ':'), "
                    "start with a letter or digit, 64 characters at most"
                )
            problems.append(_problem(source, data, loc, message))
        problems.extend(_salvage(data, source))
        raise RulesError(_dedupe(problems)) from None
    version = "sha256:" + hashlib.sha256(data_bytes).hexdigest()
    return _compile(spec, data, source, version)


class _Problems:
    """Collects problems, each placed in the file (rule id, YAML path)."""

    def __init__(self, source: str, data: Any) -> None:
        self.source = source
        self.data = data
        self.problems: list[str] = []

    def fail(self, loc: tuple[int | str, ...], message: str) -> None:
        self.problems.append(_problem(self.source, self.data, loc, message))

    def duration(self, loc: tuple[int | str, ...], text: str) -> int:
        """A duration in microseconds; a bad one is recorded as a problem (and gives 0)."""
        try:
            return parse_duration(text)
        except TimeFormatError as exc:
            self.fail(loc, str(exc))
            return 0


def _salvage(data: Any, source: str) -> list[str]:
    """Semantic problems of the parts that are structurally valid.

    When the file as a whole does not validate, the rules (and decays) that do are still
    compiled, so one run reports every problem: a typo in one rule does not hide a bad
    duration in another.
    """
    report = _Problems(source, data)
    problems, fail, duration = report.problems, report.fail, report.duration

    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        return problems
    for model_name, raw_model in models.items():
        if not isinstance(raw_model, dict):
            continue
        mloc: tuple[int | str, ...] = ("models", str(model_name))
        try:
            decay = DecaySpec.model_validate(raw_model.get("decay") or {})
        except ValidationError:
            decay = DecaySpec()
        for key in ("half_life", "expire_after"):
            value = getattr(decay, key)
            if value is not None:
                duration((*mloc, "decay", key), value)
        raw_rules = raw_model.get("rules")
        if not isinstance(raw_rules, list):
            continue
        for i, raw_rule in enumerate(raw_rules):
            try:
                rule = RuleSpec.model_validate(raw_rule)
            except ValidationError:
                continue  # its structural problems are already reported
            _compile_rule(str(model_name), (*mloc, "rules", i), rule, fail, duration)
    return problems


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _compile(spec: RuleFileSpec, data: Any, source: str, version: str) -> RuleSet:
    report = _Problems(source, data)
    problems, fail, duration = report.problems, report.fail, report.duration

    models: list[Model] = []
    for model_name, mspec in spec.models.items():
        mloc: tuple[int | str, ...] = ("models", model_name)
        if not _NAME.match(model_name):
            fail(mloc, "model names may use letters, digits, '_', '.', '-' (no ':')")
        decay: Literal["none", "half_life", "expire_after"] = "none"
        decay_us = 0
        if mspec.decay is not None:
            d = mspec.decay
            if (d.half_life is None) == (d.expire_after is None):
                fail((*mloc, "decay"), "give exactly one of half_life or expire_after")
            elif d.half_life is not None:
                decay, decay_us = "half_life", duration((*mloc, "decay", "half_life"), d.half_life)
            elif d.expire_after is not None:
                decay = "expire_after"
                decay_us = duration((*mloc, "decay", "expire_after"), d.expire_after)
        if (
            mspec.min_score is not None
            and mspec.max_score is not None
            and mspec.min_score > mspec.max_score
        ):
            fail((*mloc, "min_score"), "min_score is greater than max_score")
        thresholds: list[Threshold] = []
        seen_thresholds: set[str] = set()
        for i, t in enumerate(mspec.thresholds):
            tloc = (*mloc, "thresholds", i)
            if t.name in seen_thresholds:
                fail((*tloc, "name"), f"duplicate threshold name {t.name!r}")
            seen_thresholds.add(t.name)
            exit_ = t.enter if t.exit is None else t.exit
            if exit_ > t.enter:
                fail(
                    (*tloc, "exit"),
                    f"exit ({_num(exit_)}) must not be above enter ({_num(t.enter)})",
                )
            thresholds.append(
                Threshold(
                    name=t.name,
                    enter=t.enter,
                    exit=exit_,
                    enter_bound=ceil_cent(t.enter) - 0.005,
                    exit_bound=ceil_cent(exit_) - 0.005,
                )
            )
        thresholds.sort(key=lambda t: (t.enter, t.name))
        event_rules: list[EventRule] = []
        attribute_rules: list[AttributeRule] = []
        seen_ids: set[str] = set()
        for i, r in enumerate(mspec.rules):
            rloc = (*mloc, "rules", i)
            if r.id in seen_ids:
                fail((*rloc, "id"), f"duplicate rule id {r.id!r} in model {model_name!r}")
            seen_ids.add(r.id)
            compiled = _compile_rule(model_name, rloc, r, fail, duration)
            if isinstance(compiled, AttributeRule):
                attribute_rules.append(compiled)
            elif compiled is not None:
                event_rules.append(compiled)
        if mspec.thresholds and not (event_rules or attribute_rules):
            fail(mloc, "thresholds without rules")
        models.append(
            Model(
                name=model_name,
                decay=decay,
                decay_us=decay_us,
                min_score=mspec.min_score,
                max_score=mspec.max_score,
                thresholds=tuple(thresholds),
                event_rules=tuple(sorted(event_rules, key=lambda r: r.id)),
                attribute_rules=tuple(sorted(attribute_rules, key=lambda r: r.id)),
            )
        )
    if problems:
        raise RulesError(_dedupe(problems))
    models.sort(key=lambda m: m.name)
    by_type: dict[str, list[EventRule]] = {}
    cancels: dict[str, list[EventRule]] = {}
    by_attribute: dict[str, list[AttributeRule]] = {}
    rules_by_key: dict[tuple[str, str], EventRule | AttributeRule] = {}
    for m in models:
        for er in m.event_rules:
            by_type.setdefault(er.event, []).append(er)
            if er.unless_event is not None:
                cancels.setdefault(er.unless_event, []).append(er)
            rules_by_key[(m.name, er.id)] = er
        for ar in m.attribute_rules:
            by_attribute.setdefault(ar.attribute, []).append(ar)
            rules_by_key[(m.name, ar.id)] = ar
    return RuleSet(
        source=source,
        version=version,
        models=tuple(models),
        model_by_name={m.name: m for m in models},
        by_type={k: tuple(v) for k, v in by_type.items()},
        cancels={k: tuple(v) for k, v in cancels.items()},
        by_attribute={k: tuple(v) for k, v in by_attribute.items()},
        rules_by_key=rules_by_key,
    )


def _sub(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split(".") if p)


def _compile_rule(
    model_name: str,
    rloc: tuple[int | str, ...],
    r: RuleSpec,
    fail: Callable[[tuple[int | str, ...], str], None],
    duration: Callable[[tuple[int | str, ...], str], int],
) -> EventRule | AttributeRule | None:
    """One rule's semantic checks and compiled form (None when it cannot be compiled)."""
    if (r.event is None) == (r.attribute is None):
        fail(rloc, "give exactly one of 'event' (event rule) or 'attribute' (attribute rule)")
        return None
    if r.attribute is not None:
        for key in ("limit", "unless"):
            if getattr(r, key) is not None:
                fail((*rloc, key), f"{key} applies to event rules only")
        if isinstance(r.points, PerPoints):
            fail((*rloc, "points"), "attribute rules award fixed points")
            return None
        try:
            test = (
                compile_test(r.where, "") if r.where is not None else (lambda x: x is not MISSING)
            )
        except ConditionError as exc:
            fail((*rloc, "where", *_sub(exc.path)), exc.message)
            return None
        return AttributeRule(model_name, r.id, r.attribute, test, float(r.points))
    assert r.event is not None
    if not _TYPE.match(r.event):
        fail((*rloc, "event"), f"invalid event type {r.event!r}")
    match = None
    if r.where is not None:
        try:
            match = compile_where(r.where, "")
        except ConditionError as exc:
            fail((*rloc, "where", *_sub(exc.path)), exc.message)
    fixed: float | None = None
    per: tuple[tuple[str, ...], float, float | None] | None = None
    if isinstance(r.points, PerPoints):
        try:
            parts = split_path(r.points.per)
        except ConditionError as exc:
            fail((*rloc, "points", "per"), exc.message)
            parts = ("",)
        if r.points.max is not None and r.points.max < 0:
            fail((*rloc, "points", "max"), "max is a cap in absolute value; give it >= 0")
        per = (parts, r.points.factor, r.points.max)
    else:
        fixed = float(r.points)
        if not math.isfinite(fixed):
            fail((*rloc, "points"), "points must be a finite number")
    limit_count = limit_per = None
    if r.limit is not None:
        limit_count = r.limit.count
        if r.limit.per is not None:
            limit_per = duration((*rloc, "limit", "per"), r.limit.per)
    unless_event = None
    unless_within = 0
    unless_match: tuple[tuple[str, ...], ...] = ()
    if r.unless is not None:
        unless_event = r.unless.event
        if not _TYPE.match(unless_event):
            fail((*rloc, "unless", "event"), f"invalid event type {unless_event!r}")
        unless_within = duration((*rloc, "unless", "within"), r.unless.within)
        try:
            unless_match = tuple(split_path(p) for p in r.unless.match)
        except ConditionError as exc:
            fail((*rloc, "unless", "match"), exc.message)
    return EventRule(
        model=model_name,
        id=r.id,
        event=r.event,
        match=match,
        fixed=fixed,
        per=per,
        limit_count=limit_count,
        limit_per=limit_per,
        unless_event=unless_event,
        unless_within=unless_within,
        unless_match=unless_match,
    )
