"""The Redis key schema (documented in docs/contract.md, "Redis keys": operators read and write these keys).

Every key of one experiment carries the experiment name as a hash tag, `{name}`, so all of them live
in one Redis Cluster slot and multi-key Lua scripts stay legal on a cluster. Global switches use the tag
`{_global}`, which no experiment can take (names start with a letter or digit).
"""

from __future__ import annotations

PREFIX = "mabrouter:"
EXPERIMENTS = f"{PREFIX}experiments"  # SET of experiment names
CHANGES_CHANNEL = f"{PREFIX}changes"  # pub/sub: the CLI publishes the changed experiment's name
GLOBAL_SCOPE = "_global"


def config(experiment: str) -> str:
    """HASH: doc (validated JSON document), version (monotonic int), updated_ms."""
    return f"{PREFIX}{{{experiment}}}:config"


def stats(experiment: str) -> str:
    """HASH: <arm>:trials, <arm>:count, <arm>:sum, <arm>:sumsq (sufficient statistics)."""
    return f"{PREFIX}{{{experiment}}}:stats"


def control(scope: str) -> str:
    """HASH of operator switches: kill, kill:<arm>, rollout, reason, version (see controls_codec), and
    the lifecycle field `archived` (experiment_decoder.is_archived)."""
    return f"{PREFIX}{{{scope}}}:control"


def experiment_pattern(experiment: str) -> str:
    """A SCAN pattern matching every key of one experiment, whatever its family: they all start with
    `mabrouter:{name}:` (the hash tag), so a family added later is still found. Glob characters are
    escaped, though names cannot hold them today."""
    escaped = "".join(f"\\{char}" if char in "*?[]\\" else char for char in experiment)
    return f"{PREFIX}{{{escaped}}}:*"


def family_of(experiment: str, key: str) -> str:
    """The family one of the experiment's keys belongs to, as a pattern an operator reads:
    `mabrouter:{name}:stats`, `mabrouter:{name}:sticky:*`..."""
    tag = f"{PREFIX}{{{experiment}}}:"
    family, _, rest = key.removeprefix(tag).partition(":")
    return f"{tag}{family}{':*' if rest else ''}"


def audit(scope: str) -> str:
    """STREAM: append-only audit log of changes (who, when, what, before/after, reason)."""
    return f"{PREFIX}{{{scope}}}:audit"


def audited(scope: str) -> str:
    """HASH: target -> sha1 of the value last recorded in the audit log (by the CLI or a replica).

    A replica that notices a raw edit records it only when the recorded value is the edit's `before`,
    so one edit gets one entry however many replicas notice it (or notice it late), and repeating an
    edit later gets a new entry.
    """
    return f"{PREFIX}{{{scope}}}:audited"


def decisions_log(experiment: str) -> str:
    """STREAM (capped): one entry per decision: d (nonce), ts, unit, arm, reason, p, v, counted, seg.*"""
    return f"{PREFIX}{{{experiment}}}:decisions"


def outcomes_log(experiment: str) -> str:
    """STREAM (capped): one entry per applied outcome: d (nonce), ts, arm, reward"""
    return f"{PREFIX}{{{experiment}}}:outcomes"


def outcome_seen(experiment: str, nonce: str) -> str:
    """STRING with a TTL: marks a decision id as rewarded, so a second report counts nothing."""
    return f"{PREFIX}{{{experiment}}}:seen:{nonce}"


def batch_seen(experiment: str, batch_id: str) -> str:
    """STRING with a TTL: marks a trial-count batch as applied, so a retried flush counts once."""
    return f"{PREFIX}{{{experiment}}}:batch:{batch_id}"


def sticky(experiment: str, salt: str, unit_id: str) -> str:
    """STRING with a TTL: the arm a unit was first assigned (the salt is in the key: a new salt resets)."""
    return f"{PREFIX}{{{experiment}}}:sticky:{salt}:{unit_id}"


TRIALS, COUNT, SUM, SUMSQ = "trials", "count", "sum", "sumsq"
# Sampled decisions served, and the count the allocation in force expected: the sample-ratio check.
SAMPLED, EXPECTED = "sampled", "expected"
# Holdout split counters in the stats hash (names no arm can take: arms start with a letter or digit).
SPLIT_HOLDOUT, SPLIT_BANDIT = "_split:holdout", "_split:bandit"
SPLIT_CELL = "_split:cell:"  # _split:cell:<k>: exposed decisions of units in holdout cell k
METRIC_PREFIX = "m:"  # <arm>:m:<metric>:n|sum|sumsq: guardrail metrics of counted outcomes
KILL, KILL_ARM_PREFIX, ROLLOUT, REASON, VERSION = "kill", "kill:", "rollout", "reason", "version"
# In the control hash: when the experiment was archived (ms since the epoch). Routers serve no archived
# experiment; any value but '', 0, false, no or off means archived (an operator may write 1 by hand).
ARCHIVED = "archived"
RAMP_PREFIX, RAMP_SINCE_PREFIX = "ramp:", "ramp_since:"  # ramp:<arm> = step index, ramp_since:<arm> = ms
AUDIT_MAXLEN = 100_000


def stat_field(arm: str, stat: str, segment: str = "") -> str:
    """`<arm>:<stat>`, or `@<segment>|<arm>:<stat>` for a segment's own statistics (same hash)."""
    return f"@{segment}|{arm}:{stat}" if segment else f"{arm}:{stat}"


SEGMENT_PREFIX = "@"
# Discounted statistics (forward decay, core/discount.py): <arm>:d:<stat>, and the epoch of their scale.
DISCOUNTED = "d:"
EPOCH = "_epoch"


def kill_arm_field(arm: str) -> str:
    return f"{KILL_ARM_PREFIX}{arm}"
