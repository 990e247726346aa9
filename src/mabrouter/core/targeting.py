"""Targeting rules: which requests an experiment applies to, judged on the request's attributes.

A rule is a Condition on one attribute, or AllOf / AnyOf / Not over rules. Every node validates itself
when built (bad value types, regexes, versions, depth and size limits raise ValueError), and a
Condition precompiles its operand then, so `matches` does no parsing on the request path.

Semantics of `matches(rule, attributes)`; it never raises:
- Missing attribute (absent or None): every operator is false, except the negative ones -- neq, not_in,
  semver_neq and not_exists -- which are true: an attribute the request does not carry is genuinely not
  equal to, and not in, anything. This is GrowthBook's behaviour (its shared SDK test cases evaluate
  `$ne` and `$nin` on a missing attribute to true, growthbook/growthbook cases.json and PR #6996) and
  flagd's (JSONLogic `var` yields null, and null != "x"). So "everyone except RU and CN" keeps serving
  requests that carry no country. To require the attribute, AllOf it with `exists`.
- Type mismatch: false for every operator, negative ones included (neq "premium" on the number 3 is
  false, not true): a wrong type is a caller bug, not evidence. Bools are not numbers, numbers are not
  strings; nothing is coerced. Hence Not(eq x) and neq x differ when the type is wrong or the
  attribute is absent.
- eq / neq: value str, number or bool; the attribute must be of the same kind.
- in / not_in: value a non-empty list of strings or of numbers. A list attribute is in when any of
  its elements is, and not_in when none is.
- contains: a string attribute contains the substring, or a list attribute has the element.
- starts_with / ends_with: string attribute and value. gt / gte / lt / lte: finite numbers.
- semver_*: MAJOR.MINOR.PATCH[-prerelease][+build], optional leading 'v'; prerelease precedence as
  semver.org section 11, build metadata ignored (core/semver.py). A non-version attribute mismatches.
- exists / not_exists: take no value. matches: RE2 regex search (unanchored: use ^...$ for a full
  match); RE2 runs in linear time, so no pattern can backtrack catastrophically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from operator import ge, gt, le, lt
from typing import ClassVar, TypeGuard

import re2

from mabrouter.core.model import AttributeValue
from mabrouter.core.semver import parse_semver, version_test

MAX_DEPTH = 8  # nested all/any/not levels
MAX_CONDITIONS = 100  # conditions in one rule tree
MAX_PATTERN_CHARS = 256
MAX_ATTRIBUTE_CHARS = 128

ConditionValue = str | float | bool | tuple[str, ...] | tuple[float, ...] | None
_Test = Callable[[object], bool]


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
_TRUE_WHEN_MISSING = frozenset({Operator.NEQ, Operator.NOT_IN, Operator.SEMVER_NEQ, Operator.NOT_EXISTS})


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
_Compiled = tuple[ConditionValue, _Test]


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


_COMPILERS: dict[Operator, Callable[[Operator, object], _Compiled]] = {
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


@dataclass(frozen=True, slots=True)
class Condition:
    """`attribute operator value`. An operator name ("semver_gte") is converted; lists become tuples."""

    attribute: str
    operator: Operator
    value: ConditionValue = None
    _test: _Test = field(init=False, repr=False, compare=False)
    _if_missing: bool = field(init=False, repr=False, compare=False)

    depth: ClassVar[int] = 0
    size: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not isinstance(self.attribute, str) or not 0 < len(self.attribute) <= MAX_ATTRIBUTE_CHARS:
            raise ValueError(f"a condition needs an attribute name of 1-{MAX_ATTRIBUTE_CHARS} characters")
        operator = self.operator
        if not isinstance(operator, Operator):
            operator = parse_operator(str(operator))
        if self.value is None and operator not in (Operator.EXISTS, Operator.NOT_EXISTS):
            raise ValueError(f"attribute {self.attribute!r}: {operator.value} needs a value")
        try:
            value, test = _COMPILERS[operator](operator, self.value)
        except ValueError as exc:
            raise ValueError(f"attribute {self.attribute!r}: {exc}") from None
        object.__setattr__(self, "operator", operator)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "_test", test)
        object.__setattr__(self, "_if_missing", operator in _TRUE_WHEN_MISSING)


def _measure(kind: str, rules: tuple[object, ...]) -> tuple[int, int]:
    """Depth and condition count of a combinator over `rules`; ValueError past a limit."""
    if not rules:
        raise ValueError(f"{kind} needs at least one rule")
    depth, size = 0, 0
    for rule in rules:
        if not isinstance(rule, Condition | AllOf | AnyOf | Not):
            raise TypeError(f"{kind} takes rules (Condition, AllOf, AnyOf or Not), not {type(rule).__name__}")
        depth, size = max(depth, rule.depth + 1), size + rule.size
    if depth > MAX_DEPTH:
        raise ValueError(f"targeting is nested {depth} levels deep; the limit is {MAX_DEPTH}")
    if size > MAX_CONDITIONS:
        raise ValueError(f"targeting has {size} conditions; the limit is {MAX_CONDITIONS}")
    return depth, size


@dataclass(frozen=True, slots=True)
class _Group:
    rules: tuple[Rule, ...]
    depth: int = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)

    kind: ClassVar[str]
    # Evaluation stops at the first child whose result is this: False for all, True for any.
    decisive: ClassVar[bool]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        depth, size = _measure(self.kind, self.rules)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "size", size)


@dataclass(frozen=True, slots=True)
class AllOf(_Group):
    kind: ClassVar[str] = "all"
    decisive: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class AnyOf(_Group):
    kind: ClassVar[str] = "any"
    decisive: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Not:
    rule: Rule
    depth: int = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        depth, size = _measure("not", (self.rule,))
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "size", size)


Rule = Condition | AllOf | AnyOf | Not


def matches(rule: Rule, attributes: Mapping[str, AttributeValue]) -> bool:
    """Whether `attributes` satisfy `rule` (semantics in the module docstring). Never raises."""
    if isinstance(rule, Condition):
        value = attributes.get(rule.attribute)
        return rule._if_missing if value is None else rule._test(value)
    if isinstance(rule, _Group):
        # A plain loop, not all()/any() over a generator: half the cost, and this is the request path.
        for child in rule.rules:
            if matches(child, attributes) is rule.decisive:
                return rule.decisive
        return not rule.decisive
    return not matches(rule.rule, attributes)
