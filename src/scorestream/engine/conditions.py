"""``where`` conditions compiled once into plain predicates (spec/rules.md, Conditions).

A path missing from the event fails every test but ``exists: false`` and ``ne``.
Comparisons are type-aware: ``true`` never equals ``1``, and ``gt``/``gte``/``lt``/
``lte`` accept numbers only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from scorestream.engine.errors import ScorestreamError

MISSING: Final = object()
Predicate = Callable[[Any], bool]

OPERATORS = (
    "eq",
    "ne",
    "in",
    "not_in",
    "glob",
    "regex",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
    "contains",
)


class ConditionError(ScorestreamError, ValueError):
    """A condition cannot be compiled; ``path`` is relative to the condition."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def same(a: Any, b: Any) -> bool:
    """JSON equality: booleans equal only booleans, 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    return bool(a == b)


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """``*`` is any run of characters, ``?`` one character; everything else is literal."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _glob(pattern: str) -> Predicate:
    """A glob test; the usual shapes (a literal with ``*`` at one or both ends) without
    a regular expression: a prefix test is about a tenth of a regex match's cost."""
    inner = pattern.strip("*")
    if "*" not in inner and "?" not in inner:
        starts, ends = pattern.startswith("*"), pattern.endswith("*")
        if not starts and not ends:
            return lambda x: isinstance(x, str) and x == inner
        if not starts:
            return lambda x: isinstance(x, str) and x.startswith(inner)
        if not ends:
            return lambda x: isinstance(x, str) and x.endswith(inner)
        return lambda x: isinstance(x, str) and inner in x
    rx = glob_to_regex(pattern)
    return lambda x: isinstance(x, str) and rx.fullmatch(x) is not None


def _membership(values: list[Any]) -> Predicate:
    # Strings are by far the common case: a frozenset lookup; the rest falls back to same().
    strings = frozenset(v for v in values if isinstance(v, str))
    others = [v for v in values if not isinstance(v, str)]

    def member(x: Any) -> bool:
        if isinstance(x, str):
            return x in strings
        return any(same(x, v) for v in others)

    return member


def compile_operator(op: str, arg: Any, path: str) -> Predicate:
    """One operator test over a value that may be :data:`MISSING`."""
    where = f"{path}.{op}" if path else op
    if op == "eq":
        if not _is_scalar(arg):
            raise ConditionError(where, "eq takes a string, number, boolean or null")
        return lambda x: x is not MISSING and same(x, arg)
    if op == "ne":
        if not _is_scalar(arg):
            raise ConditionError(where, "ne takes a string, number, boolean or null")
        return lambda x: x is MISSING or not same(x, arg)
    if op in {"in", "not_in"}:
        if not isinstance(arg, list) or not all(_is_scalar(v) for v in arg):
            raise ConditionError(where, f"{op} takes a list of strings, numbers or booleans")
        member = _membership(arg)
        if op == "in":
            return lambda x: x is not MISSING and member(x)
        return lambda x: x is not MISSING and not member(x)
    if op == "glob":
        if not isinstance(arg, str):
            raise ConditionError(where, "glob takes a string pattern")
        return _glob(arg)
    if op == "regex":
        if not isinstance(arg, str):
            raise ConditionError(where, "regex takes a string")
        try:
            rx = re.compile(arg)
        except re.error as exc:
            raise ConditionError(where, f"invalid regular expression {arg!r}: {exc}") from None
        return lambda x: isinstance(x, str) and rx.fullmatch(x) is not None
    if op in {"gt", "gte", "lt", "lte"}:
        if not _is_number(arg):
            raise ConditionError(where, f"{op} takes a number")
        bound = float(arg)
        if op == "gt":
            return lambda x: _is_number(x) and x > bound
        if op == "gte":
            return lambda x: _is_number(x) and x >= bound
        if op == "lt":
            return lambda x: _is_number(x) and x < bound
        return lambda x: _is_number(x) and x <= bound
    if op == "exists":
        if not isinstance(arg, bool):
            raise ConditionError(where, "exists takes true or false")
        if arg:
            return lambda x: x is not MISSING
        return lambda x: x is MISSING
    if op == "contains":
        if not isinstance(arg, str):
            raise ConditionError(where, "contains takes a string")
        return lambda x: isinstance(x, str) and arg in x
    raise ConditionError(where, f"unknown operator {op!r}; use one of {', '.join(OPERATORS)}")


def compile_test(test: Any, path: str) -> Predicate:
    """A bare scalar (equality) or a mapping of operators, all of which must hold."""
    if isinstance(test, Mapping):
        if not test:
            raise ConditionError(path, "an empty test; give an operator such as eq or glob")
        preds = [compile_operator(str(op), arg, path) for op, arg in test.items()]
        if len(preds) == 1:
            return preds[0]
        return lambda x: all(p(x) for p in preds)
    if isinstance(test, list):
        raise ConditionError(path, "a bare list is ambiguous; write {in: [...]}")
    return compile_operator("eq", test, path)


def split_path(path: str) -> tuple[str, ...]:
    """``fields.company`` to ``("fields", "company")``."""
    parts = tuple(path.split("."))
    if not all(parts):
        raise ConditionError(path, f"invalid property path {path!r}")
    return parts


def lookup(props: Mapping[str, Any], parts: tuple[str, ...]) -> Any:
    """The value at a dotted path, or :data:`MISSING`."""
    value: Any = props
    for part in parts:
        value = _get(value, part)
        if value is MISSING:
            return MISSING
    return value


def _get(value: Any, name: str) -> Any:
    """``value[name]`` of a mapping, or :data:`MISSING` (also when ``value`` is none)."""
    # JSON objects are dicts: the exact type check is far cheaper than an ABC check, and
    # compiled, a dict's own lookup than a method call on a ``Mapping``
    if type(value) is dict:
        table: dict[str, Any] = value
        return table.get(name, MISSING)
    if isinstance(value, Mapping):
        return value.get(name, MISSING)
    return MISSING


def compile_where(where: Any, path: str) -> Callable[[Mapping[str, Any]], bool]:
    """An event rule's ``where``: a mapping of property path to test, all must hold."""
    if not isinstance(where, Mapping):
        raise ConditionError(path, "where must be a mapping of property path to test")
    checks: list[tuple[tuple[str, ...], Predicate]] = []
    for key, test in where.items():
        if not isinstance(key, str):
            raise ConditionError(path, f"property path must be a string, got {key!r}")
        parts = split_path(key)
        checks.append((parts, compile_test(test, f"{path}.{key}")))
    if len(checks) == 1:
        ((parts, pred),) = checks
        if len(parts) == 1:
            (name,) = parts
            return lambda props: pred(_get(props, name))
        return lambda props: pred(lookup(props, parts))

    def all_hold(props: Mapping[str, Any]) -> bool:
        return all(pred(lookup(props, parts)) for parts, pred in checks)

    return all_hold
