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

One model with optional fields rather than a union of four: a pydantic union puts the member's tag
in every error location ("all.all.0.condition.op"); this keeps them as the file reads ("all.0.op").
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
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

NODE_SHAPES = "a condition {attribute, op, value}, {all: [...]}, {any: [...]} or {not: node}"
_CONDITION_KEYS = ("attribute", "op", "value")
_GROUP_KEYS = ("all", "any", "not")


class TargetingDoc(BaseModel):
    """One targeting node; use as `targeting: TargetingDoc | None = None` in a document model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attribute: str | None = Field(None, min_length=1, max_length=MAX_ATTRIBUTE_CHARS)
    op: Operator | None = None
    # Any JSON value: the core Condition checks it against the operator and says what it expected.
    value: Any = None
    all: list[TargetingDoc] | None = None
    any: list[TargetingDoc] | None = None
    not_: TargetingDoc | None = Field(None, alias="not")  # `not` is a Python keyword

    _rule: Rule = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _one_shape(cls, data: object) -> object:
        if isinstance(data, TargetingDoc):
            return data
        if isinstance(data, dict):
            shapes = [key for key in _GROUP_KEYS if data.get(key) is not None]
            if any(data.get(key) is not None for key in _CONDITION_KEYS):
                shapes.append("condition")
            if len(shapes) == 1:
                return data
        raise ValueError(f"a targeting node is exactly one of: {NODE_SHAPES}")

    @field_validator("op", mode="before")
    @classmethod
    def _known_operator(cls, op: object) -> object:
        # Replaces pydantic's generic enum error with one that lists every operator.
        return parse_operator(op) if isinstance(op, str) else op

    @model_validator(mode="after")
    def _build(self) -> TargetingDoc:
        rule: Rule
        if self.all is not None:
            rule = AllOf(tuple(node.to_rule() for node in self.all))
        elif self.any is not None:
            rule = AnyOf(tuple(node.to_rule() for node in self.any))
        elif self.not_ is not None:
            rule = Not(self.not_.to_rule())
        elif self.attribute is None or self.op is None:
            raise ValueError("a condition needs both `attribute` and `op`")
        else:
            rule = Condition(self.attribute, self.op, self.value)  # the Condition turns lists into tuples
        self._rule = rule
        return self

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Only the keys of this node's shape, spelled as in the file (`not`, not `not_`).
        data: dict[str, Any] = handler(self)
        if "not_" in data:  # absent when the caller dumps by_alias
            data["not"] = data.pop("not_")
        return {key: value for key, value in data.items() if value is not None}

    def to_rule(self) -> Rule:
        return self._rule


def to_rule(doc: TargetingDoc) -> Rule:
    """The core Rule a validated targeting document was built into (no further checks needed)."""
    return doc.to_rule()
