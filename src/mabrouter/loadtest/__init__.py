"""`mabrouter loadtest`: drive a running router with simulated traffic and report what it did.

- `environment`: the simulated world (true reward per arm, optional drift mid-run); pure.
- `stats`: the counts a worker keeps, how they merge, regret, the SRM chi-square; pure.
- `latency`: Route latency per time bucket (for latency over time), mergeable; pure.
- `driver`: one asyncio worker per process (open or closed loop), Route timing, outcome reporting.
- `runner`: preflight, worker processes, merging; `progress`: the live view.
- `report`: the end report (JSON dict and rich tables); `chart`: the PNG (traffic shares, latency and
  regret over time).

Needs the optional dependencies `hdrhistogram` (latency histograms) and `matplotlib` (the chart).
"""
