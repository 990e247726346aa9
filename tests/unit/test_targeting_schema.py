"""The targeting block of experiment files: accepted shapes, the Rule they build, and located refusals."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from mabrouter.core.targeting import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    AllOf,
    AnyOf,
    Condition,
    Not,
    Operator,
    matches,
)
from mabrouter.targeting_schema import NODE_SHAPES, TargetingDoc, to_rule
from mabrouter.validation_messages import describe_validation_error


class Experiment(BaseModel):
    """Stands in for the experiment document that will carry the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "ranker"
    targeting: TargetingDoc | None = None


NODE = TypeAdapter(TargetingDoc)

EXAMPLE_YAML = """
name: ranker
targeting:
  all:
    - {attribute: country, op: in, value: [US, CA]}
    - any:
        - {attribute: app_version, op: semver_gte, value: "2.3.0"}
        - {attribute: tier, op: eq, value: premium}
    - not: {attribute: internal, op: eq, value: true}
"""

EXAMPLE_RULE = AllOf(
    (
        Condition("country", Operator.IN, ("US", "CA")),
        AnyOf(
            (
                Condition("app_version", Operator.SEMVER_GTE, "2.3.0"),
                Condition("tier", Operator.EQ, "premium"),
            )
        ),
        Not(Condition("internal", Operator.EQ, True)),
    )
)


def parse(data: Any) -> Experiment:
    return Experiment.model_validate(data)


def refusal(data: Any) -> str:
    """The one-line-per-problem message the CLI would print for `targeting: data`."""
    with pytest.raises(ValidationError) as caught:
        parse({"targeting": data})
    return describe_validation_error(caught.value)


def test_the_documented_example_builds_the_expected_rule() -> None:
    experiment = parse(yaml.safe_load(EXAMPLE_YAML))
    assert experiment.targeting is not None
    rule = to_rule(experiment.targeting)
    assert rule == EXAMPLE_RULE
    assert matches(rule, {"country": "CA", "app_version": "2.10.0", "tier": "free"})
    assert not matches(rule, {"country": "CA", "app_version": "2.10.0", "internal": True})


def test_targeting_is_optional() -> None:
    assert parse({}).targeting is None


def test_json_round_trip_uses_the_yaml_keys() -> None:
    experiment = parse(yaml.safe_load(EXAMPLE_YAML))
    dumped = experiment.model_dump(mode="json")
    assert dumped["targeting"]["all"][2] == {"not": {"attribute": "internal", "op": "eq", "value": True}}
    again = Experiment.model_validate_json(experiment.model_dump_json())
    assert again == experiment
    assert again.targeting is not None
    assert to_rule(again.targeting) == EXAMPLE_RULE


def test_nodes_keep_their_fields() -> None:
    node = NODE.validate_python({"not": {"attribute": "beta", "op": "exists"}})
    assert isinstance(node, TargetingDoc)
    assert node.not_ is not None
    assert (node.not_.attribute, node.not_.op, node.all, node.any) == ("beta", Operator.EXISTS, None, None)
    assert to_rule(node) == Not(Condition("beta", Operator.EXISTS))
    for by_alias in (False, True):
        assert node.model_dump(mode="json", by_alias=by_alias) == {
            "not": {"attribute": "beta", "op": "exists"}
        }


@pytest.mark.parametrize("op", ["exists", "not_exists"])
def test_presence_operators_take_no_value(op: str) -> None:
    assert to_rule(NODE.validate_python({"attribute": "beta", "op": op})) == Condition("beta", Operator(op))
    assert "takes no value" in refusal({"attribute": "beta", "op": op, "value": "yes"})


@pytest.mark.parametrize(
    ("node", "rule"),
    [
        ({"attribute": "age", "op": "gte", "value": 18}, Condition("age", Operator.GTE, 18.0)),
        ({"attribute": "score", "op": "in", "value": [1, 2.5]}, Condition("score", Operator.IN, (1.0, 2.5))),
        (
            {"attribute": "ua", "op": "matches", "value": "Mobile$"},
            Condition("ua", Operator.MATCHES, "Mobile$"),
        ),
        (
            {"attribute": "v", "op": "semver_lt", "value": "v3.0.0-rc.1"},
            Condition("v", Operator.SEMVER_LT, "v3.0.0-rc.1"),
        ),
    ],
)
def test_conditions(node: dict[str, Any], rule: Condition) -> None:
    assert to_rule(NODE.validate_python(node)) == rule


def test_unknown_operator_lists_the_allowed_ones() -> None:
    message = refusal({"all": [{"attribute": "country", "op": "equals", "value": "US"}]})
    assert message.startswith("targeting.all[0].op: unknown operator 'equals'; allowed operators:")
    for operator in Operator:
        assert operator.value in message


@pytest.mark.parametrize(
    ("node", "needle"),
    [
        (
            {"attribute": "ua", "op": "matches", "value": r"(a)\1"},
            "invalid regex '(a)\\\\1': invalid escape sequence",
        ),
        (
            {"attribute": "ua", "op": "matches", "value": "(?=x)"},
            "invalid regex '(?=x)': invalid perl operator",
        ),
        ({"attribute": "ua", "op": "matches", "value": "x" * 257}, "at most 256 characters"),
        ({"attribute": "v", "op": "semver_gte", "value": "2.3"}, "semantic version like '2.3.0'"),
        ({"attribute": "v", "op": "semver_gte", "value": 2.3}, "semantic version like '2.3.0'"),
        ({"attribute": "age", "op": "gt", "value": "18"}, "gt takes a finite number"),
        (
            {"attribute": "tier", "op": "eq", "value": {"a": 1}},
            "eq takes a string, a finite number or a boolean",
        ),
        ({"attribute": "tier", "op": "eq"}, "eq needs a value"),
        ({"attribute": "country", "op": "in", "value": []}, "non-empty list"),
        ({"attribute": "country", "op": "in", "value": ["US", 1]}, "not a mix"),
    ],
)
def test_bad_conditions_are_refused_at_parse_time_naming_the_problem(
    node: dict[str, Any], needle: str
) -> None:
    message = refusal({"any": [{"attribute": "ok", "op": "exists"}, node]})
    assert message.startswith("targeting.any[1]: attribute ")
    assert needle in message


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (
            {"all": [{"attribute": "a", "op": "exists"}], "any": [{"attribute": "b", "op": "exists"}]},
            "targeting",
        ),
        ({"all": [{"attribute": "a", "op": "exists"}], "attribute": "a"}, "targeting"),
        ({"not": {"attribute": "a", "op": "exists"}, "op": "exists"}, "targeting"),
        ({}, "targeting"),
        ({"all": None}, "targeting"),
        ("country == US", "targeting"),
        ([{"attribute": "a", "op": "exists"}], "targeting"),
        ({"not": {"colour": "red"}}, "targeting.not"),
        ({"all": [{"attribute": "a", "op": "exists"}, 7]}, "targeting.all[1]"),
        ({"any": [{"not": {"all": [{}]}}]}, "targeting.any[0].not.all[0]"),
    ],
)
def test_a_node_is_exactly_one_shape(data: Any, where: str) -> None:
    assert refusal(data) == f"{where}: a targeting node is exactly one of: {NODE_SHAPES}"
    assert "{attribute, op, value}, {all: [...]}, {any: [...]} or {not: node}" in NODE_SHAPES


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"attribute": "a", "op": "exists", "colour": "red"}, "targeting.colour: unknown field"),
        ({"all": [{"attribute": "a", "op": "exists"}], "colour": "red"}, "targeting.colour: unknown field"),
        ({"attribute": "a", "value": 1}, "targeting: a condition needs both `attribute` and `op`"),
        ({"op": "exists"}, "targeting: a condition needs both `attribute` and `op`"),
        ({"attribute": "", "op": "exists"}, "targeting.attribute: String should have at least 1 character"),
        (
            {"attribute": "a" * 129, "op": "exists"},
            "targeting.attribute: String should have at most 128 characters",
        ),
        (
            {"attribute": "a", "op": 3},
            "targeting.op: Input should be 'eq', 'neq', 'in', 'not_in', 'contains'",
        ),
        ({"all": []}, "targeting: all needs at least one rule"),
        ({"any": "a"}, "targeting.any: Input should be a valid list"),
        (
            {"any": [{"attribute": "a", "op": "exists"}, {"attribute": "b"}]},
            "targeting.any[1]: a condition needs",
        ),
    ],
)
def test_structural_errors_are_located(data: Any, message: str) -> None:
    assert refusal(data).startswith(message)


def test_not_must_be_spelled_not() -> None:
    message = refusal({"not_": {"attribute": "a", "op": "exists"}})
    assert "exactly one of" in message


def _nested(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"attribute": "a", "op": "exists"}
    for _ in range(levels):
        node = {"all": [node]}
    return node


def test_depth_limit_surfaces_at_parse_time() -> None:
    rule = to_rule(NODE.validate_python(_nested(MAX_DEPTH)))
    assert rule.depth == MAX_DEPTH
    assert f"nested {MAX_DEPTH + 1} levels deep; the limit is {MAX_DEPTH}" in refusal(_nested(MAX_DEPTH + 1))


def test_condition_limit_surfaces_at_parse_time() -> None:
    conditions = [{"attribute": f"a{index}", "op": "exists"} for index in range(MAX_CONDITIONS + 1)]
    assert to_rule(NODE.validate_python({"any": conditions[:MAX_CONDITIONS]})).size == MAX_CONDITIONS
    message = refusal({"all": [{"any": conditions[:50]}, {"any": conditions[50:]}]})
    assert (
        message == f"targeting: targeting has {MAX_CONDITIONS + 1} conditions; the limit is {MAX_CONDITIONS}"
    )


def test_documents_are_frozen() -> None:
    node = NODE.validate_python({"attribute": "a", "op": "exists"})
    with pytest.raises(ValidationError, match="frozen"):
        node.attribute = "b"  # type: ignore[misc]


def test_yaml_scalars_keep_their_types() -> None:
    # An unquoted 2.3.0 is a YAML string, but an unquoted 2.3 is a float and is refused for semver.
    ok = yaml.safe_load("{attribute: v, op: semver_gte, value: 2.3.0}")
    assert to_rule(NODE.validate_python(ok)) == Condition("v", Operator.SEMVER_GTE, "2.3.0")
    assert "semantic version" in refusal(yaml.safe_load("{attribute: v, op: semver_gte, value: 2.3}"))
