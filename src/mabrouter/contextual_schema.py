"""The `contextual:` block of experiment files: linear Thompson sampling on request attributes.

    contextual:
      features:
        - attribute: prompt_tokens     # a number from Route's attributes
          transform: log1p             # none (default) | log1p | standardize (with mean and scale)
        - attribute: tier              # a string: one column per listed value (any other: all zero)
          values: [free, pro, enterprise]
      prior_precision: 1.0             # ridge prior; an intercept is always included

A feature is numeric unless it lists `values`. One model with optional fields rather than a union of
two: a pydantic union repeats every problem once per member and names the member in the location.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mabrouter.core.features import MAX_ABS_FEATURE, MAX_FEATURES
from mabrouter.core.model import CategoricalFeature, ContextualSpec, Feature, NumericFeature

# Beyond this a ridge prior is no longer a prior: every coefficient is pinned to 0.
MAX_PRIOR_PRECISION = 1e6
MAX_VALUE_CHARS = 128

Attribute = Annotated[str, Field(min_length=1, max_length=128)]
Bounded = Annotated[float, Field(ge=-MAX_ABS_FEATURE, le=MAX_ABS_FEATURE, allow_inf_nan=False)]


class FeatureDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    attribute: Attribute
    transform: Literal["none", "log1p", "standardize"] | None = None
    mean: Bounded | None = Field(default=None, description="standardize: subtracted first")
    scale: Annotated[float, Field(gt=0, le=MAX_ABS_FEATURE, allow_inf_nan=False)] | None = Field(
        default=None, description="standardize: divides what is left"
    )
    default: Bounded | None = Field(default=None, description="stands in for a missing value")
    values: list[Annotated[str, Field(min_length=1, max_length=MAX_VALUE_CHARS)]] | None = Field(
        default=None, max_length=MAX_FEATURES, description="one-hot columns of a string attribute"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> FeatureDoc:
        if self.values is not None:
            numeric = [
                name for name in ("transform", "mean", "scale", "default") if getattr(self, name) is not None
            ]
            if numeric:
                raise ValueError(
                    f"feature {self.attribute!r} lists values (a one-hot string feature), which takes no "
                    f"{', '.join(numeric)}: those are for numeric features"
                )
            if not self.values:
                raise ValueError(f"feature {self.attribute!r}: values is empty; list at least one value")
            repeated = sorted({value for value in self.values if self.values.count(value) > 1})
            if repeated:
                raise ValueError(f"feature {self.attribute!r}: values repeated: {', '.join(repeated)}")
            return self
        if self.transform == "standardize":
            if self.scale is None:
                raise ValueError(f"feature {self.attribute!r}: transform standardize needs scale (and mean)")
        elif self.mean is not None or self.scale is not None:
            raise ValueError(
                f"feature {self.attribute!r}: mean and scale are only used with transform: standardize"
            )
        return self

    @property
    def columns(self) -> int:
        return len(self.values) if self.values is not None else 1

    def to_feature(self) -> Feature:
        if self.values is not None:
            return CategoricalFeature(self.attribute, tuple(self.values))
        return NumericFeature(
            self.attribute,
            self.transform or "none",
            mean=self.mean if self.mean is not None else 0.0,
            scale=self.scale if self.scale is not None else 1.0,
            default=self.default,
        )


class ContextualDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    features: list[FeatureDoc] = Field(min_length=1, max_length=MAX_FEATURES)
    prior_precision: Annotated[float, Field(gt=0, le=MAX_PRIOR_PRECISION, allow_inf_nan=False)] = 1.0

    @model_validator(mode="after")
    def _bounded(self) -> ContextualDoc:
        names = [feature.attribute for feature in self.features]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"features name an attribute more than once: {', '.join(repeated)}")
        columns = sum(feature.columns for feature in self.features)
        if columns > MAX_FEATURES:
            raise ValueError(
                f"features make {columns} columns after one-hot encoding (each listed value is one); "
                f"the limit is {MAX_FEATURES}, the intercept not counted"
            )
        return self

    def to_spec(self) -> ContextualSpec:
        return ContextualSpec(tuple(f.to_feature() for f in self.features), self.prior_precision)


def combination_problem(
    contextual: ContextualDoc | None, *, segment_by: bool, half_life_seconds: float
) -> str | None:
    """Why `contextual` cannot go with the rest of the document, or None."""
    if contextual is None:
        return None
    if segment_by:
        return (
            "contextual cannot be combined with segment_by: a contextual experiment already learns per "
            "attribute value; list the segment attribute as a feature with its values instead"
        )
    if half_life_seconds:
        return (
            "contextual cannot be combined with half_life_seconds yet: the model's sums are not "
            "discounted; leave half_life_seconds out (or 0)"
        )
    return None
