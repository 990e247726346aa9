"""The `--help` text of the lifecycle commands: what each does, what routers answer, what a column counts."""

from __future__ import annotations

import pytest

from mabrouter.cli import main


def help_text(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width


def test_apply_takes_a_file_or_a_directory_with_prune_and_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "experiment", "apply")
    assert "FILE|DIR" in text
    assert "every file is validated before anything is written" in text
    assert "--prune with a directory: archive stored experiments it has no file for" in text
    assert "--dry-run print what would change, field by field; write nothing" in text


def test_archive_says_what_routers_answer(capsys: pytest.CaptureFixture[str]) -> None:
    listing = help_text(capsys, "experiment")
    assert "archive stop serving an experiment, keeping its statistics, logs and switches" in listing
    assert "default_arm with reason FALLBACK_DEFAULT, or FAILED_PRECONDITION without one" in listing
    assert "unarchive serve an archived experiment again, as it was" in listing
    assert "delete remove every key of an archived experiment" in listing
    for command in ("archive", "unarchive", "delete"):
        text = help_text(capsys, "experiment", command)
        assert "experiment the experiment's name" in text
        assert "--reason REASON why: recorded in the audit log" in text


def test_delete_needs_yes(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "experiment", "delete")
    assert "--yes really delete (it cannot be undone)" in text


def test_status_says_what_each_fleet_column_counts(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "status")
    assert "experiment the experiment's name (omit it: every experiment)" in text
    assert "STATE live, killed (the experiment's or the global kill switch), archived, or unusable" in text
    assert (
        "DECISIONS 1H entries routers wrote to the experiment's decision log (mabrouter:{EXP}:decisions)"
        in text
    )
    assert "every Route answer except FALLBACK_DEFAULT ones" in text
    assert "Counted exactly up to 100,000, shown as 100,000+ beyond" in text
    assert "GUARDRAIL ACTIONS arms killed by guardrails" in text
