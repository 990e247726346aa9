"""Request attributes -> a contextual experiment's feature vector (core/features.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mabrouter.core.features import MAX_ABS_FEATURE, FeatureEncoder, pack, signature, unpack
from mabrouter.core.model import CategoricalFeature, ContextualSpec, NumericFeature

SPEC = ContextualSpec(
    (
        NumericFeature("prompt_tokens", "log1p"),
        CategoricalFeature("tier", ("free", "pro", "enterprise")),
        NumericFeature("latency_budget", "standardize", mean=200.0, scale=50.0),
        NumericFeature("items", default=3.0),
    )
)


def test_columns_are_named_intercept_numbers_then_one_hot() -> None:
    encoder = FeatureEncoder(SPEC)
    assert encoder.names == (
        "intercept",
        "prompt_tokens",
        "latency_budget",
        "items",
        "tier=free",
        "tier=pro",
        "tier=enterprise",
    )
    assert encoder.dimension == 7


def test_transforms_and_one_hot() -> None:
    vector = FeatureEncoder(SPEC).vector(
        {"prompt_tokens": 1000.0, "tier": "pro", "latency_budget": 300.0, "items": 7.0}
    )
    expected = [1.0, math.log1p(1000.0), 2.0, 7.0, 0.0, 1.0, 0.0]
    np.testing.assert_allclose(vector, np.array(expected, dtype=np.float32))


def test_missing_and_unusable_values_take_the_documented_defaults() -> None:
    encoder = FeatureEncoder(SPEC)
    # missing: log1p -> 0, standardize -> its mean (0 after the transform), explicit default -> it
    np.testing.assert_array_equal(encoder.vector({}), [1.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0])
    # a string where a number is expected, an unknown category, a non-finite number: missing too
    odd = encoder.vector({"prompt_tokens": "many", "tier": "gold", "latency_budget": math.inf})
    np.testing.assert_array_equal(odd, encoder.vector({}))


def test_bools_numbers_and_lists_as_categories() -> None:
    spec = ContextualSpec(
        (
            CategoricalFeature("flag", ("true", "false")),
            CategoricalFeature("code", ("2", "3")),
            CategoricalFeature("tags", ("a", "b", "c")),
        )
    )
    vector = FeatureEncoder(spec).vector({"flag": True, "code": 3.0, "tags": ("a", "c", "zzz")})
    np.testing.assert_array_equal(vector, [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])


def test_negative_numbers_keep_their_sign_under_log1p_and_extremes_are_clipped() -> None:
    spec = ContextualSpec((NumericFeature("v", "log1p"), NumericFeature("raw")))
    vector = FeatureEncoder(spec).vector({"v": -9.0, "raw": 1e300})
    assert vector[1] == pytest.approx(-math.log(10.0), rel=1e-6)
    assert vector[2] == MAX_ABS_FEATURE
    assert bool(FeatureEncoder(spec).vector({"raw": True})[2] == 1.0)  # bool reads as 1


def test_vector_is_float32_exact_and_survives_the_decision_id_round_trip() -> None:
    vector = FeatureEncoder(SPEC).vector({"prompt_tokens": 123.456, "tier": "free", "latency_budget": 1.0})
    np.testing.assert_array_equal(vector, vector.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(unpack(pack(vector), 7), vector)
    assert len(pack(vector)) == 4 * 6  # the intercept is not carried


@pytest.mark.parametrize(
    ("data", "dimension"),
    [
        (b"\x00\x00\x80", None),  # not a whole float
        (np.array([np.nan], dtype="<f4").tobytes(), None),
        (np.array([3e38], dtype="<f4").tobytes(), None),  # beyond what a feature can be
        (np.zeros(2, dtype="<f4").tobytes(), 7),  # not the model's dimension
        (np.zeros(40, dtype="<f4").tobytes(), None),  # more columns than any model has
    ],
)
def test_unpack_refuses_what_no_router_wrote(data: bytes, dimension: int | None) -> None:
    with pytest.raises(ValueError, match=r"feature|columns"):
        unpack(data, dimension)


def test_signature_names_the_columns_not_the_prior() -> None:
    same_prior_changed = ContextualSpec(SPEC.features, prior_precision=5.0)
    assert signature(SPEC) == signature(same_prior_changed)
    changed = ContextualSpec((*SPEC.features[:3], NumericFeature("items", default=4.0)))
    assert signature(changed) != signature(SPEC)
    assert len(signature(SPEC)) == 8
