"""Committed generated files must match their generators: the gRPC code (protos/, regenerate with
`make protos`) and the golden hash vectors (scripts/gen_hash_vectors.py). Each generator runs as a process."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from support import ROOT


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
        check=True,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    committed = ROOT / "src" / "mabrouter" / "v1"
    for name in ("router_pb2.py", "router_pb2_grpc.py", "router_pb2.pyi"):
        assert filecmp.cmp(tmp_path / "mabrouter" / "v1" / name, committed / name, shallow=False), (
            f"src/mabrouter/v1/{name} is out of date with protos/: run `make protos`"
        )


def test_golden_file_is_what_the_generator_writes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_hash_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
