"""Lua scripts: each runs atomically in Redis, so concurrent replicas never lose an increment."""

from __future__ import annotations

# KEYS[1] stats hash, KEYS[2] seen marker. ARGV: arm, reward, reward^2, marker ttl seconds, counted.
# Returns 1 when applied, 0 when this decision was already rewarded (idempotent retry or duplicate).
RECORD_OUTCOME = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) then
  return 0
end
if ARGV[5] == '1' then
  redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':count', 1)
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1] .. ':sum', ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1] .. ':sumsq', ARGV[3])
end
return 1
"""

# KEYS[1] stats hash, KEYS[2] batch marker. ARGV: marker ttl seconds, then arm, count pairs.
# A flush that is retried after a lost reply is applied once.
APPLY_TRIALS = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i] .. ':trials', ARGV[i + 1])
end
return 1
"""

# KEYS[1] config hash. ARGV: document JSON, now ms. Returns the new, strictly greater version.
APPLY_CONFIG = """
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'updated_ms', ARGV[2])
return version
"""
