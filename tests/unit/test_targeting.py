"""Targeting rules: operator semantics, missing attributes and type mismatches, limits, and safety."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mabrouter.core.model import AttributeValue
from mabrouter.core.semver import parse_semver
from mabrouter.core.targeting import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_PATTERN_CHARS,
    OPERATOR_NAMES,
    AllOf,
    AnyOf,
    Condition,
    Not,
    Operator,
    Rule,
    matches,
)

Op = Operator


def check(operator: Operator, value: Any, attribute: Any) -> bool:
    return matches(Condition("a", operator, value), {"a": attribute})


EXAMPLE = AllOf(
    (
        Condition("country", Op.IN, ("US", "CA")),
        AnyOf((Condition("app_version", Op.SEMVER_GTE, "2.3.0"), Condition("tier", Op.EQ, "premium"))),
        Not(Condition("internal", Op.EQ, True)),
    )
)
BASE: dict[str, AttributeValue] = {
    "country": "US",
    "app_version": "2.2.9",
    "tier": "premium",
    "internal": False,
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, True),
        ({"country": "FR"}, False),
        ({"tier": "free"}, False),
        ({"tier": "free", "app_version": "2.3.0"}, True),
        ({"tier": "free", "app_version": "2.3.0-rc.1"}, False),
        ({"internal": True}, False),
        ({"internal": None}, True),
    ],
)
def test_the_example_rule(change: dict[str, AttributeValue], expected: bool) -> None:
    assert matches(EXAMPLE, {**BASE, **change}) is expected


def test_example_rule_without_the_attributes() -> None:
    assert not matches(EXAMPLE, {})
    assert matches(EXAMPLE, {"country": "CA", "tier": "premium"})  # internal absent: Not(eq) is true


@pytest.mark.parametrize(
    ("operator", "value", "attribute", "expected"),
    [
        (Op.EQ, "premium", "premium", True),
        (Op.EQ, "premium", "Premium", False),
        (Op.EQ, 3, 3.0, True),
        (Op.EQ, 3.5, 3, False),
        (Op.EQ, True, True, True),
        (Op.EQ, False, True, False),
        (Op.NEQ, "premium", "free", True),
        (Op.NEQ, "premium", "premium", False),
        (Op.NEQ, 2, 3, True),
        (Op.NEQ, True, False, True),
        (Op.IN, ["US", "CA"], "CA", True),
        (Op.IN, ["US", "CA"], "us", False),
        (Op.IN, [1, 2.5], 2.5, True),
        (Op.IN, [1, 2.5], 2, False),
        (Op.IN, ["beta", "staff"], ("x", "staff"), True),
        (Op.IN, ["beta", "staff"], ("x", "y"), False),
        (Op.IN, ["beta", "staff"], (), False),
        (Op.NOT_IN, ["RU", "CN"], "US", True),
        (Op.NOT_IN, ["RU", "CN"], "CN", False),
        (Op.NOT_IN, [1, 2], 3, True),
        (Op.NOT_IN, ["beta"], ("x", "beta"), False),
        (Op.NOT_IN, ["beta"], ("x", "y"), True),
        (Op.NOT_IN, ["beta"], (), True),
        (Op.CONTAINS, "bot", "Googlebot/2.1", True),
        (Op.CONTAINS, "bot", "Firefox", False),
        (Op.CONTAINS, "beta", ("alpha", "beta"), True),
        (Op.CONTAINS, "bet", ("alpha", "beta"), False),
        (Op.STARTS_WITH, "en-", "en-GB", True),
        (Op.STARTS_WITH, "en-", "fr-en-", False),
        (Op.ENDS_WITH, "@example.com", "ann@example.com", True),
        (Op.ENDS_WITH, "@example.com", "ann@example.com.evil", False),
        (Op.GT, 10, 10.5, True),
        (Op.GT, 10, 10, False),
        (Op.GTE, 10, 10, True),
        (Op.GTE, 10, 9.99, False),
        (Op.LT, 0, -1, True),
        (Op.LT, 0, 0, False),
        (Op.LTE, 0, 0.0, True),
        (Op.LTE, 0, 0.1, False),
        (Op.GT, 1, math.inf, True),
        (Op.GT, 1, math.nan, False),
        (Op.LTE, 1, math.nan, False),
        (Op.EXISTS, None, "", True),
        (Op.EXISTS, None, False, True),
        (Op.NOT_EXISTS, None, "x", False),
        (Op.MATCHES, r"(Mobile|Tablet)", "Android Mobile Browser", True),
        (Op.MATCHES, r"(Mobile|Tablet)", "Desktop", False),
        (Op.MATCHES, r"^\d+$", "12345", True),
        (Op.MATCHES, r"^\d+$", "12a45", False),
        (Op.MATCHES, r"^.{4}$", "caf\u00e9", True),  # UTF-8 mode: '.' is a character, not a byte
        (Op.MATCHES, "(?i)^CAF\u00c9$", "caf\u00e9", True),
    ],
)
def test_operators(operator: Operator, value: Any, attribute: Any, expected: bool) -> None:
    assert check(operator, value, attribute) is expected


NEGATIVE = {Op.NEQ, Op.NOT_IN, Op.SEMVER_NEQ, Op.NOT_EXISTS}
VALID_VALUE: dict[Operator, Any] = {
    Op.EQ: "x",
    Op.NEQ: "x",
    Op.IN: ["x", "y"],
    Op.NOT_IN: ["x", "y"],
    Op.CONTAINS: "x",
    Op.STARTS_WITH: "x",
    Op.ENDS_WITH: "x",
    Op.GT: 1,
    Op.GTE: 1,
    Op.LT: 1,
    Op.LTE: 1,
    Op.SEMVER_EQ: "1.0.0",
    Op.SEMVER_NEQ: "1.0.0",
    Op.SEMVER_GT: "1.0.0",
    Op.SEMVER_GTE: "1.0.0",
    Op.SEMVER_LT: "1.0.0",
    Op.SEMVER_LTE: "1.0.0",
    Op.EXISTS: None,
    Op.NOT_EXISTS: None,
    Op.MATCHES: "x",
}


def test_every_operator_has_a_valid_value_in_these_tests() -> None:
    assert set(VALID_VALUE) == set(Operator)


@pytest.mark.parametrize("operator", list(Operator))
def test_a_missing_attribute_matches_only_negative_operators(operator: Operator) -> None:
    rule = Condition("a", operator, VALID_VALUE[operator])
    assert matches(rule, {}) is (operator in NEGATIVE)
    assert matches(rule, {"other": "x"}) is (operator in NEGATIVE)
    assert matches(rule, {"a": None}) is (operator in NEGATIVE), "None is the same as absent"  # type: ignore[dict-item]


# For each operator, attribute values of a type the operator does not take.
MISMATCHES: dict[Operator, list[Any]] = {
    Op.EQ: [1, True, ("x",)],
    Op.NEQ: [1, True, ("y",)],
    Op.IN: [1, True, (1, 2), ("x", 1)],
    Op.NOT_IN: [1, True, (1, 2), ("z", 1)],
    Op.CONTAINS: [1, True],
    Op.STARTS_WITH: [1, True, ("x",)],
    Op.ENDS_WITH: [1, True, ("x",)],
    Op.GT: ["5", True, ("5",)],
    Op.GTE: ["5", True, ("5",)],
    Op.LT: ["0", False, ("0",)],
    Op.LTE: ["0", False, ("0",)],
    Op.SEMVER_EQ: [1, True, "1.0", "banana", ("1.0.0",)],
    Op.SEMVER_NEQ: [1, True, "1.0", "banana", ("2.0.0",)],
    Op.SEMVER_GT: [2, True, "2.0", ("2.0.0",)],
    Op.SEMVER_GTE: [2, True, "2.0", ("2.0.0",)],
    Op.SEMVER_LT: [0, False, "0.1", ("0.1.0",)],
    Op.SEMVER_LTE: [0, False, "0.1", ("0.1.0",)],
    Op.MATCHES: [1, True, ("x",)],
}


@pytest.mark.parametrize(
    ("operator", "attribute"), [(op, attribute) for op, values in MISMATCHES.items() for attribute in values]
)
def test_a_type_mismatch_is_false_even_for_negative_operators(operator: Operator, attribute: Any) -> None:
    assert check(operator, VALID_VALUE[operator], attribute) is False


@pytest.mark.parametrize(
    ("operator", "value", "attribute"),
    [
        (Op.EQ, 1, True),
        (Op.EQ, True, 1),
        (Op.IN, [0, 1], True),
        (Op.GT, 0, True),
        (Op.LTE, 1, False),
        (Op.EQ, 0, False),
    ],
)
def test_bools_are_not_numbers(operator: Operator, value: Any, attribute: Any) -> None:
    assert check(operator, value, attribute) is False


def test_neq_differs_from_not_eq_only_on_missing_or_mismatched_attributes() -> None:
    neq, not_eq = Condition("a", Op.NEQ, "x"), Not(Condition("a", Op.EQ, "x"))
    cases: list[tuple[dict[str, AttributeValue], bool]] = [
        ({"a": "x"}, True),
        ({"a": "y"}, True),
        ({}, True),
        ({"a": 1.0}, False),
    ]
    for attributes, same in cases:
        assert (matches(neq, attributes) == matches(not_eq, attributes)) is same, attributes


# semver.org section 11, in increasing precedence.
SEMVER_CHAIN = [
    "0.9.9",
    "1.0.0-0",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "1.10.0",
    "2.0.0",
    "10.0.0",
]


@pytest.mark.parametrize("low", range(len(SEMVER_CHAIN)))
def test_semver_precedence(low: int) -> None:
    for high in range(len(SEMVER_CHAIN)):
        a, b = SEMVER_CHAIN[low], SEMVER_CHAIN[high]
        assert check(Op.SEMVER_LT, b, a) is (low < high), (a, b)
        assert check(Op.SEMVER_LTE, b, a) is (low <= high), (a, b)
        assert check(Op.SEMVER_GT, b, a) is (low > high), (a, b)
        assert check(Op.SEMVER_GTE, b, a) is (low >= high), (a, b)
        assert check(Op.SEMVER_EQ, b, a) is (low == high), (a, b)
        assert check(Op.SEMVER_NEQ, b, a) is (low != high), (a, b)


@pytest.mark.parametrize(
    ("value", "attribute"),
    [("1.2.3", "v1.2.3"), ("v1.2.3", "1.2.3"), ("1.0.0+build.1", "1.0.0+other"), ("1.0.0", "1.0.0+x")],
)
def test_semver_v_prefix_and_build_metadata_are_ignored(value: str, attribute: str) -> None:
    assert check(Op.SEMVER_EQ, value, attribute)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.02.3",
        "1.2.03",
        "1.2.3-",
        "1.2.3-01",
        "1.2.3-a..b",
        "1.2.3-a_b",
        "1.2.3+",
        "1.2.3+a..b",
        "a.b.c",
        "-1.2.3",
        "1.2.-3",
        " 1.2.3",
        "1.2.3 ",
        "V1.2.3",
        "vv1.2.3",
        "1.2.3-\u03b1",
        "\uff11.2.3",  # fullwidth digit one
        "\u00b2.0.0",  # superscript two: str.isdigit() says True
        "1." + "9" * 200 + ".0",
    ],
)
def test_not_versions(text: str) -> None:
    assert parse_semver(text) is None
    with pytest.raises(ValueError, match="semantic version"):
        Condition("v", Op.SEMVER_GTE, text)


@pytest.mark.parametrize(
    "text", ["0.0.0", "1.2.3-0", "1.2.3-0a", "1.2.3-x-y.z--", "1.2.3+001", "v999.888.777"]
)
def test_versions(text: str) -> None:
    assert parse_semver(text) is not None


def _spec_compare(a: str, b: str) -> int:
    """semver.org section 11, written out step by step, independently of parse_semver's ordering."""
    core_a, _, pre_a = a.partition("+")[0].partition("-")
    core_b, _, pre_b = b.partition("+")[0].partition("-")
    for number_a, number_b in zip(map(int, core_a.split(".")), map(int, core_b.split(".")), strict=True):
        if number_a != number_b:
            return -1 if number_a < number_b else 1
    if not pre_a or not pre_b:
        return (not pre_a) - (not pre_b) if pre_a != pre_b else 0
    ids_a, ids_b = pre_a.split("."), pre_b.split(".")
    for x, y in zip(ids_a, ids_b, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return (len(ids_a) > len(ids_b)) - (len(ids_a) < len(ids_b))


_NUMBER = st.integers(0, 12).map(str)
_IDENT = st.one_of(_NUMBER, st.sampled_from(["alpha", "beta", "rc", "a1", "x-y", "0a", "B"]))
_VERSIONS = st.builds(
    lambda core, pre: ".".join(core) + ("-" + ".".join(pre) if pre else ""),
    st.lists(_NUMBER, min_size=3, max_size=3),
    st.lists(_IDENT, max_size=3),
)


@given(_VERSIONS, _VERSIONS)
def test_semver_order_agrees_with_the_spec(a: str, b: str) -> None:
    expected = _spec_compare(a, b)
    assert check(Op.SEMVER_LT, b, a) is (expected < 0)
    assert check(Op.SEMVER_EQ, b, a) is (expected == 0)
    assert check(Op.SEMVER_GT, b, a) is (expected > 0)


def test_regex_is_a_search_and_linear_time() -> None:
    rule = Condition("ua", Op.MATCHES, r"(a+)+$")  # catastrophic for a backtracking engine
    hostile = "a" * 100_000 + "!"
    start = time.perf_counter()
    assert not matches(rule, {"ua": hostile})
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        (r"(a)\1", "invalid escape sequence"),
        (r"(?=a)b", "invalid perl operator"),
        (r"(?<!a)b", "invalid perl operator"),
        (r"(ab", "missing )"),
        (r"a{2000}", "invalid repetition size"),
        ("x" * (MAX_PATTERN_CHARS + 1), f"at most {MAX_PATTERN_CHARS} characters"),
    ],
)
def test_bad_regexes_are_refused_at_build_time(pattern: str, needle: str) -> None:
    with pytest.raises(ValueError, match="attribute 'ua'") as caught:
        Condition("ua", Op.MATCHES, pattern)
    assert needle in str(caught.value)


def test_a_pattern_at_the_length_limit_is_accepted() -> None:
    assert check(Op.MATCHES, "x" * MAX_PATTERN_CHARS, "x" * MAX_PATTERN_CHARS)


@pytest.mark.parametrize(
    ("operator", "value", "needle"),
    [
        (Op.EQ, None, "eq needs a value"),
        (Op.EQ, ["x"], "eq takes a string, a finite number or a boolean"),
        (Op.EQ, math.nan, "finite"),
        (Op.IN, [], "non-empty list"),
        (Op.IN, "US", "non-empty list"),
        (Op.IN, ["US", 1], "not a mix"),
        (Op.IN, [True], "strings or of numbers"),
        (Op.NOT_IN, [math.inf], "strings or of numbers"),
        (Op.CONTAINS, 1, "contains takes a string"),
        (Op.STARTS_WITH, ["x"], "starts_with takes a string"),
        (Op.ENDS_WITH, None, "ends_with needs a value"),
        (Op.GT, "5", "gt takes a finite number"),
        (Op.GTE, True, "gte takes a finite number"),
        (Op.LT, math.inf, "lt takes a finite number"),
        (Op.SEMVER_GT, 2, "semantic version"),
        (Op.EXISTS, "x", "exists takes no value"),
        (Op.NOT_EXISTS, False, "not_exists takes no value"),
        (Op.MATCHES, 5, "regex string"),
    ],
)
def test_wrong_values_are_refused_with_a_message(operator: Operator, value: Any, needle: str) -> None:
    with pytest.raises(ValueError, match="attribute 'a'") as caught:
        Condition("a", operator, value)
    assert needle in str(caught.value)


def test_unknown_operator_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown operator 'equals'") as caught:
        Condition("a", "equals", "x")  # type: ignore[arg-type]
    assert OPERATOR_NAMES in str(caught.value)
    assert Condition("a", "eq", "x") == Condition("a", Op.EQ, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("attribute", ["", "x" * 129])
def test_attribute_names_are_bounded(attribute: str) -> None:
    with pytest.raises(ValueError, match="attribute name"):
        Condition(attribute, Op.EXISTS)


def test_conditions_are_frozen_normalised_values() -> None:
    rule = Condition("country", Op.IN, ["US", "CA"])  # type: ignore[arg-type]
    assert rule.value == ("US", "CA")
    assert rule == Condition("country", Op.IN, ("US", "CA"))
    assert hash(rule) == hash(Condition("country", Op.IN, ("US", "CA")))
    assert Condition("n", Op.GT, 3).value == 3.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.value = "x"  # type: ignore[misc]


def test_groups_are_not_interchangeable() -> None:
    leaf = Condition("a", Op.EXISTS)
    assert AllOf((leaf,)) != cast(object, AnyOf((leaf,)))
    assert AllOf([leaf]) == AllOf((leaf,))  # type: ignore[arg-type]


@pytest.mark.parametrize("group", [AllOf, AnyOf])
def test_empty_groups_are_refused(group: type[AllOf] | type[AnyOf]) -> None:
    with pytest.raises(ValueError, match="needs at least one rule"):
        group(())


def test_children_must_be_rules() -> None:
    with pytest.raises(TypeError, match="not dict"):
        AllOf(({"attribute": "a"},))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not str"):
        Not("a")  # type: ignore[arg-type]


def _nested(levels: int) -> Rule:
    rule: Rule = Condition("a", Op.EXISTS)
    for level in range(levels):
        rule = (AllOf((rule,)), AnyOf((rule,)), Not(rule))[level % 3]
    return rule


def test_depth_limit() -> None:
    deepest = _nested(MAX_DEPTH)
    assert deepest.depth == MAX_DEPTH
    # Two of the eight wrappers are Not, so the tree means "a exists".
    assert matches(deepest, {"a": "x"}) is True
    assert matches(deepest, {}) is False
    with pytest.raises(ValueError, match=f"nested {MAX_DEPTH + 1} levels deep; the limit is {MAX_DEPTH}"):
        _nested(MAX_DEPTH + 1)


def test_condition_limit_counts_the_whole_tree() -> None:
    half = [Condition(f"a{index}", Op.EXISTS) for index in range(MAX_CONDITIONS // 2)]
    full = AllOf((AnyOf(tuple(half)), AllOf(tuple(half))))
    assert full.size == MAX_CONDITIONS
    with pytest.raises(ValueError, match=f"{MAX_CONDITIONS + 1} conditions; the limit is {MAX_CONDITIONS}"):
        AnyOf((full, Not(Condition("b", Op.EXISTS))))


# Random attribute values of every shape a caller could send, well-typed or not.
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.tuples(st.text(max_size=5)),
    st.lists(st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers())), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.binary(max_size=5),
)
_ATTRIBUTES = st.dictionaries(st.sampled_from(["a", "b", "c"]), _ANY_VALUE, max_size=3)
_CONDITIONS = st.builds(
    lambda name, operator: Condition(name, operator, VALID_VALUE[operator]),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from(list(Operator)),
)
_RULES = st.recursive(
    _CONDITIONS,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda rules: AllOf(tuple(rules))),
        st.lists(children, min_size=1, max_size=3).map(lambda rules: AnyOf(tuple(rules))),
        children.map(Not),
    ),
    max_leaves=8,
)


@given(_CONDITIONS, _ANY_VALUE)
def test_matches_never_raises(rule: Condition, value: Any) -> None:
    assert matches(rule, {rule.attribute: value}) in (True, False)


@given(st.lists(_RULES, min_size=1, max_size=3), _ATTRIBUTES)
def test_groups_are_all_any_not(rules: list[Rule], attributes: Mapping[str, Any]) -> None:
    results = [matches(rule, attributes) for rule in rules]
    assert matches(AllOf(tuple(rules)), attributes) is all(results)
    assert matches(AnyOf(tuple(rules)), attributes) is any(results)
    assert matches(Not(rules[0]), attributes) is not results[0]
    # De Morgan, through the evaluator on both sides.
    negated = AnyOf(tuple(Not(rule) for rule in rules))
    assert matches(Not(AllOf(tuple(rules))), attributes) is matches(negated, attributes)


@given(st.text(max_size=10), st.text(max_size=10))
def test_neq_is_the_negation_of_eq_for_strings(value: str, attribute: str) -> None:
    assert check(Op.NEQ, value, attribute) is not check(Op.EQ, value, attribute)


@given(
    st.lists(st.text(max_size=3), min_size=1, max_size=4),
    st.one_of(st.text(max_size=3), st.tuples(st.text(max_size=3))),
)
def test_not_in_is_the_negation_of_in_for_strings(
    values: list[str], attribute: str | tuple[str, ...]
) -> None:
    assert check(Op.NOT_IN, values, attribute) is not check(Op.IN, values, attribute)
