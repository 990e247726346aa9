"""An archived experiment, as the snapshot builder and decide() treat it (pure: raw data in, answers out).

Archiving is an operator's deliberate act: the builder lists the experiment in `Snapshot.archived` without
building or judging what is stored for it (not an error: the `mabrouter.snapshot` health reads the
snapshot's errors), and decide() answers the caller's default_arm, or ExperimentArchivedError
(FAILED_PRECONDITION) without one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from mabrouter.core.decide import RouteInput, decide
from mabrouter.core.model import Reason
from mabrouter.errors import ErrorCode, ExperimentArchivedError, UnknownExperimentError
from mabrouter.runtime.snapshot_builder import SnapshotBuilder
from mabrouter.store.experiment_decoder import archived_at_ms, is_archived, switches
from mabrouter.store.records import RawExperiment, RawState

from support import EXAMPLE

DOC = json.dumps(yaml.safe_load(EXAMPLE.read_text()))
RNG = np.random.default_rng(7)


def state(control: dict[str, str], doc: str = DOC) -> RawState:
    ranker = RawExperiment("ranker", {"doc": doc, "version": "3"}, {"ranker-v2:trials": "10"}, control)
    other = RawExperiment("other", {"doc": DOC.replace('"ranker"', '"other"', 1), "version": "1"}, {}, {})
    return RawState([ranker, other], {})


@pytest.mark.parametrize("value", ["1712000000000", "1", "yes", "true", " on "])
def test_any_value_but_an_off_one_archives(value: str) -> None:
    assert is_archived({"archived": value})


@pytest.mark.parametrize("value", ["", "0", "no", "false", "off"])
def test_unset_or_off_values_do_not_archive(value: str) -> None:
    assert not is_archived({"archived": value})
    assert not is_archived({})


def test_the_archive_time_is_read_only_when_it_is_one() -> None:
    assert archived_at_ms({"archived": "1712000000000"}) == 1712000000000
    assert archived_at_ms({"archived": "yes"}) is None
    assert archived_at_ms({"archived": "0"}) is None


def test_the_lifecycle_field_is_not_a_switch() -> None:
    """parse_controls would report `archived` as an unknown switch field: status and kill strip it."""
    assert switches({"kill": "1", "archived": "17", "rollout": "5"}) == {"kill": "1", "rollout": "5"}


def test_an_archived_experiment_is_listed_not_built_and_not_an_error() -> None:
    builder = SnapshotBuilder()
    live = builder.build(state({}), None, 0.0)
    assert set(live.experiments) == {"ranker", "other"}
    archived = builder.build(state({"archived": "1712000000000", "kill": "1"}), live, 1.0)
    assert archived.archived == frozenset({"ranker"})
    assert set(archived.experiments) == {"other"}
    assert archived.errors == {}
    assert builder.invalid_documents == 0


def test_an_archived_experiment_whose_document_is_broken_is_still_no_error() -> None:
    """Nobody serves it: what is stored for it is not judged until it is unarchived."""
    builder = SnapshotBuilder()
    snapshot = builder.build(state({"archived": "1"}, doc="{not json"), None, 0.0)
    assert snapshot.archived == frozenset({"ranker"})
    assert snapshot.errors == {}
    unarchived = builder.build(state({}, doc="{not json"), snapshot, 1.0)
    assert "document is not JSON" in unarchived.errors["ranker"]


def test_unarchived_it_is_served_again_from_what_is_stored() -> None:
    builder = SnapshotBuilder()
    first = builder.build(state({"kill:ranker-v3": "1"}), None, 0.0)
    archived = builder.build(state({"kill:ranker-v3": "1", "archived": "1"}), first, 1.0)
    again = builder.build(state({"kill:ranker-v3": "1"}), archived, 2.0)
    assert again.archived == frozenset()
    served = again.experiments["ranker"]
    assert (served.version, served.controls.killed_arms) == (3, frozenset({"ranker-v3"}))
    assert served.stats[1].trials == 10


def test_decide_answers_the_default_arm_for_an_archived_experiment() -> None:
    snapshot = SnapshotBuilder().build(state({"archived": "1"}), None, 0.0)
    decision = decide(RouteInput("ranker", "u-1", default_arm="ranker-v1"), snapshot, RNG)
    assert (decision.arm, decision.reason, decision.counted) == ("ranker-v1", Reason.FALLBACK_DEFAULT, False)
    assert (decision.propensity, decision.config_version) == (1.0, 0)


def test_decide_refuses_an_archived_experiment_without_a_default_arm() -> None:
    snapshot = SnapshotBuilder().build(state({"archived": "1"}), None, 0.0)
    with pytest.raises(ExperimentArchivedError, match="'ranker' is archived") as refused:
        decide(RouteInput("ranker", "u-1"), snapshot, RNG)
    assert refused.value.code is ErrorCode.FAILED_PRECONDITION
    assert "mabrouter experiment unarchive ranker" in str(refused.value)
    with pytest.raises(UnknownExperimentError):  # a name never stored is still NOT_FOUND
        decide(RouteInput("nope", "u-1"), snapshot, RNG)
