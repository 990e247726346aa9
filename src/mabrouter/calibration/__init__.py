"""Calibration: every number an operator reads, held against the truth it estimates, by simulation.

`world` and `simulate` run experiments with a known truth through the real decision core and the
runtime's trial counting; `measures` holds the statistics of the statistics (coverage, reliability,
bias, alarm rates); `scenarios` defines one experiment per policy feature and their combination;
`healthy`, `broken` and `watching` measure the estimates, the sample-ratio checks against broken splits,
the guardrails and peeking. `benchmarks/bench_calibration.py` runs the full suite and writes
docs/statistics.md's tables; `tests/unit/test_calibration.py` runs a reduced, seeded version.
"""
