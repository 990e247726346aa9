"""Experiment documents: what is accepted, and refusals that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from mabrouter.core.model import BetaPrior, NormalPrior, RewardKind
from mabrouter.errors import ConfigError
from mabrouter.schema import load_experiment_file, parse_experiment

from support import EXAMPLE

GOOD = {"name": "ranker", "control": "a", "arms": [{"name": "a"}, {"name": "b"}]}


def test_the_shipped_example_is_valid() -> None:
    spec = load_experiment_file(EXAMPLE).to_spec()
    assert spec.reward is RewardKind.BERNOULLI
    assert [arm.name for arm in spec.arms] == ["ranker-v1", "ranker-v2", "ranker-v3"]
    assert spec.arms[0].payload == {"endpoint": "http://ranker-v1:8080"}


def test_gaussian_priors() -> None:
    doc = parse_experiment(
        {
            **GOOD,
            "reward": "gaussian",
            "arms": [{"name": "a", "prior": {"mean": 2, "kappa": 0.5}}, {"name": "b"}],
        },
        "t",
    )
    spec = doc.to_spec()
    assert spec.arms[0].prior == NormalPrior(2.0, 0.5, 1.0, 1.0)
    assert spec.arms[1].prior == NormalPrior()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"colour": "red"}, "colour: unknown field"),
        ({"arms": [{"name": "a", "weight": 2}, {"name": "b"}]}, "arms[0].weight: unknown field"),
        ({"control": "c"}, "control 'c' is not one of the arms"),
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
        ({"arms": [{"name": "a"}]}, "arms: List should have at least 2 items"),
        ({"reward": "poisson"}, "reward: Input should be 'bernoulli' or 'gaussian'"),
        ({"name": "has space"}, "name: String should match pattern"),
        (
            {"arms": [{"name": "a", "prior": {"mean": 1}}, {"name": "b"}]},
            "a bernoulli experiment takes a prior with alpha, beta",
        ),
        ({"arms": [{"name": "a", "prior": {"alpha": -1}}, {"name": "b"}]}, "greater than 0"),
    ],
)
def test_mistakes_are_refused_naming_the_field(change: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_experiment({**GOOD, **change}, "file.yaml")
    assert needle in str(info.value), str(info.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment_file(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_experiment_file(tmp_path / "missing.yaml")


def test_default_priors_are_uniform() -> None:
    assert parse_experiment(GOOD, "t").to_spec().arms[0].prior == BetaPrior(1.0, 1.0)
