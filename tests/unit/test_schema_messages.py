"""Experiment file errors talk about the file the operator wrote: field paths as the file spells them,
no internal class names, and a plain sentence for an empty file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mabrouter.errors import ConfigError
from mabrouter.schema import load_experiment_file

GOOD = """\
name: ranker
control: a
arms:
  - name: a
  - name: b
"""


def refusal(path: Path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_experiment_file(path)
    return str(caught.value)


def test_a_wrong_type_names_the_field_without_internal_classes(tmp_path: Path) -> None:
    message = refusal(tmp_path / "x.yaml", GOOD + "    prior: {alpha: lots, beta: 1}\n")
    assert "arms[1].prior.alpha: Input should be a valid number" in message
    assert "Doc" not in message
    assert message.count("arms[1].prior.alpha") == 1  # both prior shapes fail the same way: said once


def test_an_empty_file_says_what_a_file_needs(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    for text in ("", "# only a comment\n"):
        message = refusal(path, text)
        assert message == f"{path} is empty: an experiment file needs name, control and arms"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- name: a\n", "(document): expected a mapping of fields (key: value), got a list"),
        ("just words\n", "(document): expected a mapping of fields (key: value), got a string"),
        (
            GOOD.replace("  - name: b", "  - b"),
            "arms[1]: expected a mapping of fields (key: value), got a string",
        ),
    ],
)
def test_a_wrong_shape_says_what_was_expected(tmp_path: Path, text: str, expected: str) -> None:
    message = refusal(tmp_path / "x.yaml", text)
    assert expected in message
    assert "ExperimentDoc" not in message
    assert "ArmDoc" not in message
