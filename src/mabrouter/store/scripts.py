"""Lua scripts: each runs atomically in Redis, so concurrent replicas never lose an increment.

Every script touches keys of one hash tag only, so each is legal on Redis Cluster.
"""

from __future__ import annotations

# Forward-decay rescaling (core/discount.py): increments were scaled to the writer's epoch ARGV[e]; the
# stored epoch (set by the first writer) may differ, after a rebase or a race: rescale to it.
_EPOCH_FACTOR = """
local function epoch_factor(epoch_used, half_life_ms)
  if epoch_used == '' then
    return 1
  end
  redis.call('HSETNX', KEYS[1], '_epoch', epoch_used)
  local stored = tonumber(redis.call('HGET', KEYS[1], '_epoch'))
  return 2 ^ ((tonumber(epoch_used) - stored) / tonumber(half_life_ms))
end
"""

# apply_outcome(seen, a, m): apply one outcome to the stats hash KEYS[1] unless its seen marker exists.
# a: arm, reward, reward^2, marker ttl seconds, counted, segment ('' for none), epoch used ('' without
# discounting), half-life ms, weight at the epoch used; guardrail metric name, value, value^2 triples
# from a[m] on. Returns 1 when applied, 0 when this decision was already rewarded (idempotent retry or
# duplicate).
_APPLY_OUTCOME = """
local function apply_outcome(seen, a, m)
  if not redis.call('SET', seen, '1', 'NX', 'EX', a[4]) then
    return 0
  end
  if a[5] == '1' then
    redis.call('HINCRBY', KEYS[1], a[1] .. ':count', 1)
    redis.call('HINCRBYFLOAT', KEYS[1], a[1] .. ':sum', a[2])
    redis.call('HINCRBYFLOAT', KEYS[1], a[1] .. ':sumsq', a[3])
    if a[6] ~= '' then
      local prefix = '@' .. a[6] .. '|' .. a[1]
      redis.call('HINCRBY', KEYS[1], prefix .. ':count', 1)
      redis.call('HINCRBYFLOAT', KEYS[1], prefix .. ':sum', a[2])
      redis.call('HINCRBYFLOAT', KEYS[1], prefix .. ':sumsq', a[3])
    end
    if a[7] ~= '' then
      local w = tonumber(a[9]) * epoch_factor(a[7], a[8])
      redis.call('HINCRBYFLOAT', KEYS[1], a[1] .. ':d:count', w)
      redis.call('HINCRBYFLOAT', KEYS[1], a[1] .. ':d:sum', tonumber(a[2]) * w)
      redis.call('HINCRBYFLOAT', KEYS[1], a[1] .. ':d:sumsq', tonumber(a[3]) * w)
    end
    for i = m, #a, 3 do
      local prefix = a[1] .. ':m:' .. a[i]
      redis.call('HINCRBY', KEYS[1], prefix .. ':n', 1)
      redis.call('HINCRBYFLOAT', KEYS[1], prefix .. ':sum', a[i + 1])
      redis.call('HINCRBYFLOAT', KEYS[1], prefix .. ':sumsq', a[i + 2])
    end
  end
  return 1
end
"""

# KEYS[1] stats hash, KEYS[2] seen marker. ARGV: one outcome as in apply_outcome, metrics from ARGV[10].
# Returns 1 when applied, 0 when this decision was already rewarded (idempotent retry or duplicate).
RECORD_OUTCOME = _EPOCH_FACTOR + _APPLY_OUTCOME + "return apply_outcome(KEYS[2], ARGV, 10)\n"

# Many outcomes of one experiment in one call, each applied exactly as RECORD_OUTCOME applies it, in
# order (a nonce repeated in the batch is a duplicate the second time), and each applied one appended
# to the outcomes log in the same atomic step.
# KEYS[1] stats hash, KEYS[2] outcomes log stream, KEYS[2 + i] the seen marker of outcome i.
# ARGV[1] the log's approximate cap (0: no log entry), ARGV[2] the log entries' ts (ms), ARGV[3] a JSON
# array of outcomes, each an array of strings: apply_outcome's a with the nonce at a[10] and the
# metric triples from a[11]. Returns an array: 1 where applied, 0 where a duplicate.
RECORD_OUTCOMES = (
    _EPOCH_FACTOR
    + _APPLY_OUTCOME
    + """
local cap = tonumber(ARGV[1])
local applied = {}
for i, a in ipairs(cjson.decode(ARGV[3])) do
  local ok = apply_outcome(KEYS[i + 2], a, 11)
  if ok == 1 and cap > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'd', a[10], 'ts', ARGV[2], 'arm', a[1],
      'reward', a[2])
  end
  applied[i] = ok
end
return applied
"""
)

# KEYS[1] a log stream. ARGV[1] its approximate cap, ARGV[2] a JSON array of entries, each a flat array
# of field, value strings. Appends them in order: one command for many XADDs.
APPEND_LOG = """
for _, entry in ipairs(cjson.decode(ARGV[2])) do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(entry))
end
return 1
"""

# KEYS[1] stats hash, KEYS[2] batch marker. ARGV: marker ttl seconds, epoch used ('' without discounting),
# half-life ms, then field, increment, discounted (1/0) triples.
# A flush that is retried after a lost reply is applied once.
APPLY_TRIALS = (
    _EPOCH_FACTOR
    + """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local factor = epoch_factor(ARGV[2], ARGV[3])
for i = 4, #ARGV, 3 do
  local increment = tonumber(ARGV[i + 1])
  if ARGV[i + 2] == '1' then
    increment = increment * factor
  end
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], increment)
end
return 1
"""
)

# KEYS[1] stats hash. ARGV: new epoch ms, half-life ms. Moves the epoch forward, rescaling every
# discounted field, atomically.
REBASE_DISCOUNT = """
local old = tonumber(redis.call('HGET', KEYS[1], '_epoch'))
if not old or old >= tonumber(ARGV[1]) then
  return 0
end
local factor = 2 ^ ((old - tonumber(ARGV[1])) / tonumber(ARGV[2]))
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.find(fields[i], ':d:', 1, true) then
    redis.call('HSET', KEYS[1], fields[i], tonumber(fields[i + 1]) * factor)
  end
end
redis.call('HSET', KEYS[1], '_epoch', ARGV[1])
return 1
"""

# The audit entry, the change and the change notice happen together or not at all.
_AUDIT = """
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*',
  'ts_ms', ARGV[3], 'actor', ARGV[4], 'action', ARGV[5], 'target', ARGV[9],
  'before', before, 'after', ARGV[2], 'reason', ARGV[6], 'version', version)
redis.call('HSET', KEYS[4], ARGV[9], redis.sha1hex(ARGV[2]))
redis.call('PUBLISH', ARGV[8], ARGV[10])
"""

# KEYS: config hash, (unused), audit stream, audited hash. ARGV: 1 (unused) 2 doc JSON, 3 now ms,
# 4 actor, 5 action, 6 reason, 7 audit maxlen, 8 channel, 9 target, 10 experiment.
# Returns the new, strictly greater version.
APPLY_CONFIG = (
    """
local before = redis.call('HGET', KEYS[1], 'doc') or ''
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'updated_ms', ARGV[3])
"""
    + _AUDIT
    + "return version\n"
)

# KEYS: version hash (the experiment's config, or the global control hash), control hash, audit stream,
# audited hash.
# ARGV: 1 field, 2 new value ('' deletes), 3 now ms, 4 actor, 5 action, 6 reason, 7 audit maxlen,
# 8 channel, 9 target, 10 scope. Returns {version, previous value}.
CHANGE_CONTROL = (
    """
local before = redis.call('HGET', KEYS[2], ARGV[1]) or ''
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
redis.call('HSET', KEYS[2], 'version', version, 'reason', ARGV[6])
"""
    + _AUDIT
    + "return {version, before}\n"
)

# KEYS: audited hash, audit stream. ARGV: (unused), now ms, target, before, after.
# Many replicas notice the same raw edit; the first one records it (see keys.audited).
RECORD_UNATTRIBUTED = """
local audited = redis.call('HGET', KEYS[1], ARGV[3])
-- Record only the next link of the chain: the audited value must be this edit's `before`. A replica
-- that notices an edit late (after a newer one was recorded) sees a different value and skips it.
if audited and audited ~= redis.sha1hex(ARGV[4]) then
  return 0
end
local digest = redis.sha1hex(ARGV[5])
redis.call('HSET', KEYS[1], ARGV[3], digest)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'ts_ms', ARGV[2], 'actor', 'unattributed',
  'action', 'raw-edit', 'target', ARGV[3], 'before', ARGV[4], 'after', ARGV[5],
  'reason', 'changed in Redis without the CLI (no audit entry)', 'version', '')
return 1
"""

# KEYS[1] sticky assignment. ARGV: arm, ttl seconds, the arm it replaces ('' for a first assignment,
# or the killed arm being replaced). The first replica to assign a unit wins; the others adopt its arm.
# Returns the arm the unit is assigned.
STICKY_GET_OR_SET = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[3] then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""

# A change made by a router on its own (guardrail auto-kill, ramp step), applied only if the switch is
# still in the state the router judged, so of all replicas exactly one acts.
# KEYS: config hash, control hash, audit stream, audited hash. ARGV: 1 field, 2 new value, 3 now ms,
# 4 actor, 5 action, 6 reason, 7 audit maxlen, 8 channel, 9 target, 10 scope, 11 'if' or 'unless',
# 12 the value the field must (if) or must not (unless) have, then extra field, value pairs to set.
# Returns {1, version} when applied, {0, current value} when another replica (or an operator) acted.
GUARDED_CHANGE = (
    """
local current = redis.call('HGET', KEYS[2], ARGV[1]) or ''
if (ARGV[11] == 'unless' and current == ARGV[12]) or (ARGV[11] == 'if' and current ~= ARGV[12]) then
  return {0, current}
end
local before = current
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2], 'version', version, 'reason', ARGV[6])
for i = 13, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
"""
    + _AUDIT
    + "return {1, version}\n"
)
