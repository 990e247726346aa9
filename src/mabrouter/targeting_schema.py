"""The `targeting:` block of experiment files, validated into a core targeting Rule at parse time.

    targeting:
      all:
        - {attribute: country, op: in, value: [US, CA]}
        - any:
            - {attribute: app_version, op: semver_gte, value: "2.3.0"}
            - {attribute: tier, op: eq, value: premium}
        - not: {attribute: internal, op: eq, value: true}

A node is exactly one of: a condition {attribute, op, value} (no value for exists / not_exists),
{all: [nodes]}, {any: [nodes]} or {not: node}. Each node builds its core Rule in a validator, so a
bad regex, a bad version, a value of the wrong type or a tree past the size limits is a validation
error of the document, located at the node, rather than a failure later on the request path.
Semantics of the operators: see mabrouter.core.targeting.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from mabrouter.core.targeting import (
    MAX_ATTRIBUTE_CHARS,
    AllOf,
    AnyOf,
    Condition,
    Not,
    Operator,
    Rule,
    parse_operator,
)

_NODE_SHAPES = "a condition {attribute, op, value}, {all: [...]}, {any: [...]} or {not: node}"
_CONDITION_KEYS = frozenset({"attribute", "op", "value"})


class _Node(BaseModel):
    # serialize_by_alias: `not` is a Python keyword, so that field is `not_`; dumps must say `not`.
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    _rule: Rule = PrivateAttr()

    def to_rule(self) -> Rule:
        return self._rule


class ConditionDoc(_Node):
    attribute: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_CHARS)
    op: Operator
    # Any JSON value: the core Condition checks it against the operator and says what it expected.
    value: Any = None

    @field_validator("op", mode="before")
    @classmethod
    def _known_operator(cls, op: object) -> object:
        # Replaces pydantic's generic enum error with one that lists every operator.
        return parse_operator(op) if isinstance(op, str) else op

    @model_validator(mode="after")
    def _build(self) -> ConditionDoc:
        value = tuple(self.value) if isinstance(self.value, list) else self.value
        self._rule = Condition(self.attribute, self.op, value)
        return self


class AllDoc(_Node):
    all: list[TargetingDoc]

    @model_validator(mode="after")
    def _build(self) -> AllDoc:
        self._rule = AllOf(tuple(node.to_rule() for node in self.all))
        return self


class AnyDoc(_Node):
    any: list[TargetingDoc]

    @model_validator(mode="after")
    def _build(self) -> AnyDoc:
        self._rule = AnyOf(tuple(node.to_rule() for node in self.any))
        return self


class NotDoc(_Node):
    not_: TargetingDoc = Field(alias="not")

    @model_validator(mode="after")
    def _build(self) -> NotDoc:
        self._rule = Not(self.not_.to_rule())
        return self


def _shape(data: Any) -> str | None:
    """Which node `data` is, from its keys; None (a validation error) if it is none or several."""
    if isinstance(data, _Node):
        return {ConditionDoc: "condition", AllDoc: "all", AnyDoc: "any", NotDoc: "not"}.get(type(data))
    if not isinstance(data, dict):
        return None
    shapes = [key for key in ("all", "any", "not") if key in data]
    if _CONDITION_KEYS & data.keys():
        shapes.append("condition")
    return shapes[0] if len(shapes) == 1 else None


TargetingDoc = Annotated[
    Annotated[ConditionDoc, Tag("condition")]
    | Annotated[AllDoc, Tag("all")]
    | Annotated[AnyDoc, Tag("any")]
    | Annotated[NotDoc, Tag("not")],
    Discriminator(
        _shape,
        custom_error_type="targeting_node",
        custom_error_message=f"a targeting node is exactly one of: {_NODE_SHAPES}",
    ),
]

for _model in (ConditionDoc, AllDoc, AnyDoc, NotDoc):
    _model.model_rebuild()


def to_rule(doc: TargetingDoc) -> Rule:
    """The core Rule a validated targeting document was built into (no further checks needed)."""
    return doc.to_rule()
