"""Targeting operators and their operand compilers: each checks a condition's value once, when the rule
is built, and returns the test that runs on the request path (semantics: core/targeting.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from enum import Enum
from operator import ge, gt, le, lt
from typing import TypeGuard

import re2

from mabrouter.core.semver import parse_semver, version_test

MAX_PATTERN_CHARS = 256

ConditionValue = str | float | bool | tuple[str, ...] | tuple[float, ...] | None
Test = Callable[[object], bool]


class Operator(Enum):
    EQ = "eq"
    NEQ = "neq"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    SEMVER_EQ = "semver_eq"
    SEMVER_NEQ = "semver_neq"
    SEMVER_GT = "semver_gt"
    SEMVER_GTE = "semver_gte"
    SEMVER_LT = "semver_lt"
    SEMVER_LTE = "semver_lte"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"
    MATCHES = "matches"


OPERATOR_NAMES = ", ".join(operator.value for operator in Operator)
TRUE_WHEN_MISSING = frozenset({Operator.NEQ, Operator.NOT_IN, Operator.SEMVER_NEQ, Operator.NOT_EXISTS})


def parse_operator(name: str) -> Operator:
    try:
        return Operator(name)
    except ValueError:
        raise ValueError(f"unknown operator {name!r}; allowed operators: {OPERATOR_NAMES}") from None


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _all_strings(values: Iterable[object]) -> bool:
    return all(isinstance(item, str) for item in values)


# Each compiler checks the value for its operator and returns (normalised value, attribute test).
# ValueError, not TypeError, for a wrong value type: pydantic turns only ValueError into a field error.
_Compiled = tuple[ConditionValue, Test]


def _presence(operator: Operator, value: object) -> _Compiled:
    if value is not None:
        raise ValueError(f"{operator.value} takes no value")
    present = operator is Operator.EXISTS  # reached only when the attribute is there
    return None, lambda a: present


def _equality(operator: Operator, value: object) -> _Compiled:
    equal = operator is Operator.EQ
    if isinstance(value, bool):
        return value, lambda a: isinstance(a, bool) and (a is value) == equal
    if isinstance(value, str):
        return value, lambda a: isinstance(a, str) and (a == value) == equal
    if _is_number(value) and math.isfinite(value):
        number = float(value)
        return number, lambda a: _is_number(a) and (a == number) == equal
    raise ValueError(f"{operator.value} takes a string, a finite number or a boolean")


def _membership(operator: Operator, value: object) -> _Compiled:
    inside = operator is Operator.IN
    items = tuple(value) if isinstance(value, list | tuple) else ()
    if items and _all_strings(items):
        strings = frozenset(items)

        def string_test(a: object) -> bool:
            if isinstance(a, str):
                return (a in strings) == inside
            return isinstance(a, list | tuple) and _all_strings(a) and strings.isdisjoint(a) != inside

        return items, string_test
    if items and all(_is_number(item) and math.isfinite(item) for item in items):
        numbers = frozenset(float(item) for item in items)
        return tuple(float(item) for item in items), lambda a: _is_number(a) and (a in numbers) == inside
    raise ValueError(f"{operator.value} takes a non-empty list of strings or of numbers (not a mix)")


# C comparison functions: cheaper on the request path than lambdas.
_ORDER: dict[Operator, Callable[[float, float], bool]] = {
    Operator.GT: gt,
    Operator.GTE: ge,
    Operator.LT: lt,
    Operator.LTE: le,
}
_VERSION_OPERATORS = tuple(operator for operator in Operator if operator.value.startswith("semver_"))


def _numeric(operator: Operator, value: object) -> _Compiled:
    if _is_number(value) and math.isfinite(value):
        order, bound = _ORDER[operator], float(value)
        return bound, lambda a: _is_number(a) and order(a, bound)
    raise ValueError(f"{operator.value} takes a finite number")


def _version(operator: Operator, value: object) -> _Compiled:
    version = parse_semver(value) if isinstance(value, str) else None
    if version is None or not isinstance(value, str):
        raise ValueError(
            f"{operator.value} takes a semantic version like '2.3.0' or 'v1.0.0-rc.1', not {value!r}"
        )
    return value, version_test(operator.value.removeprefix("semver_"), version)


def _text(operator: Operator, value: object) -> _Compiled:
    if isinstance(value, str):
        if operator is Operator.CONTAINS:
            return value, lambda a: isinstance(a, str | list | tuple) and value in a
        if operator is Operator.STARTS_WITH:
            return value, lambda a: isinstance(a, str) and a.startswith(value)
        return value, lambda a: isinstance(a, str) and a.endswith(value)
    raise ValueError(f"{operator.value} takes a string")


def _regex(operator: Operator, value: object) -> _Compiled:
    if not isinstance(value, str) or len(value) > MAX_PATTERN_CHARS:
        raise ValueError(f"{operator.value} takes a regex string of at most {MAX_PATTERN_CHARS} characters")
    options = re2.Options()
    options.log_errors = False  # the error is raised below; RE2 would also print it to stderr
    options.never_capture = True  # only match / no match is needed: RE2's cheapest mode
    try:
        # Bytes, not str: re2's str wrapper maps byte offsets back to characters, tripling the cost.
        search = re2.compile(value.encode(), options).search
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(
            f"invalid regex {value!r}: {reason} (RE2 syntax: no backreferences, no lookaround)"
        ) from None
    return value, lambda a: isinstance(a, str) and search(a.encode()) is not None


COMPILERS: dict[Operator, Callable[[Operator, object], _Compiled]] = {
    Operator.EXISTS: _presence,
    Operator.NOT_EXISTS: _presence,
    Operator.EQ: _equality,
    Operator.NEQ: _equality,
    Operator.IN: _membership,
    Operator.NOT_IN: _membership,
    Operator.CONTAINS: _text,
    Operator.STARTS_WITH: _text,
    Operator.ENDS_WITH: _text,
    Operator.MATCHES: _regex,
    **dict.fromkeys(_ORDER, _numeric),
    **dict.fromkeys(_VERSION_OPERATORS, _version),
}
