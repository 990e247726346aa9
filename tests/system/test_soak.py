"""Soak: minutes of chaos (Redis and router killed, restarted, hung), traffic and outcomes throughout, then
the ledger: every acknowledged outcome counted exactly once. Excluded from the default run (marker slow):

    .venv/bin/pytest -m slow tests/system/test_soak.py -s
    MABROUTER_SOAK_SECONDS=1800 MABROUTER_SOAK_SEED=7 .venv/bin/pytest -m slow tests/system/test_soak.py -s
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from faults import AOF
from ledger import LedgerRun
from support import apply_ranker, running_redis

SECONDS = float(os.environ.get("MABROUTER_SOAK_SECONDS", "300"))
SEED = int(os.environ.get("MABROUTER_SOAK_SEED", str(time.time_ns() % 1_000_000)))


@pytest.mark.slow
@pytest.mark.timeout(int(SECONDS) + 600)
def test_soak_chaos_ends_with_an_exact_ledger(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"\nsoak: {SECONDS:.0f}s, seed {SEED} (MABROUTER_SOAK_SEED={SEED} replays the same fault sequence)")
    with running_redis(*AOF) as redis_server:
        apply_ranker(redis_server.url)
        run = LedgerRun(redis_server, tmp_path / "spool")
        faults: list[tuple[str, Callable[[], None]]] = [
            ("redis SIGKILL", lambda: run.redis_restart(kill=True, down_for=rng.uniform(0.2, 3.0))),
            ("redis SIGTERM", lambda: run.redis_restart(kill=False, down_for=rng.uniform(0.2, 3.0))),
            ("redis SIGSTOP", lambda: run.redis_stall(rng.uniform(1.0, 4.0))),
            ("router SIGKILL", lambda: run.router_restart(kill=True)),
            ("router SIGTERM", lambda: run.router_restart(kill=False)),
        ]
        started = time.monotonic()
        try:
            run.start_clients(workers=4, total=None, pause=0.004)
            while time.monotonic() - started < SECONDS:
                time.sleep(rng.uniform(2.0, 8.0))
                name, fault = rng.choice(faults)
                fault_started = time.monotonic()
                fault()
                took = time.monotonic() - fault_started
                print(
                    f"  t={fault_started - started:6.1f}s {name:15s} ({took:.1f}s); "
                    f"{run.ledger.done} decisions, {len(run.ledger.acknowledged)} acknowledged"
                )
            run.stop_clients()
            numbers = run.settle()
        finally:
            run.close()
    print(f"soak ledger after {time.monotonic() - started:.0f}s: {numbers}")
    assert numbers["applied_final"] == numbers["decisions"] > 0
    assert numbers["duplicates_on_replay"] == numbers["decisions"]
