"""The Redis key schema (documented in the README: operators read and write these keys).

Every key of one experiment carries the experiment name as a hash tag, `{name}`, so all of them live
in one Redis Cluster slot and multi-key Lua scripts stay legal on a cluster.
"""

from __future__ import annotations

PREFIX = "mabrouter:"
EXPERIMENTS = f"{PREFIX}experiments"  # SET of experiment names


def config(experiment: str) -> str:
    """HASH: doc (validated JSON document), version (monotonic int), updated_ms."""
    return f"{PREFIX}{{{experiment}}}:config"


def stats(experiment: str) -> str:
    """HASH: <arm>:trials, <arm>:count, <arm>:sum, <arm>:sumsq (sufficient statistics)."""
    return f"{PREFIX}{{{experiment}}}:stats"


def outcome_seen(experiment: str, nonce: str) -> str:
    """STRING with a TTL: marks a decision id as rewarded, so a second report counts nothing."""
    return f"{PREFIX}{{{experiment}}}:seen:{nonce}"


def batch_seen(experiment: str, batch_id: str) -> str:
    """STRING with a TTL: marks a trial-count batch as applied, so a retried flush counts once."""
    return f"{PREFIX}{{{experiment}}}:batch:{batch_id}"


TRIALS, COUNT, SUM, SUMSQ = "trials", "count", "sum", "sumsq"


def stat_field(arm: str, stat: str) -> str:
    return f"{arm}:{stat}"
