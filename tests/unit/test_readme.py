"""The README's two commands are the ones CI runs, and its "Running it" works for a reader who just cloned the
repository (no I/O beyond reading)."""

from __future__ import annotations

import re

from support import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
RUNNING_IT = README.split("## Running it", 1)[1].split("\n## ", 1)[0]


def test_every_experiment_file_it_applies_is_in_the_repository() -> None:
    files = re.findall(r"mabrouter experiment (?:apply|validate) (\S+\.ya?ml)", RUNNING_IT)
    assert files, "the section shows how to apply an experiment file"
    missing = [name for name in files if not (ROOT / name).is_file()]
    assert not missing, f"README 'Running it' names files that are not in the repository: {missing}"


def test_it_names_the_extras_some_commands_need() -> None:
    missing = [extra for extra in ("loadtest", "report", "openfeature") if f"[{extra}]" not in RUNNING_IT]
    assert not missing, f"README 'Running it' does not say how to install {missing}"


def test_the_two_commands_are_the_ones_ci_and_make_run() -> None:
    two = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)", two, flags=re.MULTILINE)
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == "make test", ".ci/run ends by running the README's test command"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), f"the Makefile has no {target} target"
