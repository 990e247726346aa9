"""What a contextual experiment has learned, as `status` and the report show it (pure: no matplotlib).

Coefficients: each arm's posterior mean and 95 % credible interval per column of its model. Curves: for
each numeric feature, the predicted reward of every arm across the feature's range, the other columns
held at their typical value, with the 95 % credible band of the prediction (x . theta, whose variance
is x^T Sigma x): where one arm's band lies above the others', it wins there. Range and typical values
come from the contexts logged with recent decisions (1st to 99th percentile; medians, and each one-hot
block's most frequent value); with none logged, a standardized feature spans mean +/- 2 scale and the
others are left out, and the typical context is the one of a request without attributes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mabrouter.core.features import decode_context, dimension
from mabrouter.core.model import CategoricalFeature, ContextualSpec, NumericFeature
from mabrouter.core.posterior import FloatArray
from mabrouter.core.snapshot import ExperimentState

CURVE_POINTS = 41
Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class ArmModel:
    arm: str
    decisions: float
    noise_sd: float
    mean: FloatArray  # per column
    low: FloatArray
    high: FloatArray


@dataclass(frozen=True, slots=True)
class Curve:
    """Predicted reward per arm across one numeric feature, in the attribute's own units."""

    attribute: str
    values: FloatArray  # the attribute (before its transform) at each point
    means: FloatArray  # (arms, points)
    lows: FloatArray
    highs: FloatArray

    def winners(self) -> list[int]:
        """Index of the arm with the highest predicted mean at each point."""
        return [int(i) for i in np.argmax(self.means, axis=0)]


@dataclass(frozen=True, slots=True)
class ContextualView:
    columns: tuple[str, ...]
    arms: tuple[ArmModel, ...]  # the arms sampling may serve, and shadow arms
    curves: tuple[Curve, ...]
    typical: str  # how the other columns are held, in words
    contexts_used: int  # logged contexts the ranges and typical values come from

    def as_json(self) -> dict[str, object]:
        return {
            "columns": list(self.columns),
            "arms": [
                {
                    "arm": arm.arm,
                    "decisions": arm.decisions,
                    "noise_sd": arm.noise_sd,
                    "coefficients": {
                        column: {"mean": float(m), "ci_low": float(lo), "ci_high": float(hi)}
                        for column, m, lo, hi in zip(self.columns, arm.mean, arm.low, arm.high, strict=True)
                    },
                }
                for arm in self.arms
            ],
        }


def _raw(feature: NumericFeature, transformed: FloatArray) -> FloatArray:
    """The attribute values whose transform is `transformed` (the x-axis an operator reads)."""
    if feature.transform == "log1p":
        return np.sign(transformed) * np.expm1(np.abs(transformed))
    if feature.transform == "standardize":
        return transformed * feature.scale + feature.mean
    return transformed


def _logged_vectors(spec: ContextualSpec, model: str, contexts: Sequence[str]) -> FloatArray:
    rows = []
    d = dimension(spec)
    for text in contexts:
        try:
            signature, vector = decode_context(text)
        except ValueError:
            continue  # written by hand, or by no router: nothing to learn a range from
        if signature == model and vector.shape[0] == d:
            rows.append(vector)
    return np.array(rows) if rows else np.zeros((0, d))


def _typical(spec: ContextualSpec, logged: FloatArray, default: FloatArray) -> FloatArray:
    if not logged.shape[0]:
        return default
    typical = np.median(logged, axis=0)
    column = 1 + sum(1 for f in spec.features if isinstance(f, NumericFeature))
    for feature in spec.features:
        if isinstance(feature, CategoricalFeature):
            block = logged[:, column : column + len(feature.values)]
            patterns, counts = np.unique(block, axis=0, return_counts=True)
            typical[column : column + len(feature.values)] = patterns[int(np.argmax(counts))]
            column += len(feature.values)
    return typical


def contextual_view(state: ExperimentState, contexts: Sequence[str] = ()) -> ContextualView | None:
    """The view of `state`'s model (None for an experiment that is not contextual)."""
    policy, spec = state.contextual, state.spec.contextual
    if policy is None or spec is None:
        return None
    encoder = policy.encoder
    shown = [i for i, arm in enumerate(state.spec.arms) if i in state.live or arm.shadow]
    arms = []
    for i in shown:
        posterior = policy.posteriors[i]
        low, high = posterior.intervals()
        name = state.spec.arms[i].name
        arms.append(
            ArmModel(
                name, posterior.decisions, math.sqrt(posterior.noise_variance), posterior.mean, low, high
            )
        )
    logged = _logged_vectors(spec, encoder.signature, contexts)
    typical = _typical(spec, logged, encoder.vector({}))
    curves = []
    numeric = [f for f in spec.features if isinstance(f, NumericFeature)]
    for column, feature in enumerate(numeric, start=1):
        if logged.shape[0] >= 2:
            lo, hi = np.percentile(logged[:, column], [1.0, 99.0])
        elif feature.transform == "standardize":
            lo, hi = -2.0, 2.0
        else:
            continue
        if not hi > lo:
            continue
        grid = np.linspace(lo, hi, CURVE_POINTS)
        vectors = np.tile(typical, (CURVE_POINTS, 1))
        vectors[:, column] = grid
        predictions = [policy.posteriors[i].predict(vectors) for i in shown]
        means = np.array([mean for mean, _ in predictions])
        sds = np.array([sd for _, sd in predictions])
        curves.append(
            Curve(feature.attribute, _raw(feature, grid), means, means - Z95 * sds, means + Z95 * sds)
        )
    held = "medians of the logged contexts" if logged.shape[0] else "every attribute missing (its default)"
    return ContextualView(encoder.names, tuple(arms), tuple(curves), held, int(logged.shape[0]))
