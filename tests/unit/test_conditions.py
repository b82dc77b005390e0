"""``where`` conditions (spec/rules.md, Conditions), compiled once into predicates.

Event rules: a map of property path to test, all must hold; a bare scalar is equality.
A path missing from the event fails every test but ``exists: false`` and ``ne``.
Attribute rules: the test applies directly to the attribute value.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorestream.engine.conditions import (
    MISSING,
    OPERATORS,
    ConditionError,
    compile_test,
    compile_where,
    glob_to_regex,
)
from scorestream.engine.events import event_from_dict
from scorestream.engine.rules import parse_rules
from scorestream.engine.scorer import Engine
from scorestream.engine.timeutil import format_ts, parse_ts


def holds(where: dict[str, Any], props: dict[str, Any]) -> bool:
    return compile_where(where, "")(props)


def test_the_operator_list_is_the_spec_list() -> None:
    spec = {
        "eq", "ne", "in", "not_in", "glob", "regex", "gt", "gte", "lt", "lte", "exists", "contains",
    }  # fmt: skip
    assert set(OPERATORS) == spec


# ------------------------------------------------------------------ each operator, present value

PRESENT = [
    # (test, value, expected)
    ({"eq": "/"}, "/", True),
    ({"eq": "/"}, "/x", False),
    ("/", "/", True),  # bare scalar = eq
    ("/", "/x", False),
    ({"eq": 5}, 5.0, True),  # JSON numbers: 5 == 5.0
    ({"eq": None}, None, True),
    ({"ne": "/"}, "/x", True),
    ({"ne": "/"}, "/", False),
    ({"in": ["CEO", "CTO"]}, "CTO", True),
    ({"in": ["CEO", "CTO"]}, "cto", False),  # case-sensitive
    ({"in": [1, 2]}, 2.0, True),
    ({"not_in": ["CEO", "CTO"]}, "Intern", True),
    ({"not_in": ["CEO", "CTO"]}, "CEO", False),
    ({"glob": "/blog/*"}, "/blog/how-to", True),
    ({"glob": "/blog/*"}, "/blog/", True),  # * is any run, also empty
    ({"glob": "/blog/*"}, "/en/blog/x", False),  # anchored at both ends
    ({"glob": "/p?"}, "/p1", True),
    ({"glob": "/p?"}, "/p", False),  # ? is exactly one character
    ({"glob": "/p?"}, "/p12", False),
    ({"regex": "/docs/[a-z]+"}, "/docs/api", True),
    ({"regex": "(?i)ceo|cto"}, "CTO", True),
    ({"gt": 100}, 101, True),
    ({"gt": 100}, 100, False),
    ({"gte": 100}, 100, True),
    ({"gte": 100}, 99.99, False),
    ({"lt": 100}, 99.5, True),
    ({"lt": 100}, 100, False),
    ({"lte": 100}, 100.0, True),
    ({"lte": 100}, 100.01, False),
    ({"gt": -1.5}, 0, True),
    ({"exists": True}, "anything", True),
    ({"exists": True}, None, True),  # present, even if null
    ({"exists": False}, "anything", False),
    ({"contains": "pricing"}, "/en/pricing/enterprise", True),
    ({"contains": "pricing"}, "/en/Pricing", False),
]


@pytest.mark.parametrize(("test", "value", "expected"), PRESENT, ids=repr)
def test_operator_on_a_present_value(test: Any, value: Any, expected: bool) -> None:
    assert holds({"url": test}, {"url": value}) is expected
    assert compile_test(test, "")(value) is expected  # same semantics for attribute rules


# ------------------------------------------------------------------ missing path

MISSING_CASES = [
    ({"eq": "/"}, False),
    ("/", False),
    ({"eq": None}, False),  # missing is not null
    ({"ne": "/"}, True),
    ({"in": ["/"]}, False),
    ({"not_in": ["/"]}, False),
    ({"glob": "*"}, False),
    ({"regex": ".*"}, False),
    ({"gt": 0}, False),
    ({"gte": 0}, False),
    ({"lt": 0}, False),
    ({"lte": 0}, False),
    ({"exists": True}, False),
    ({"exists": False}, True),
    ({"contains": ""}, False),
]


@pytest.mark.parametrize(("test", "expected"), MISSING_CASES, ids=repr)
def test_a_missing_path_fails_every_test_but_exists_false_and_ne(test: Any, expected: bool) -> None:
    assert holds({"url": test}, {"title": "Home"}) is expected
    assert holds({"url": test}, {}) is expected
    assert compile_test(test, "")(MISSING) is expected  # a missing attribute likewise


def test_every_operator_is_covered_by_the_missing_cases() -> None:
    covered = {next(iter(t)) for t, _ in MISSING_CASES if isinstance(t, dict)}
    assert covered == set(OPERATORS)


# ------------------------------------------------------------------ nested paths


def test_nested_path_reads_into_objects() -> None:
    props = {"form_id": "contact", "fields": {"company": "ACME GmbH", "size": 250}}
    assert holds({"fields.company": {"glob": "ACME*"}}, props)
    assert holds({"fields.size": {"gte": 200}}, props)
    assert not holds({"fields.size": {"gte": 300}}, props)
    assert holds({"fields.missing": {"exists": False}}, props)
    assert not holds({"fields.company": "Other"}, props)


def test_nested_path_through_a_non_object_is_missing() -> None:
    # `fields` is a string here: fields.company does not exist.
    props = {"fields": "company=ACME"}
    assert not holds({"fields.company": {"exists": True}}, props)
    assert holds({"fields.company": {"exists": False}}, props)
    assert holds({"fields.company": {"ne": "ACME"}}, props)
    # and a list is not an object either
    assert not holds({"items.0": {"exists": True}}, {"items": ["a"]})


def test_a_dotted_path_does_not_read_a_dotted_key() -> None:
    # `fields.company` means nesting, not a key that contains a dot.
    assert not holds({"fields.company": "ACME"}, {"fields.company": "ACME"})


# ------------------------------------------------------------------ wrongly typed values


@pytest.mark.parametrize("op", ["gt", "gte", "lt", "lte"])
@pytest.mark.parametrize("value", ["500", True, False, None, [500], {"v": 500}])
def test_numeric_comparisons_fail_on_non_numbers(op: str, value: Any) -> None:
    # 0 is below and above nothing in a way that would let a string or boolean slip through.
    assert not holds({"value": {op: 0}}, {"value": value})
    assert not holds({"value": {op: 1}}, {"value": value})


def test_true_is_not_1_and_1_is_not_true() -> None:
    assert not holds({"flag": 1}, {"flag": True})
    assert not holds({"flag": True}, {"flag": 1})
    assert not holds({"flag": {"eq": 0}}, {"flag": False})
    assert not holds({"flag": {"in": [1]}}, {"flag": True})
    assert not holds({"flag": {"in": [True]}}, {"flag": 1})
    assert holds({"flag": {"not_in": [1]}}, {"flag": True})
    assert holds({"flag": {"ne": 1}}, {"flag": True})
    assert holds({"flag": True}, {"flag": True})


def test_a_number_is_not_its_string() -> None:
    assert not holds({"plan": 1}, {"plan": "1"})
    assert not holds({"plan": "1"}, {"plan": 1})
    assert not holds({"plan": {"in": ["1"]}}, {"plan": 1})


@pytest.mark.parametrize("op", ["glob", "regex", "contains"])
def test_string_operators_fail_on_non_strings(op: str) -> None:
    arg = {"glob": "5*", "regex": "5.*", "contains": "5"}[op]
    for value in (5, 55.5, True, None, ["5"], {"5": 5}):
        assert not holds({"x": {op: arg}}, {"x": value}), value


def test_glob_knows_only_star_and_question_mark() -> None:
    # Brackets, dots and backslashes are literal characters.
    assert holds({"url": {"glob": "/p[1]"}}, {"url": "/p[1]"})
    assert not holds({"url": {"glob": "/p[12]"}}, {"url": "/p1"})
    assert not holds({"url": {"glob": "/a.b"}}, {"url": "/aXb"})
    assert holds({"url": {"glob": "/a.b"}}, {"url": "/a.b"})
    assert holds({"url": {"glob": "/a+b"}}, {"url": "/a+b"})
    assert not holds({"url": {"glob": "/a+b"}}, {"url": "/aab"})
    assert holds({"url": {"glob": "c:\\*"}}, {"url": "c:\\dir"})
    # * also spans slashes and newlines: it is "any run of characters"
    assert holds({"url": {"glob": "/*/x"}}, {"url": "/a/b/x"})
    assert holds({"url": {"glob": "*"}}, {"url": "line1\nline2"})


# Glob patterns and values over a small alphabet, so that prefixes, suffixes and
# infixes often match; "**", "*?" and "?" shapes included.
_GLOB_CHARS = st.sampled_from(["a", "b", "/", ".", "\n", "*", "?", "é"])


@settings(max_examples=400, deadline=None)
@given(
    pattern=st.lists(_GLOB_CHARS, max_size=8).map("".join),
    value=st.lists(_GLOB_CHARS.filter(lambda c: c not in "*?"), max_size=10).map("".join),
)
def test_every_glob_shape_matches_as_its_regular_expression(pattern: str, value: str) -> None:
    # Literal patterns with stars at the ends take string tests instead of a regex:
    # they must agree with the regex everywhere.
    expected = glob_to_regex(pattern).fullmatch(value) is not None
    assert holds({"x": {"glob": pattern}}, {"x": value}) is expected


def test_regex_is_a_full_match() -> None:
    assert not holds({"url": {"regex": "blog"}}, {"url": "/blog/x"})  # search would match
    assert not holds({"url": {"regex": "/blog"}}, {"url": "/blog/x"})  # prefix would match
    assert not holds({"url": {"regex": "/blog/x"}}, {"url": "/blog/x\n"})  # `$` would match
    assert holds({"url": {"regex": ".*blog.*"}}, {"url": "/blog/x"})
    assert holds({"url": {"regex": "/blog/x|/news/y"}}, {"url": "/news/y"})


def test_contains_is_a_substring_test_not_membership() -> None:
    assert holds({"title": {"contains": "Price"}}, {"title": "Our Price List"})
    assert not holds({"tags": {"contains": "a"}}, {"tags": ["a", "b"]})


# ------------------------------------------------------------------ several tests at once


def test_several_operators_on_one_path_must_all_hold() -> None:
    where = {"value": {"gte": 50, "lt": 200, "ne": 100}}
    assert holds(where, {"value": 50})
    assert holds(where, {"value": 199.99})
    assert not holds(where, {"value": 100})  # ne fails
    assert not holds(where, {"value": 200})  # lt fails
    assert not holds(where, {"value": 49})  # gte fails


def test_several_paths_must_all_hold() -> None:
    where = {
        "url": {"glob": "/pricing*"},
        "utm_source": {"in": ["google", "bing"]},
        "referrer": {"exists": False},
        "fields.plan": {"ne": "free"},
    }
    base = {"url": "/pricing/enterprise", "utm_source": "google"}
    assert holds(where, base)
    assert not holds(where, {**base, "url": "/blog"})
    assert not holds(where, {**base, "utm_source": "facebook"})
    assert not holds(where, {**base, "referrer": "https://example.com"})
    assert not holds(where, {**base, "fields": {"plan": "free"}})
    assert holds(where, {**base, "fields": {"plan": "pro"}})


def test_an_empty_where_holds_for_every_event() -> None:
    assert holds({}, {})
    assert holds({}, {"url": "/"})


# ------------------------------------------------------------------ compile-time errors


@pytest.mark.parametrize(
    ("test", "path", "message"),
    [
        ({"gt": "10"}, "v.gt", "gt takes a number"),
        ({"lte": True}, "v.lte", "lte takes a number"),
        ({"in": "CEO"}, "v.in", "in takes a list of strings, numbers or booleans"),
        ({"not_in": [["a"]]}, "v.not_in", "not_in takes a list of strings, numbers or booleans"),
        ({"exists": "yes"}, "v.exists", "exists takes true or false"),
        ({"glob": 5}, "v.glob", "glob takes a string pattern"),
        ({"contains": 5}, "v.contains", "contains takes a string"),
        ({"eq": [1]}, "v.eq", "eq takes a string, number, boolean or null"),
        ({}, "v", "an empty test; give an operator such as eq or glob"),
        (["a", "b"], "v", "a bare list is ambiguous; write {in: [...]}"),
    ],
    ids=repr,
)
def test_invalid_tests_are_rejected_with_their_path(test: Any, path: str, message: str) -> None:
    with pytest.raises(ConditionError) as info:
        compile_test(test, "v")
    assert (info.value.path, info.value.message) == (path, message)


def test_invalid_regex_is_rejected_when_compiled() -> None:
    with pytest.raises(ConditionError) as info:
        compile_test({"regex": "(?P<x"}, "url")
    assert info.value.path == "url.regex"
    assert info.value.message.startswith("invalid regular expression '(?P<x': ")


@pytest.mark.parametrize("path", ["fields..company", ".url", "url."])
def test_empty_path_segments_are_rejected(path: str) -> None:
    with pytest.raises(ConditionError) as info:
        compile_where({path: "x"}, "")
    assert info.value.message == f"invalid property path {path!r}"


# ------------------------------------------------------------------ attribute rules (engine)

ATTRIBUTE_PLAN = """\
version: 1
models:
  fit:
    rules:
      - {id: not-student, attribute: job_title, where: {ne: Student}, points: 5}
      - {id: no-title, attribute: job_title, where: {exists: false}, points: 3}
      - {id: has-country, attribute: country, points: 1}
      - {id: big, attribute: company.size, where: {gte: 200}, points: 20}
      - {id: leader, attribute: job_title, where: {in: [CEO, CTO]}, points: 15}
"""
T0 = parse_ts("2026-03-01T00:00:00Z")


def _fit_after(profiles: list[dict[str, Any]]) -> float:
    """The fit score of a contact after a page view and these profile updates, in order."""
    engine = Engine(parse_rules(ATTRIBUTE_PLAN, "fit.yaml"))
    state = engine.new_state("c-1")
    events = [{"type": "page_view", "properties": {"url": "/"}}] + [
        {"type": "profile_update", "properties": {"attributes": attrs}} for attrs in profiles
    ]
    for i, body in enumerate(events):
        ts = format_ts(T0 + i * 1_000_000)
        engine.apply(
            state,
            event_from_dict({**body, "event_id": f"e{i}", "contact_id": "c-1", "occurred_at": ts}),
        )
    return engine.scores(state, T0 + len(events) * 1_000_000)["fit"]


def test_attribute_rules_follow_the_current_attributes() -> None:
    # has-country 1, not-student 5 (CTO != Student), leader 15, big 20 (nested path)
    full = {"country": "DE", "job_title": "CTO", "company": {"size": 250}}
    assert _fit_after([full]) == 41.0
    assert _fit_after([full, full]) == 41.0  # the same profile twice changes nothing
    assert _fit_after([full, {"job_title": "Student"}]) == 21.0  # not-student and leader go
    assert _fit_after([full, {"company": {"size": 199}}]) == 21.0  # big goes


def test_a_removed_attribute_is_tested_as_missing() -> None:
    # job_title removed: ne and exists:false pass (5 + 3), country still 1
    assert _fit_after([{"country": "DE", "job_title": "CTO"}, {"job_title": None}]) == 9.0


def test_a_never_set_attribute_is_tested_as_missing() -> None:
    # Same current attributes as test_a_removed_attribute_is_tested_as_missing ({country: DE}),
    # so the same score: has-country 1 + not-student 5 + no-title 3.
    assert _fit_after([{"country": "DE"}]) == 9.0


def test_a_contact_without_any_profile_gets_points_for_missing_attribute_tests() -> None:
    assert _fit_after([]) == 8.0  # not-student 5 + no-title 3
