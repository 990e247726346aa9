"""Hypothesis strategies for what anyone may write by hand into the keys a router reads (issue 11).

Shared by the pure builder test (unit/test_snapshot_builder_hostile.py) and the real-router test
(system/test_stored_values_fuzz.py): documents, statistics, switches and global switches, with field names
the router knows (so values reach every decoder) and arbitrary ones, and values that are extreme
numbers, numbers a float cannot hold, text and JSON of the wrong shape; and, for the real router, keys
replaced by keys of another type.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from mabrouter.schema import experiment_to_json, parse_experiment

GAUSS: dict[str, Any] = {
    "name": "gauss",
    "reward": "gaussian",
    "control": "g-a",
    "half_life_seconds": 60,
    "guardrails": [{"metric": "latency_ms", "kind": "mean", "max_value": 250, "min_samples": 10}],
    "arms": [{"name": "g-a"}, {"name": "g-b"}, {"name": "g-c", "max_share": 0.5}],
}
PLAIN: dict[str, Any] = {
    "name": "plain",
    "control": "p-a",
    "segment_by": {"attribute": "country", "min_trials": 10},
    "burn_in_trials": 5,
    "arms": [
        {"name": "p-a", "min_share": 0.05},
        {"name": "p-b", "ramp": [{"share": 0.1, "min_seconds": 60}, {"share": 0.5, "min_seconds": 60}]},
    ],
}
DOCS = {doc["name"]: doc for doc in (GAUSS, PLAIN)}
ARMS = {name: [arm["name"] for arm in doc["arms"]] for name, doc in DOCS.items()}


def stored_doc(name: str) -> str:
    """The document as `mabrouter experiment apply` stores it."""
    return experiment_to_json(parse_experiment(DOCS[name], "test"))


STATS = ("trials", "count", "sum", "sumsq", "sampled", "expected")
NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        ["1e308", "-1e308", "1.8e308", "5e-324", "1e200", "1e154", "nan", "inf", "-inf", "-0", "0", "1", "2"]
    ),
    st.sampled_from(["", " ", "0x10", "1_000", "1e", "--1", "\u0661", "true", "maybe", "\x00", "\udcff"]),
)
JSON_TEXT = st.one_of(
    st.sampled_from(
        ["{}", "[]", "null", "1", '"gauss"', '{"name": "gauss"}', '{"name": "gauss", "arms": []}']
    ),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=10,
    ).map(json.dumps),
)
VALUES = st.one_of(NUMBER_TEXT, st.text(max_size=40), JSON_TEXT)


def _doc_values(name: str) -> st.SearchStrategy[str]:
    """Documents that are almost right: the real one with one field changed, or renamed."""
    base = json.loads(stored_doc(name))
    mutated = st.builds(
        lambda key, value: json.dumps({**base, key: value}),
        st.sampled_from([*sorted(base), "extra", "arms"]),
        st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=10), st.just([]), st.just({})),
    )
    return st.one_of(mutated, VALUES, st.just(stored_doc("plain" if name == "gauss" else "gauss")))


def _known(name: str, kind: str) -> list[str]:
    arms = ARMS[name]
    if kind == "config":
        return ["doc", "version", "updated_ms"]
    if kind == "stats":
        fields = [f"{arm}:{stat}" for arm in arms for stat in STATS]
        fields += [f"{arm}:d:{stat}" for arm in arms for stat in STATS[:4]]
        fields += [f"{arm}:m:latency_ms:{part}" for arm in arms for part in ("n", "sum", "sumsq")]
        fields += [f"@FR|{arm}:{stat}" for arm in arms for stat in STATS[:4]]
        return [*fields, "_epoch", "_split:holdout", "_split:bandit"]
    fields = ["kill", "rollout", "reason", "version"]
    return (
        fields
        + [f"kill:{arm}" for arm in arms]
        + [f"ramp:{arm}" for arm in arms]
        + [f"ramp_since:{arm}" for arm in arms]
    )


def edits(name: str, kind: str) -> st.SearchStrategy[dict[str, str]]:
    """A few hand edits of one hash of experiment `name` (kind: config, stats or control)."""
    fields = st.one_of(st.sampled_from(_known(name, kind)), st.text(min_size=1, max_size=20))
    values = _doc_values(name) if kind == "config" else VALUES
    return st.dictionaries(fields, values, max_size=6)


GLOBAL_EDITS = st.dictionaries(
    st.one_of(st.sampled_from(["kill", "reason", "version"]), st.text(min_size=1, max_size=20)),
    VALUES,
    max_size=4,
)


# Keys a router reads that someone may replace with a key of another type (Redis then refuses to read
# them: WRONGTYPE). Suffixes as in hostile_state, plus "experiments" for the list of experiments.
RETYPABLE = [f"{name}:{kind}" for name in DOCS for kind in ("config", "stats", "control")]
WRONG_TYPES = ("string", "list", "set", "zset")


def retyped(spare: str) -> st.SearchStrategy[dict[str, str]]:
    """Keys to replace by a key of another type (suffix -> type), never `spare` (the key a kill is then
    written to: Redis would refuse that write too, as it refuses the CLI's, loudly)."""
    suffixes = [suffix for suffix in [*RETYPABLE, "_global", "experiments"] if suffix != spare]
    return st.dictionaries(st.sampled_from(suffixes), st.sampled_from(WRONG_TYPES), max_size=3)


@st.composite
def hostile_state(draw: st.DrawFn) -> dict[str, dict[str, str]]:
    """Edits per key suffix: {"gauss:stats": {...}, "plain:control": {...}, "_global": {...}}."""
    chosen: dict[str, dict[str, str]] = {}
    for name in DOCS:
        for kind in ("config", "stats", "control"):
            if draw(st.booleans()):
                chosen[f"{name}:{kind}"] = draw(edits(name, kind))
    if draw(st.booleans()):
        chosen["_global"] = draw(GLOBAL_EDITS)
    return chosen
