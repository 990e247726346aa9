"""Calibration: every number an operator reads, held against the truth it estimates, by simulation.

`simulate` runs experiments with a known truth through the real decision core and the runtime's trial
counting; `measures` holds the statistics of the statistics (coverage, reliability, bias, alarm rates);
`suite` defines the scenarios (one per policy feature and their combinations) and what each one checks.
`benchmarks/bench_calibration.py` runs the full suite and writes docs/statistics.md's tables;
`tests/unit/test_calibration.py` runs a reduced, seeded version in `make test`.
"""
