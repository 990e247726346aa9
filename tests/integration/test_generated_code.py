"""The committed generated code must match protos/ exactly (regenerate: make protos)."""

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
