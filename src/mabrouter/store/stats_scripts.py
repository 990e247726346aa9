"""Lua scripts that add to an experiment's statistics and logs: outcomes, trial counts, discount rebases.

Each runs atomically in Redis and touches keys of one hash tag only (one experiment), so each is legal on
Redis Cluster. They need HMGET and TYPE besides the commands they write with (see the router's ACL in
docs/reliability.md).
"""

from __future__ import annotations

# Shared by the scripts that add to a stats hash. Nothing is written until every input and every stored
# value a script will add to has been read and checked, so a script either applies all of its work or
# none of it (a HINCRBYFLOAT failing on a bad field used to leave an outcome half applied). New values
# are computed here, in the double precision every reader parses, and written with one HSET: Redis's own
# integer and long-double parsers (HINCRBY, HINCRBYFLOAT) never judge a hand-edited field, tonumber is
# the only judge, and a value that fits Redis's long double but not a double ("2e308") is never stored.
# A refusal is {reason, field or key, what it holds (64 characters at most)}; reasons: 'unreadable' (not
# a finite number), 'overflow' (the sum would not be finite), 'type' (a key of the wrong type), 'input'.
_CHECKS = """
local function finite(x)
  return x ~= nil and x == x and x ~= math.huge and x ~= -math.huge
end

local function excerpt(v)
  return string.sub(tostring(v), 1, 64)
end

local function type_refusal(key, expected)
  local found = redis.call('TYPE', key).ok
  if found ~= expected and found ~= 'none' then
    return {'type', key, found}
  end
  return nil
end

-- Stored values are HMGET replies (false: absent, which counts as 0). Appends field, new value pairs
-- to out for fields[1..n]; returns a refusal, or nil when every sum is finite.
local function add_all(fields, values, increments, n, out)
  for i = 1, n do
    local old = 0
    if values[i] then
      old = tonumber(values[i])
      if not finite(old) then
        return {'unreadable', fields[i], excerpt(values[i])}
      end
    end
    local new = old + increments[i]
    if not finite(new) then
      return {'overflow', fields[i], excerpt(values[i])}
    end
    out[#out + 1] = fields[i]
    out[#out + 1] = new
  end
  return nil
end

-- Forward decay (core/discount.py): increments were scaled to the writer's epoch `used`; the stored
-- epoch `raw` (set by the first writer) may differ, after a rebase or a race: the factor rescales to it.
-- Without a stored epoch, `used` becomes it (appended to out). Returns the factor, or nil and a refusal.
local function epoch_factor(raw, used, half_life_ms, out)
  local epoch, half_life = tonumber(used), tonumber(half_life_ms)
  if not (finite(epoch) and finite(half_life) and half_life > 0) then
    return nil, {'input', 'epoch', excerpt(used)}
  end
  if not raw then
    out[#out + 1] = '_epoch'
    out[#out + 1] = used
    return 1
  end
  local stored = tonumber(raw)
  if not finite(stored) then
    return nil, {'unreadable', '_epoch', excerpt(raw)}
  end
  local factor = 2 ^ ((epoch - stored) / half_life)
  if not finite(factor) then
    return nil, {'overflow', '_epoch', excerpt(raw)}
  end
  return factor
end
"""

# outcome_writes(a): the HSET pairs that apply one outcome to the stats hash KEYS[1], or nil and a
# refusal. a: arm, reward, reward^2, marker ttl seconds, counted, segment ('' for none), epoch used (''
# without discounting), half-life ms, weight at the epoch used, nonce, a contextual model's field
# prefix ('' for none), the count c of its increments, the increments (reward * x_i for each column i,
# then reward^2: store/linear_codec.py); guardrail metric name, value, value^2 triples after them. One
# HMGET reads every field it adds to (at most 3 + 3 + c + 4 + 3 per metric).
_OUTCOME_WRITES = """
local function outcome_writes(a)
  local arm, reward, square, ttl = a[1], tonumber(a[2]), tonumber(a[3]), tonumber(a[4])
  if not (finite(reward) and finite(square) and finite(ttl) and ttl >= 1) then
    return nil, {'input', 'reward', excerpt(a[2])}
  end
  local c = tonumber(a[12])
  if not (c and c >= 0 and c <= 34 and c == math.floor(c)) then
    return nil, {'input', 'context', excerpt(a[12])}
  end
  local m = 13 + c
  local out = {}
  if a[5] ~= '1' then
    return out
  end
  local fields = {arm .. ':count', arm .. ':sum', arm .. ':sumsq'}
  local increments = {1, reward, square}
  if a[6] ~= '' then
    local prefix = '@' .. a[6] .. '|' .. arm
    fields[4], fields[5], fields[6] = prefix .. ':count', prefix .. ':sum', prefix .. ':sumsq'
    increments[4], increments[5], increments[6] = 1, reward, square
  end
  if a[11] ~= '' and c > 0 then
    for i = 1, c do
      local value, n = tonumber(a[12 + i]), #fields
      if not finite(value) then
        return nil, {'input', 'context', excerpt(a[12 + i])}
      end
      fields[n + 1] = (i < c) and (a[11] .. ':rx:' .. (i - 1)) or (a[11] .. ':rr')
      increments[n + 1] = value
    end
  end
  for i = m, #a, 3 do
    local value, value_sq, n = tonumber(a[i + 1]), tonumber(a[i + 2]), #fields
    if not (finite(value) and finite(value_sq)) then
      return nil, {'input', 'metric ' .. a[i], excerpt(a[i + 1])}
    end
    local prefix = arm .. ':m:' .. a[i]
    fields[n + 1], fields[n + 2], fields[n + 3] = prefix .. ':n', prefix .. ':sum', prefix .. ':sumsq'
    increments[n + 1], increments[n + 2], increments[n + 3] = 1, value, value_sq
  end
  local n = #fields
  if a[7] ~= '' then
    fields[n + 1], fields[n + 2], fields[n + 3] = arm .. ':d:count', arm .. ':d:sum', arm .. ':d:sumsq'
    fields[n + 4] = '_epoch'
  end
  local values = redis.call('HMGET', KEYS[1], unpack(fields))
  if a[7] ~= '' then
    local factor, refusal = epoch_factor(values[n + 4], a[7], a[8], out)
    if not factor then
      return nil, refusal
    end
    local w = tonumber(a[9])
    if not finite(w) then
      return nil, {'input', 'weight', excerpt(a[9])}
    end
    w = w * factor
    increments[n + 1], increments[n + 2], increments[n + 3] = w, reward * w, square * w
    n = n + 3
  end
  local refusal = add_all(fields, values, increments, n, out)
  if refusal then
    return nil, refusal
  end
  return out
end
"""

# Many outcomes of one experiment in one call, in order (a nonce repeated in the batch is a duplicate
# the second time), each applied entirely or not at all, and each applied one appended to the outcomes
# log in the same atomic step.
# KEYS[1] stats hash, KEYS[2] outcomes log stream, KEYS[2 + i] the seen marker of outcome i.
# ARGV[1] the log's approximate cap (0: no log entry), ARGV[2] the log entries' ts (ms), ARGV[3] a JSON
# array of outcomes, each an array of strings: outcome_writes's a (the nonce at a[10]). Returns an
# array: 1 where applied, 0 where a duplicate, a refusal where the stored statistics cannot absorb the
# outcome: then nothing of it is written (not even its seen marker), so the caller may retry it once an
# operator repairs the field.
RECORD_OUTCOMES = (
    _CHECKS
    + _OUTCOME_WRITES
    + """
local cap = tonumber(ARGV[1])
local refused = type_refusal(KEYS[1], 'hash')
if not refused and cap > 0 then
  refused = type_refusal(KEYS[2], 'stream')
end
local results = {}
for i, a in ipairs(cjson.decode(ARGV[3])) do
  local seen, result = KEYS[i + 2], refused
  local out
  if not refused then
    out, result = outcome_writes(a)
  end
  if result then
    -- Applied before the field went bad: a duplicate, as the retry of an applied outcome is told.
    if redis.pcall('GET', seen) then
      result = 0
    end
  elseif redis.call('SET', seen, '1', 'NX', 'EX', a[4]) then
    if #out > 0 then
      redis.call('HSET', KEYS[1], unpack(out))
    end
    if cap > 0 then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'd', a[10], 'ts', ARGV[2], 'arm', a[1],
        'reward', a[2])
    end
    result = 1
  else
    result = 0
  end
  results[i] = result
end
return results
"""
)

# HMGET and HSET in slices: a trial flush may carry thousands of (segment) fields, more than one
# unpack may pass to a command (Lua's C stack holds 8000 values).
_SLICED = """
local SLICE = 1000
local function hmget_all(key, fields)
  local values = {}
  for first = 1, #fields, SLICE do
    local part = redis.call('HMGET', key, unpack(fields, first, math.min(first + SLICE - 1, #fields)))
    for i = 1, #part do
      values[first + i - 1] = part[i]
    end
  end
  return values
end

local function hset_all(key, pairs)
  for first = 1, #pairs, 2 * SLICE do
    redis.call('HSET', key, unpack(pairs, first, math.min(first + 2 * SLICE - 1, #pairs)))
  end
end
"""

# KEYS[1] stats hash, KEYS[2] batch marker. ARGV: marker ttl seconds, epoch used ('' without discounting),
# half-life ms, then field, increment, discounted (1/0) triples.
# Returns 1 when applied, 0 when this batch was applied before (a retry after a lost reply), or a
# refusal: then nothing is written and the marker is not set (runtime/trials.py decides what follows).
APPLY_TRIALS = (
    _CHECKS
    + _SLICED
    + """
local refused = type_refusal(KEYS[1], 'hash')
if refused then
  return refused
end
local fields, increments, scaled = {}, {}, {}
for i = 4, #ARGV, 3 do
  local n = #fields + 1
  fields[n], increments[n], scaled[n] = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2] == '1'
  if not finite(increments[n]) then
    return {'input', ARGV[i], excerpt(ARGV[i + 1])}
  end
end
local n = #fields
if ARGV[2] ~= '' then
  fields[n + 1] = '_epoch'
end
if #fields == 0 then
  return 1
end
local values = hmget_all(KEYS[1], fields)
local out = {}
if ARGV[2] ~= '' then
  local factor, refusal = epoch_factor(values[n + 1], ARGV[2], ARGV[3], out)
  if not factor then
    return refusal
  end
  for i = 1, n do
    if scaled[i] then
      increments[i] = increments[i] * factor
    end
  end
end
refused = add_all(fields, values, increments, n, out)
if refused then
  return refused
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
if #out > 0 then
  hset_all(KEYS[1], out)
end
return 1
"""
)

# KEYS[1] stats hash. ARGV: new epoch ms, half-life ms. Moves the epoch forward, rescaling every
# discounted field, atomically. All or nothing: with a discounted field that is not a finite number,
# nothing is rescaled (returns 0, as when no rebase is due) until an operator repairs it; rescaling the
# others would leave that one at an unknown scale.
REBASE_DISCOUNT = (
    _CHECKS
    + _SLICED
    + """
local old, new, half_life = tonumber(redis.call('HGET', KEYS[1], '_epoch')), tonumber(ARGV[1]),
  tonumber(ARGV[2])
if not (finite(old) and finite(new) and finite(half_life) and half_life > 0) or old >= new then
  return 0
end
local factor = 2 ^ ((old - new) / half_life)
local fields = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #fields, 2 do
  if string.find(fields[i], ':d:', 1, true) then
    local value = tonumber(fields[i + 1])
    if not finite(value) then
      return 0
    end
    out[#out + 1] = fields[i]
    out[#out + 1] = value * factor
  end
end
out[#out + 1] = '_epoch'
out[#out + 1] = ARGV[1]
hset_all(KEYS[1], out)
return 1
"""
)
