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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from mabrouter.core.model import AttributeValue
from mabrouter.core.operators import (
    COMPILERS,
    MAX_PATTERN_CHARS,
    OPERATOR_NAMES,
    TRUE_WHEN_MISSING,
    ConditionValue,
    Operator,
    Test,
    parse_operator,
)

__all__ = [
    "MAX_PATTERN_CHARS",
    "OPERATOR_NAMES",
    "AllOf",
    "AnyOf",
    "Condition",
    "ConditionValue",
    "Not",
    "Operator",
    "Rule",
    "matches",
    "parse_operator",
]

MAX_DEPTH = 8  # nested all/any/not levels
MAX_CONDITIONS = 100  # conditions in one rule tree
MAX_ATTRIBUTE_CHARS = 128

Predicate = Callable[[Mapping[str, AttributeValue]], bool]  # a rule, compiled


@dataclass(frozen=True, slots=True)
class Condition:
    """`attribute operator value`. An operator name ("semver_gte") is converted; lists become tuples."""

    attribute: str
    operator: Operator
    value: ConditionValue = None
    test: Predicate = field(init=False, repr=False, compare=False)  # matches(self, attributes)

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
            value, test = COMPILERS[operator](operator, self.value)
        except ValueError as exc:
            raise ValueError(f"attribute {self.attribute!r}: {exc}") from None
        object.__setattr__(self, "operator", operator)
        object.__setattr__(self, "value", value)
        if_missing = operator in TRUE_WHEN_MISSING
        object.__setattr__(self, "test", _condition_predicate(self.attribute, test, if_missing))


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
    test: Predicate = field(init=False, repr=False, compare=False)  # matches(self, attributes)

    kind: ClassVar[str]
    # Evaluation stops at the first child whose result is this: False for all, True for any.
    decisive: ClassVar[bool]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        depth, size = _measure(self.kind, self.rules)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "test", _group_predicate(tuple(r.test for r in self.rules), self.decisive))


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
    test: Predicate = field(init=False, repr=False, compare=False)  # matches(self, attributes)

    def __post_init__(self) -> None:
        depth, size = _measure("not", (self.rule,))
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "size", size)
        inner = self.rule.test
        object.__setattr__(self, "test", lambda attributes: not inner(attributes))


Rule = Condition | AllOf | AnyOf | Not


def matches(rule: Rule, attributes: Mapping[str, AttributeValue]) -> bool:
    """Whether `attributes` satisfy `rule` (semantics in the module docstring). Never raises."""
    return rule.test(attributes)


# Every rule carries its own predicate, built once with the rule from its children's: evaluating a tree
# is then one closure call per node, with no type dispatch on the request path.


def _condition_predicate(attribute: str, test: Test, if_missing: bool) -> Predicate:
    def condition(attributes: Mapping[str, AttributeValue]) -> bool:
        value = attributes.get(attribute)
        return if_missing if value is None else test(value)

    return condition


def _group_predicate(children: tuple[Predicate, ...], decisive: bool) -> Predicate:
    def group(attributes: Mapping[str, AttributeValue]) -> bool:
        # A plain loop, not all()/any() over a generator: half the cost, and this is the request path.
        for child in children:
            if child(attributes) is decisive:
                return decisive
        return not decisive

    return group
