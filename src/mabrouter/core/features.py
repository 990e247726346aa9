"""Request attributes -> the feature vector of a contextual experiment (core/model.py ContextualSpec).

Column 0 is always the intercept (1); then each numeric attribute after its transform; then one column
per value of each categorical attribute (one-hot). Values are rounded to float32 once, here: the same
rounded vector is added to the arm's x x^T when the decision is counted, carried in the signed decision
id, and multiplied by the reward when the outcome comes back (docs/decisions/0020), so both sums see
exactly the same x whichever replica handles each half.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from collections.abc import Mapping

import numpy as np

from mabrouter.core.model import AttributeValue, CategoricalFeature, ContextualSpec, NumericFeature
from mabrouter.core.posterior import FloatArray

# Columns after one-hot encoding, the intercept not included. The model keeps a d x d matrix per arm in
# Redis (d(d+1)/2 fields) and the vector rides in every decision id (4 bytes a column): 32 keeps a
# flush under ~3,000 fields for 5 arms and an id under 512 characters.
MAX_FEATURES = 32
# Transformed values are clipped here: one outlier (a raw byte count of 1e300) would otherwise swamp
# the regression and, squared and summed for years, leave float range in the stored sums.
MAX_ABS_FEATURE = 1e6
TRANSFORMS = ("none", "log1p", "standardize")
INTERCEPT = "intercept"


def column_names(spec: ContextualSpec) -> tuple[str, ...]:
    """One name per column: the intercept, the numeric features, then each categorical feature's values
    (`tier=free`), features in document order within each kind."""
    names = [INTERCEPT]
    names.extend(f.attribute for f in spec.features if isinstance(f, NumericFeature))
    for feature in spec.features:
        if isinstance(feature, CategoricalFeature):
            names.extend(f"{feature.attribute}={value}" for value in feature.values)
    return tuple(names)


def dimension(spec: ContextualSpec) -> int:
    """Columns, the intercept included."""
    return 1 + sum(1 if isinstance(f, NumericFeature) else len(f.values) for f in spec.features)


def signature(spec: ContextualSpec) -> str:
    """8 hex digits naming the columns and how they are computed (not the prior, which only the reader
    applies). Stored sums are kept under it: sums of one definition mean nothing under another, so a
    document that changes its features starts a new model instead of mixing them."""
    parts = []
    for feature in spec.features:
        if isinstance(feature, NumericFeature):
            parts.append(
                f"n|{feature.attribute}|{feature.transform}|{feature.mean!r}|{feature.scale!r}|{feature.default!r}"
            )
        else:
            parts.append("c|" + "|".join((feature.attribute, *feature.values)))
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=4).hexdigest()


_LOG1P, _STANDARDIZE = "log1p", "standardize"
_CODES = {"none": 0, _LOG1P: 1, _STANDARDIZE: 2}
# One numeric column: attribute, transform code (_CODES), mean, scale, value when missing.
_NumericPlan = tuple[str, int, float, float, float]


def _numeric_plan(feature: NumericFeature) -> _NumericPlan:
    standardize = feature.transform == _STANDARDIZE
    missing = feature.default if feature.default is not None else (feature.mean if standardize else 0.0)
    return feature.attribute, _CODES[feature.transform], feature.mean, feature.scale, missing


def _number_or(raw: AttributeValue | None, missing: float) -> float:
    """An attribute value that is not a plain finite float: a bool or an int reads as a number (True is
    1), a non-finite number, a string or a list is missing."""
    if isinstance(raw, int | float) and math.isfinite(raw):
        return float(raw)
    return missing


def category_text(value: AttributeValue) -> str | None:
    """How a single attribute value is compared with a categorical feature's values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return value if isinstance(value, str) else None


class FeatureEncoder:
    """Compiled once per snapshot; `vector` runs on every contextual Route, so it is one flat loop per
    kind of column (a call per feature cost a third more)."""

    __slots__ = ("_categorical", "_numeric", "dimension", "names", "signature")

    def __init__(self, spec: ContextualSpec) -> None:
        # Columns are laid out intercept, numeric features, then one-hot blocks, each in document order.
        self._numeric = tuple(_numeric_plan(f) for f in spec.features if isinstance(f, NumericFeature))
        self._categorical = tuple(
            (f.attribute, len(f.values), {value: i for i, value in enumerate(f.values)})
            for f in spec.features
            if isinstance(f, CategoricalFeature)
        )
        self.dimension = dimension(spec)
        self.names = column_names(spec)
        self.signature = signature(spec)

    def vector(self, attributes: Mapping[str, AttributeValue]) -> FloatArray:
        """The request's columns, intercept first, rounded to float32 (returned as float64)."""
        values = [1.0]
        append, get, copysign, log1p, limit = (
            values.append,
            attributes.get,
            math.copysign,
            math.log1p,
            MAX_ABS_FEATURE,
        )
        for attribute, code, mean, scale, missing in self._numeric:
            raw = get(attribute)
            # The common case inline: a finite float (inf - inf and NaN - NaN are NaN, never 0).
            value = raw if type(raw) is float and raw - raw == 0.0 else _number_or(raw, missing)
            if code:
                value = copysign(log1p(abs(value)), value) if code == 1 else (value - mean) / scale
            append(value if -limit <= value <= limit else copysign(limit, value))
        for attribute, width, position in self._categorical:
            start = len(values)
            values.extend([0.0] * width)
            raw = attributes.get(attribute)
            if raw is None:
                continue
            # A list of strings (tags) sets the column of each listed value it holds.
            for text in raw if isinstance(raw, tuple) else (category_text(raw),):
                index = position.get(text) if text is not None else None
                if index is not None:
                    values[start + index] = 1.0
        return np.array(values, dtype=np.float32).astype(np.float64)


def pack(vector: FloatArray) -> bytes:
    """The columns after the intercept as little-endian float32: what a decision id carries."""
    return vector[1:].astype("<f4").tobytes()


def unpack(data: bytes, dimension_expected: int | None = None) -> FloatArray:
    """The vector `pack` wrote, intercept restored. ValueError when it cannot be one."""
    if len(data) % 4 or len(data) // 4 > MAX_FEATURES:
        raise ValueError(f"a feature vector is 4 bytes per column, at most {MAX_FEATURES} columns")
    columns = np.frombuffer(data, dtype="<f4").astype(np.float64)
    if dimension_expected is not None and columns.shape[0] + 1 != dimension_expected:
        raise ValueError(f"{columns.shape[0] + 1} columns where {dimension_expected} were expected")
    if not np.all(np.abs(columns) <= MAX_ABS_FEATURE):  # NaN fails too
        raise ValueError(f"a feature value is not finite or beyond +/-{MAX_ABS_FEATURE:g}")
    return np.concatenate(([1.0], columns))


def encode_context(model_signature: str, vector: FloatArray) -> str:
    """What a decision id carries of a contextual decision: `<signature>:<base64url of pack(vector)>`."""
    return f"{model_signature}:{base64.urlsafe_b64encode(pack(vector)).rstrip(b'=').decode('ascii')}"


def decode_context(text: str) -> tuple[str, FloatArray]:
    """The signature and vector `encode_context` wrote; ValueError when it cannot be one."""
    model_signature, _, data = text.partition(":")
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the context is not base64url") from exc
    return model_signature, unpack(raw)
