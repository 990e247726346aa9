"""Non-contextual Route throughput before and after contextual experiments (issue 16), in one run.

    .venv/bin/python benchmarks/contextual_route_guard.py [--baseline COMMIT] [--rounds 6] [--seconds 3]

Issue 16 touched the path every decision takes (decide's last step, the decision id's optional fields,
the trial buffer, the exposure entry, the outcome arguments). This measures whether a plain experiment
pays for it: two `mabrouter serve` processes, one running the code of `--baseline` (default: the commit
before issue 16's first, checked out with `git worktree` into a temp dir and put first on PYTHONPATH),
one the working tree, serve bench_grpc.py's 10-arm experiment with rules from one redis-server. h2load
saturates each in turn (-c 4 -m 16, the setting bench_grpc's sweep usually picks), A B A B..., and the
medians of requests/s and of router CPU per request are compared. Not a test. Writes
benchmarks/results/contextual_route_guard.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grpc import EXPERIMENT, ROUTE, route_request
from common import (
    RESULTS_DIR,
    ROOT,
    RouterServer,
    apply_experiments,
    experiment_doc,
    grpc_frame,
    machine_info,
    median,
    run_h2load,
    running_redis,
    unit_in_rollout,
    write_report,
)

BASELINE = "8c2cee7"  # the last commit before issue 16's contextual work
SETTING = (4, 16)
RESULTS = RESULTS_DIR / "contextual_route_guard.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="guard-") as tmp:
        worktree = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.baseline], check=True
        )
        try:
            report = measure(worktree, Path(tmp), args)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False
            )
    report["baseline"] = args.baseline
    write_report(args.output, report)
    return 0


def measure(worktree: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    imported = subprocess.run(
        [sys.executable, "-c", "import mabrouter; print(mabrouter.__file__)"],
        env={"PYTHONPATH": str(worktree / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not imported.startswith(str(worktree)):  # the editable install must not win over the baseline
        raise RuntimeError(f"the baseline router would import {imported}, not the checkout")
    frame = tmp / "route.bin"
    frame.write_bytes(grpc_frame(route_request(unit_in_rollout(EXPERIMENT, 90))))
    with running_redis() as redis_server:
        apply_experiments(redis_server.url, [experiment_doc(EXPERIMENT)])
        servers = {
            "before": RouterServer(redis_server.url, PYTHONPATH=str(worktree / "src")),
            "after": RouterServer(redis_server.url),
        }
        try:
            for server in servers.values():
                server.wait_serving()
            rates: dict[str, list[float]] = {name: [] for name in servers}
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            for round_index in range(args.rounds):
                for name, server in servers.items():
                    found = run_h2load(
                        server.address,
                        ROUTE,
                        frame,
                        clients=SETTING[0],
                        streams=SETTING[1],
                        duration=args.seconds,
                        server_pids=server.worker_pids(),
                    )
                    rates[name].append(found.requests_per_s)
                    cpu[name].append(found.server_cpu_s / max(found.succeeded, 1) * 1e6)
                    print(f"round {round_index + 1} {name:6s} {found.requests_per_s:8.0f} req/s", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    before, after = median(rates["before"]), median(rates["after"])
    print(
        f"median: before {before:.0f} req/s, after {after:.0f} req/s: after / before = {after / before:.3f}"
    )
    return {
        "benchmark": "contextual_route_guard",
        "machine": machine_info(),
        "setting": {"clients": SETTING[0], "streams": SETTING[1], "seconds": args.seconds},
        "requests_per_s": rates,
        "router_cpu_us_per_request": cpu,
        "median_requests_per_s": {"before": before, "after": after},
        "after_over_before": after / before,
    }


if __name__ == "__main__":
    sys.exit(main())
