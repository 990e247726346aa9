"""The `contextual:` block of experiment documents and the context decision ids carry (issue 16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mabrouter.contextual_schema import ContextualDoc
from mabrouter.core.decision_id import DecisionToken, decode, encode
from mabrouter.core.features import FeatureEncoder, decode_context, encode_context, signature
from mabrouter.core.model import CategoricalFeature, NumericFeature
from mabrouter.errors import ConfigError, InvalidDecisionIdError
from mabrouter.schema import load_experiment_file

from wire import sign

BASE = """\
name: router
control: small
arms:
  - name: small
  - name: large
"""
BLOCK = """\
contextual:
  features:
    - attribute: prompt_tokens
      transform: log1p
    - attribute: tier
      values: [free, pro, enterprise]
  prior_precision: 2.0
"""


def refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_experiment_file(path)
    return str(caught.value)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            "contextual:\n  features:\n    - {attribute: n, transform: sqrt}\n",
            "contextual.features[0].transform: Input should be 'none', 'log1p' or 'standardize'",
        ),
        (
            "contextual:\n  features:\n    - {attribute: n, transform: standardize, mean: 3}\n",
            "contextual.features[0]: feature 'n': transform standardize needs scale",
        ),
        (
            "contextual:\n  features:\n    - {attribute: n, scale: 2}\n",
            "mean and scale are only used with transform: standardize",
        ),
        (
            "contextual:\n  features:\n    - {attribute: tier, values: [a], transform: log1p}\n",
            "feature 'tier' lists values (a one-hot string feature), which takes no transform",
        ),
        ("contextual:\n  features:\n    - {attribute: tier, values: [a, a]}\n", "values repeated: a"),
        ("contextual:\n  features:\n    - {attribute: tier, values: []}\n", "values is empty"),
        (
            "contextual:\n  features:\n    - {attribute: n}\n    - {attribute: n, transform: log1p}\n",
            "features name an attribute more than once: n",
        ),
        (
            "contextual:\n  features:\n    - {attribute: a, values: ["
            + ", ".join(f"v{i}" for i in range(20))
            + "]}\n    - {attribute: b, values: ["
            + ", ".join(f"w{i}" for i in range(13))
            + "]}\n",
            "features make 33 columns after one-hot encoding (each listed value is one); the limit is 32",
        ),
        ("contextual:\n  features: []\n", "contextual.features: List should have at least 1 item"),
        (
            "contextual:\n  features:\n    - {attribute: n}\n  prior_precision: 0\n",
            "contextual.prior_precision: Input should be greater than 0",
        ),
        (
            "contextual:\n  features:\n    - {attribute: n, weight: 2}\n",
            "contextual.features[0].weight: unknown field",
        ),
        (
            "contextual:\n  features:\n    - {attribute: n, default: .inf}\n",
            "contextual.features[0].default: Input should be a finite number",
        ),
    ],
)
def test_a_bad_block_is_refused_naming_the_field(tmp_path: Path, block: str, expected: str) -> None:
    assert expected in refusal(tmp_path, BASE + block)


def test_it_cannot_be_combined_with_segment_by_or_a_half_life(tmp_path: Path) -> None:
    segmented = refusal(tmp_path, BASE + BLOCK + "segment_by: {attribute: tier}\n")
    assert "contextual cannot be combined with segment_by" in segmented
    assert "list the segment attribute as a feature" in segmented
    decaying = refusal(tmp_path, BASE + BLOCK + "half_life_seconds: 3600\n")
    assert "contextual cannot be combined with half_life_seconds" in decaying


def test_the_block_becomes_the_core_spec() -> None:
    import yaml

    doc = ContextualDoc.model_validate(yaml.safe_load(BLOCK)["contextual"])
    spec = doc.to_spec()
    assert spec.prior_precision == 2.0
    assert spec.features == (
        NumericFeature("prompt_tokens", "log1p"),
        CategoricalFeature("tier", ("free", "pro", "enterprise")),
    )
    standardized = ContextualDoc.model_validate(
        {"features": [{"attribute": "ms", "transform": "standardize", "mean": 200, "scale": 50}]}
    ).to_spec()
    assert standardized.features == (NumericFeature("ms", "standardize", mean=200.0, scale=50.0),)


# --- the context in decision ids -------------------------------------------------------------------

KEY = b"k" * 32
NOW = 1_700_000_001_000


def contextual_token(columns: int, trace: str = "", segment: str = "") -> DecisionToken:
    spec = ContextualDoc.model_validate(
        {"features": [{"attribute": f"f{i}"} for i in range(columns)]}
    ).to_spec()
    vector = FeatureEncoder(spec).vector({f"f{i}": 1000.0 * i + 0.123 for i in range(columns)})
    return DecisionToken(
        "router",
        "small",
        3,
        NOW - 1000,
        "abc123",
        counted=True,
        trace=trace,
        segment=segment,
        context=encode_context(signature(spec), vector),
    )


@pytest.mark.parametrize("trace", ["", "0af7651916cd43dd8448eb211c80319cb7ad6b7169203331"])
def test_the_context_round_trips_through_a_signed_id(trace: str) -> None:
    token = contextual_token(8, trace)
    decision_id = encode(token, KEY)
    assert decode(decision_id, [KEY], NOW, 86_400_000) == token
    model, vector = decode_context(token.context)
    assert model == token.context[:8]
    assert vector[0] == 1.0
    assert vector[3] == pytest.approx(2000.123, rel=1e-6)


def test_ids_stay_within_the_limit_at_the_most_columns() -> None:
    longest = encode(contextual_token(32, trace="f" * 48), KEY)
    assert len(longest) <= 512
    assert len(longest) < 390  # docs/decisions/0020 and docs/experiments.md say ~385
    assert len(encode(contextual_token(8), KEY)) < 160  # and ~150 with 8 columns


@pytest.mark.parametrize(
    ("context", "field"),
    [
        ("0123abcd:", None),  # an empty vector is well formed (no features would have none)
        ("0123ABCD:AAAAAA", "context"),  # upper-case signature
        ("0123abc:AAAAAA", "context"),
        ("0123abcd:AA+A", "context"),  # not base64url
        ("0123abcd:" + "A" * 172, "context"),  # longer than 32 columns
    ],
)
def test_a_context_not_as_routers_write_it_is_refused_naming_the_field(
    context: str, field: str | None
) -> None:
    fields = ["1", "router", "small", "3", str(NOW - 1000), "abc123", "1", "", "", context]
    decision_id = sign("|".join(fields).encode(), KEY)
    if field is None:
        assert decode(decision_id, [KEY], NOW, 86_400_000).context == context
        return
    with pytest.raises(InvalidDecisionIdError, match=field):
        decode(decision_id, [KEY], NOW, 86_400_000)


def test_a_signed_context_whose_vector_is_not_usable_is_refused_when_decoded() -> None:
    nan = np.array([np.nan], dtype="<f4").tobytes()
    import base64

    text = "0123abcd:" + base64.urlsafe_b64encode(nan).rstrip(b"=").decode()
    with pytest.raises(ValueError, match="feature"):
        decode_context(text)


def test_a_valid_block_applies_and_becomes_the_experiments_model(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(BASE + BLOCK)
    spec = load_experiment_file(path).to_spec()
    assert spec.contextual is not None
    assert spec.contextual.prior_precision == 2.0
    assert FeatureEncoder(spec.contextual).dimension == 5  # intercept, prompt_tokens, 3 tiers
