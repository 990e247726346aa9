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
  semver.org section 11, build metadata ignored. An attribute that is not a version is a mismatch.
- exists / not_exists: take no value. matches: RE2 regex search (unanchored: use ^...$ for a full
  match); RE2 runs in linear time, so no pattern can backtrack catastrophically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import ClassVar

import re2

from mabrouter.core.decide import AttributeValue

MAX_DEPTH = 8  # nested all/any/not levels
MAX_CONDITIONS = 100  # conditions in one rule tree
MAX_PATTERN_CHARS = 256
MAX_ATTRIBUTE_CHARS = 128
_MAX_VERSION_CHARS = 128  # longer attribute strings are not versions; bounds per-request parsing

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
_NUMERIC = {Operator.GT: float.__gt__, Operator.GTE: float.__ge__, Operator.LT: float.__lt__, Operator.LTE: float.__le__}
_SEMVER = {
    Operator.SEMVER_EQ: lambda a, b: a == b,
    Operator.SEMVER_NEQ: lambda a, b: a != b,
    Operator.SEMVER_GT: lambda a, b: a > b,
    Operator.SEMVER_GTE: lambda a, b: a >= b,
    Operator.SEMVER_LT: lambda a, b: a < b,
    Operator.SEMVER_LTE: lambda a, b: a <= b,
}


def parse_operator(name: str) -> Operator:
    try:
        return Operator(name)
    except ValueError:
        raise ValueError(f"unknown operator {name!r}; allowed operators: {OPERATOR_NAMES}") from None


@dataclass(frozen=True, slots=True, order=True)
class SemVer:
    """A parsed version whose field order is semver precedence (release after its prereleases)."""

    major: int
    minor: int
    patch: int
    is_release: bool
    # Numeric identifiers sort before alphanumeric ones: (0, number) < (1, text).
    prerelease: tuple[tuple[int, int | str], ...]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_id(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _identifier_ok(text: str) -> bool:
    return bool(text) and text.isascii() and all(char.isalnum() or char == "-" for char in text)


@lru_cache(maxsize=4096)  # request versions have few distinct values (app builds)
def parse_semver(text: str) -> SemVer | None:
    """Parse MAJOR.MINOR.PATCH[-prerelease][+build] with an optional leading 'v'; None if it is not one."""
    if len(text) > _MAX_VERSION_CHARS:
        return None
    text, plus, build = text.removeprefix("v").partition("+")
    if plus and not all(_identifier_ok(part) for part in build.split(".")):
        return None
    core, dash, pre = text.partition("-")
    numbers = core.split(".")
    if len(numbers) != 3 or not all(_numeric_id(n) and (n == "0" or n[0] != "0") for n in numbers):
        return None
    identifiers: list[tuple[int, int | str]] = []
    for part in pre.split(".") if dash else ():
        if not _identifier_ok(part):
            return None
        if _numeric_id(part):
            if part != "0" and part[0] == "0":
                return None  # semver.org: numeric identifiers have no leading zeros
            identifiers.append((0, int(part)))
        else:
            identifiers.append((1, part))
    major, minor, patch = (int(n) for n in numbers)
    return SemVer(major, minor, patch, not dash, tuple(identifiers))


def _compile_regex(pattern: object) -> _Test:
    if not isinstance(pattern, str):
        raise ValueError("matches takes a regex string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"regex is {len(pattern)} characters; the limit is {MAX_PATTERN_CHARS}")
    options = re2.Options()
    options.log_errors = False  # the error is raised below; RE2 would also print it to stderr
    options.never_capture = True  # only match/no-match is needed, which is the cheapest RE2 mode
    try:
        # Bytes in and out: the str wrapper of re2 maps offsets back to characters, tripling the cost.
        compiled = re2.compile(pattern.encode(), options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(
            f"invalid regex {pattern!r}: {reason} (RE2 syntax: no backreferences or lookaround)"
        ) from None
    search = compiled.search
    return lambda a: isinstance(a, str) and search(a.encode()) is not None


def _string_list(values: tuple[object, ...]) -> bool:
    return all(isinstance(item, str) for item in values)


def _compile(operator: Operator, value: object) -> tuple[object, _Test]:
    """Check `value` for `operator`; return it normalised and the attribute test. ValueError if bad."""
    name = operator.value
    if operator in (Operator.EXISTS, Operator.NOT_EXISTS):
        if value is not None:
            raise ValueError(f"{name} takes no value")
        present = operator is Operator.EXISTS
        return None, lambda a: present
    if value is None:
        raise ValueError(f"{name} needs a value")
    if operator in (Operator.EQ, Operator.NEQ):
        equal = operator is Operator.EQ
        if isinstance(value, bool):
            return value, lambda a: isinstance(a, bool) and (a is value) == equal
        if isinstance(value, str):
            return value, lambda a: isinstance(a, str) and (a == value) == equal
        if _is_number(value) and math.isfinite(value):  # type: ignore[arg-type]
            number = float(value)  # type: ignore[arg-type]
            return number, lambda a: _is_number(a) and (a == number) == equal
        raise ValueError(f"{name} takes a string, a finite number or a boolean")
    if operator in (Operator.IN, Operator.NOT_IN):
        items = tuple(value) if isinstance(value, list | tuple) else ()
        if not items:
            raise ValueError(f"{name} takes a non-empty list of strings or of numbers")
        inside = operator is Operator.IN
        if _string_list(items):
            strings = frozenset(items)
            return items, lambda a: (
                (a in strings) == inside
                if isinstance(a, str)
                else isinstance(a, list | tuple)
                and _string_list(a)
                and (not strings.isdisjoint(a)) == inside
            )
        if all(_is_number(item) and math.isfinite(item) for item in items):  # type: ignore[arg-type]
            numbers = tuple(float(item) for item in items)  # type: ignore[arg-type]
            number_set = frozenset(numbers)
            return numbers, lambda a: _is_number(a) and (a in number_set) == inside
        raise ValueError(f"{name} takes a non-empty list of strings or of numbers, not a mix")
    if operator is Operator.MATCHES:
        return value, _compile_regex(value)
    if operator in _NUMERIC:
        if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError(f"{name} takes a finite number")
        compare, bound = _NUMERIC[operator], float(value)  # type: ignore[arg-type]
        return bound, lambda a: _is_number(a) and compare(float(a), bound)  # type: ignore[arg-type]
    if operator in _SEMVER:
        version = parse_semver(value) if isinstance(value, str) else None
        if version is None:
            raise ValueError(f"{name} takes a semantic version such as '2.3.0' or 'v1.0.0-rc.1', got {value!r}")
        order = _SEMVER[operator]

        def semver_test(a: object) -> bool:
            parsed = parse_semver(a) if isinstance(a, str) else None
            return parsed is not None and order(parsed, version)

        return value, semver_test
    if not isinstance(value, str):
        raise ValueError(f"{name} takes a string")
    if operator is Operator.CONTAINS:
        return value, lambda a: (value in a) if isinstance(a, str | tuple | list) else False
    if operator is Operator.STARTS_WITH:
        return value, lambda a: isinstance(a, str) and a.startswith(value)
    return value, lambda a: isinstance(a, str) and a.endswith(value)  # ENDS_WITH, the last operator


@dataclass(frozen=True, slots=True)
class Condition:
    """`attribute operator value`; the operator may be given by name ("semver_gte"). Lists become tuples."""

    attribute: str
    operator: Operator
    value: ConditionValue = None
    _test: _Test = field(init=False, repr=False, compare=False)
    _if_missing: bool = field(init=False, repr=False, compare=False)

    depth: ClassVar[int] = 0
    size: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not isinstance(self.attribute, str) or not self.attribute:
            raise ValueError("a condition needs a non-empty attribute name")
        if len(self.attribute) > MAX_ATTRIBUTE_CHARS:
            raise ValueError(f"attribute name is {len(self.attribute)} characters; the limit is {MAX_ATTRIBUTE_CHARS}")
        operator = self.operator if isinstance(self.operator, Operator) else parse_operator(str(self.operator))
        try:
            value, test = _compile(operator, self.value)
        except ValueError as exc:
            raise ValueError(f"attribute {self.attribute!r}: {exc}") from None
        object.__setattr__(self, "operator", operator)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "_test", test)
        object.__setattr__(self, "_if_missing", operator in _TRUE_WHEN_MISSING)


def _check_children(kind: str, rules: tuple[object, ...]) -> tuple[int, int]:
    """Depth and size of a combinator over `rules`, or ValueError if a limit is passed."""
    if not rules:
        raise ValueError(f"{kind} needs at least one rule")
    for rule in rules:
        if not isinstance(rule, Condition | AllOf | AnyOf | Not):
            raise ValueError(f"{kind} takes rules (Condition, AllOf, AnyOf, Not), got {type(rule).__name__}")
    depth = 1 + max(rule.depth for rule in rules)  # type: ignore[attr-defined]
    size = sum(rule.size for rule in rules)  # type: ignore[attr-defined]
    if depth > MAX_DEPTH:
        raise ValueError(f"targeting is nested {depth} levels deep; the limit is {MAX_DEPTH}")
    if size > MAX_CONDITIONS:
        raise ValueError(f"targeting has {size} conditions; the limit is {MAX_CONDITIONS}")
    return depth, size


@dataclass(frozen=True, slots=True)
class AllOf:
    rules: tuple[Rule, ...]
    depth: int = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        depth, size = _check_children("all", self.rules)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "size", size)


@dataclass(frozen=True, slots=True)
class AnyOf:
    rules: tuple[Rule, ...]
    depth: int = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        depth, size = _check_children("any", self.rules)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "size", size)


@dataclass(frozen=True, slots=True)
class Not:
    rule: Rule
    depth: int = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        depth, size = _check_children("not", (self.rule,))
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "size", size)


Rule = Condition | AllOf | AnyOf | Not


def matches(rule: Rule, attributes: Mapping[str, AttributeValue]) -> bool:
    """Whether `attributes` satisfy `rule` (semantics in the module docstring). Never raises."""
    if isinstance(rule, Condition):
        value = attributes.get(rule.attribute)
        if value is None:
            return rule._if_missing
        return rule._test(value)
    if isinstance(rule, AllOf):
        for child in rule.rules:
            if not matches(child, attributes):
                return False
        return True
    if isinstance(rule, AnyOf):
        for child in rule.rules:
            if matches(child, attributes):
                return True
        return False
    return not matches(rule.rule, attributes)
