"""Hand-built specs and snapshots for pure-core tests (no I/O)."""

from __future__ import annotations

from mabrouter.core.model import ArmSpec, ArmStats, BetaPrior, ExperimentSpec, NormalPrior, RewardKind
from mabrouter.core.snapshot import ExperimentState, Snapshot, build_experiment_state


def bernoulli_spec(n_arms: int = 3, name: str = "exp") -> ExperimentSpec:
    arms = tuple(ArmSpec(f"arm-{i}", BetaPrior(), {"endpoint": f"http://arm-{i}"}) for i in range(n_arms))
    return ExperimentSpec(name, RewardKind.BERNOULLI, "arm-0", arms)


def gaussian_spec(n_arms: int = 3, name: str = "g") -> ExperimentSpec:
    arms = tuple(ArmSpec(f"arm-{i}", NormalPrior(0.0, 1.0, 1.0, 1.0)) for i in range(n_arms))
    return ExperimentSpec(name, RewardKind.GAUSSIAN, "arm-0", arms)


def state(
    spec: ExperimentSpec, stats: tuple[ArmStats, ...] | None = None, version: int = 1
) -> ExperimentState:
    stats = stats or tuple(ArmStats() for _ in spec.arms)
    return build_experiment_state(spec, version, stats)


def snapshot(*states: ExperimentState) -> Snapshot:
    return Snapshot({s.spec.name: s for s in states}, loaded_at=0.0)
