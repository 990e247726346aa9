"""A contextual experiment's sums in the stats hash (docs/decisions/0020): decoded per arm, encoded for the
trial flush and the outcome script.

Per arm and model signature SIG (core/features.signature), for d columns (intercept first):
`~SIG|ARM:xx:I:J` (0 <= I <= J < d) sum of x_I x_J over the arm's counted decisions, added by the trial
flush; `~SIG|ARM:rx:I` sum of reward * x_I and `~SIG|ARM:rr` sum of reward^2 over their outcomes, added by
the outcome script. The prefix starts with '~', which neither arm names nor other fields do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mabrouter.core.features import decode_context, dimension, signature
from mabrouter.core.linear import LinearSums
from mabrouter.core.model import ExperimentSpec
from mabrouter.core.posterior import FloatArray

MODEL_PREFIX = "~"
XX, RX, RR = "xx", "rx", "rr"


def model_prefix(model_signature: str, arm: str) -> str:
    return f"{MODEL_PREFIX}{model_signature}|{arm}"


def _value(raw: Mapping[str, str], field: str, *, non_negative: bool = False) -> float:
    text = raw.get(field)
    if text is None:
        return 0.0
    value = float(text)  # ValueError names the text; the caller keeps its last good state
    if not math.isfinite(value) or (non_negative and value < 0):
        kind = "finite non-negative" if non_negative else "finite"
        raise ValueError(f"stats field {field!r} is {text!r}: not a {kind} number")
    return value


def linear_sums(spec: ExperimentSpec, raw: Mapping[str, str]) -> tuple[LinearSums, ...] | None:
    """Each arm's sums under the document's current model (absent fields are 0); None when the
    experiment is not contextual. ValueError names a field that is not a number, or a square (a
    diagonal of sum x x^T, or sum r^2) that is negative."""
    if spec.contextual is None:
        return None
    d, model = dimension(spec.contextual), signature(spec.contextual)
    result = []
    for arm in spec.arms:
        prefix = model_prefix(model, arm.name)
        xx = np.zeros((d, d))
        for i in range(d):
            for j in range(i, d):
                xx[i, j] = xx[j, i] = _value(raw, f"{prefix}:{XX}:{i}:{j}", non_negative=i == j)
        rx = np.array([_value(raw, f"{prefix}:{RX}:{i}") for i in range(d)])
        result.append(LinearSums(xx, rx, _value(raw, f"{prefix}:{RR}", non_negative=True)))
    return tuple(result)


def xx_increments(model_signature: str, arm: str, xx: FloatArray) -> dict[str, float]:
    """The fields a trial flush adds a summed x x^T to: its upper triangle."""
    prefix = model_prefix(model_signature, arm)
    d = xx.shape[0]
    return {f"{prefix}:{XX}:{i}:{j}": float(xx[i, j]) for i in range(d) for j in range(i, d)}


def outcome_increments(context: str, arm: str, reward: float) -> tuple[str, list[float]]:
    """For the outcome script: the arm's model prefix and the increments of its rx:0..d-1, then rr.
    `context` is the decision id's (already checked by the recorder: it decodes)."""
    model_signature, vector = decode_context(context)
    increments = [float(v) for v in reward * vector]
    increments.append(reward * reward)
    return model_prefix(model_signature, arm), increments
