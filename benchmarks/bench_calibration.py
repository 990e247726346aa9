"""The full calibration suite: every estimate operators read, against the truth, over many seeds.

    .venv/bin/python benchmarks/bench_calibration.py [--seeds 200] [--batches 20] [--batch-size 250]
        [--docs docs/statistics.md]
    .venv/bin/python benchmarks/bench_calibration.py --render benchmarks/results/calibration.json [--docs ...]

Runs every scenario of `mabrouter.calibration.suite` (one per policy feature and a combination), the
broken splits the sample-ratio checks must catch, the guardrails (healthy and regressed arms) and the
peeking experiment; prints the tables, writes benchmarks/results/calibration.json, and with `--docs`
rewrites the block between the calibration markers of docs/statistics.md, so every row there comes
from a run of this script. It measures; nothing passes or fails (tests/unit/test_calibration.py holds
a reduced, seeded version to tolerances). Scenarios run in parallel, one process per core.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from mabrouter.calibration.broken import LossyHoldout, LossyReplica, PooledAllocation, detection
from mabrouter.calibration.contextual import contextual
from mabrouter.calibration.healthy import healthy
from mabrouter.calibration.measures import binomial_consistent
from mabrouter.calibration.scenarios import SCENARIOS, Size
from mabrouter.calibration.watching import guardrail, peeking
from mabrouter.runtime.trials import TrialBuffer

RESULTS = Path(__file__).resolve().parent / "results" / "calibration.json"
BEGIN, END = "<!-- calibration:begin -->", "<!-- calibration:end -->"

BROKEN: dict[str, tuple[str, Callable[[], TrialBuffer]]] = {
    "segments counted against the pooled allocation (issue 17's bug)": ("segments", PooledAllocation),
    "a replica losing 1 in 10 of arm-1's decision records": ("plain", lambda: LossyReplica("arm-1", 10)),
    "a replica losing 1 in 3 of arm-1's decision records": ("plain", lambda: LossyReplica("arm-1", 3)),
    "a replica losing 1 in 3 holdout decisions": ("holdout", lambda: LossyHoldout(3)),
    "a replica losing 1 in 10 holdout decisions": ("holdout", lambda: LossyHoldout(10)),
}
GUARDS = {
    "error rate, healthy (5 % everywhere)": ("error_rate", (0.05, 0.05, 0.05)),
    "error rate, regressed (arm-1 at 15 %)": ("error_rate", (0.05, 0.15, 0.05)),
    "error rate, slightly worse (arm-1 at 6 %, within the +2 pt allowance)": (
        "error_rate",
        (0.05, 0.06, 0.05),
    ),
    "latency cap, healthy (200 ms)": ("latency_cap", (200.0, 200.0, 200.0)),
    "latency cap, regressed (arm-1 at 290 ms)": ("latency_cap", (200.0, 290.0, 200.0)),
}


def _healthy(args: tuple[str, Size]) -> dict[str, Any]:
    return healthy(*args).as_json()


def _broken(args: tuple[str, Size]) -> dict[str, Any]:
    label, size = args
    scenario, buffer = BROKEN[label]
    arm, holdout = detection(scenario, size, buffer)
    return {"label": label, "scenario": scenario, "arm_split": arm.as_json(),
            "holdout_split": holdout.as_json() if holdout else None}  # fmt: skip


def _guard(args: tuple[str, Size]) -> dict[str, Any]:
    label, size = args
    kind, metric = GUARDS[label]
    return {"label": label, **guardrail(kind, metric, size).as_json()}


def _contextual(size: Size) -> dict[str, Any]:
    return contextual(size).as_json()


def _peek(args: tuple[bool, Size]) -> dict[str, Any]:
    equal, size = args
    return {"equal_arms": equal, **peeking(size, equal_arms=equal, thresholds=(0.95, 0.99, 0.999)).as_json()}


def _pct(value: float | None) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f} %"
    )


def _p(value: float) -> str:
    """A p-value, or '-' when too few predictions fell in bins to compute one."""
    return "-" if math.isnan(value) else f"{value:.3g}"


def _band(rate: dict[str, Any] | None) -> str:
    if rate is None:
        return "-"
    low, high = rate["band"]
    return (
        f"{_pct(rate['rate'])} ({round(rate['rate'] * rate['n'])}/{rate['n']}; band {_pct(low)}-{_pct(high)})"
    )


def _table(caption: str, header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "",
        caption,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _consistent(bin_json: dict[str, Any]) -> bool:
    hits = round(bin_json["observed"] * bin_json["n"])
    return binomial_consistent(hits, bin_json["n"], bin_json["mean_predicted"])


def _srm_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [r["scenario"], _band(r["srm_alarms"]), _band(r["srm_at_5_percent"]), f"{r['srm_pooled_p']:.3g}",
         _band(r["holdout_alarms"])]
        for r in results["healthy"]
    ]  # fmt: skip


def _posterior_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in results["healthy"]:
        if r["coverage"] is None:
            continue
        off = sum(not _consistent(b) for b in r["p_beats_control"])
        rows.append([r["scenario"], _band(r["coverage"]), _band(r["lift_coverage"]),
                     _p(r["p_best_calibration_p"]),
                     f"{off} of {len(r['p_beats_control'])}"])  # fmt: skip
    return rows


def _ipw_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in results["healthy"]:
        ips_z = max(abs(b["z"]) for b in r["ips"].values())
        snips_z = max(abs(b["z"]) for b in r["snips"].values())
        errors = ", ".join(f"{arm} {b['mean_error']:+.4f}" for arm, b in r["ips"].items())
        rows.append([r["scenario"], f"{ips_z:.2f}", errors, f"{snips_z:.2f}"])
    return rows


def _guard_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in results["guardrails"]:
        batches = r["median_batches_to_kill"]
        killed = bool(r["kills"]["rate"])
        rows.append([
            r["label"], _pct(r["kills"]["rate"]), f"{r['eligible']} of {r['runs']}",
            f"{batches:.1f}" if killed else "-", "yes" if r["min_samples_respected"] else "NO",
            ", ".join(map(str, r["smallest_evidence"])) if killed else "-",
        ])  # fmt: skip
    return rows


def _peek_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in results["peeking"]:
        world = "A/A: three equal arms (10 %)" if r["equal_arms"] else "truth drawn from the prior"
        marks = zip(r["thresholds"], r["reached_by_a_non_best_arm"], r["at_the_end"], strict=True)
        rows += [[world, str(t), _pct(ever["rate"]), _pct(end["rate"])] for t, ever, end in marks]
    return rows


def _contextual_table(results: dict[str, Any]) -> list[str]:
    found = results.get("contextual")
    if found is None:
        return []
    ipw = found["ipw"]
    return _table(
        "**Contextual policy** (3 arms, rates linear in a standardized number and a one-hot string; "
        "calibration/contextual.py)",
        ["traffic split alarms", "IPW: mean error, z", "95 % prediction bands covering the true rate"],
        [
            [
                _band(found["srm_alarms"]),
                f"{ipw['mean_error']:+.4f}, z {ipw['z']:.2f}",
                _band(found["coverage"]),
            ]
        ],
    )


def tables(results: dict[str, Any]) -> str:
    size = results["size"]
    plain = next(r for r in results["healthy"] if r["scenario"] == "plain")
    lines = [
        f"Measured {results['date']} with `benchmarks/bench_calibration.py --seeds {size['seeds']} "
        f"--batches {size['batches']} --batch-size {size['batch_size']}` ({results['seconds']:.0f} s, "
        f"{results['cores']} processes). Bands: where a calibrated number falls (3 binomial standard errors "
        "around the nominal rate).",
        *_table(
            "**Sample-ratio checks on healthy experiments** (alarm: p < 0.001, what `status` flags)",
            ["scenario", "traffic split alarms", "at p < 0.05", "every run's chi-square summed: p",
             "holdout split alarms"],
            _srm_rows(results),
        ),
        *_table(
            "**Detection of broken splits** (alarm: p < 0.001)",
            ["broken split", "traffic split alarms", "holdout split alarms"],
            [[r["label"], _pct(r["arm_split"]["rate"]),
              _pct(r["holdout_split"]["rate"]) if r["holdout_split"] else "-"] for r in results["broken"]],
        ),
        *_table(
            "**Posteriors against the truth** (truth drawn from the priors; not for `segments`, whose pooled "
            "posterior describes a mixture of segments)",
            ["scenario", "95 % interval coverage", "lift interval coverage", "P(best) calibration p",
             "P(beats control) bins off"],
            _posterior_rows(results),
        ),
        *_table(
            "**P(best) reliability** (scenario `plain`: of arms given about p, how many were truly best)",
            ["P(best) bin", "arms", "mean P(best)", "truly best", "band"],
            [[f"{b['bin'][0]:.2f}-{b['bin'][1]:.2f}", str(b["n"]), f"{b['mean_predicted']:.3f}",
              f"{b['observed']:.3f}", f"{b['band'][0]:.3f}-{b['band'][1]:.3f}"] for b in plain["p_best"]],
        ),
        *_table(
            "**IPW and SNIPS from the exposure log** (fixed truths 10 %, 12 %, 14 %, ...; error: estimate "
            "minus true mean, averaged over runs; z: error / its standard error)",
            ["scenario", "IPS: largest abs z", "IPS mean error per arm", "SNIPS: largest abs z"],
            _ipw_rows(results),
        ),
        *_table(
            "**Guardrails** (min_samples 300, probability 0.95; judged after every batch of "
            f"{size['batch_size']} decisions, as the guardian judges after every refresh)",
            ["world", "arm-1 killed", "runs where a kill was possible", "median batches to kill",
             "min_samples respected", "earliest kill: arm n, control n"],
            _guard_rows(results),
        ),
        *_contextual_table(results),
        *_table(
            "**Peeking** (P(best) checked after every batch; a false winner: an arm that is not the best "
            "reaching the threshold)",
            ["world", "threshold", "false winner at some check", "at the last check only"],
            _peek_rows(results),
        ),
    ]  # fmt: skip
    return "\n".join(lines)


def write_docs(path: Path, block: str) -> None:
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(text[:start] + "\n" + block + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--docs", type=Path, help="rewrite the calibration block of this file")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--render", type=Path, help="print (and with --docs write) the tables of a saved run")
    args = parser.parse_args()
    if args.render:
        block = tables(json.loads(args.render.read_text()))
        print(block)
        if args.docs:
            write_docs(args.docs, block)
        return
    size = Size(args.seeds, args.batches, args.batch_size)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        healthy_runs = pool.map(_healthy, [(name, size) for name in SCENARIOS])
        broken_runs = pool.map(_broken, [(label, size) for label in BROKEN])
        guard_runs = pool.map(_guard, [(label, size) for label in GUARDS])
        peek_runs = pool.map(_peek, [(equal, size) for equal in (True, False)])
        contextual_run = pool.submit(_contextual, size)
        results: dict[str, Any] = {
            "size": {"seeds": size.seeds, "batches": size.batches, "batch_size": size.batch_size},
            "healthy": list(healthy_runs),
            "broken": list(broken_runs),
            "guardrails": list(guard_runs),
            "peeking": list(peek_runs),
            "contextual": contextual_run.result(),
        }
    results["seconds"] = time.perf_counter() - started
    results["cores"] = args.workers
    results["date"] = time.strftime("%Y-%m-%d")
    block = tables(results)
    print(block)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {args.output}")
    if args.docs:
        write_docs(args.docs, block)
        print(f"rewrote the calibration block of {args.docs}")


if __name__ == "__main__":
    main()
