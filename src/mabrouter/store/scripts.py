"""Lua scripts: each runs atomically in Redis, so concurrent replicas never lose an increment.

Every script touches keys of one hash tag only, so each is legal on Redis Cluster.
"""

from __future__ import annotations

from mabrouter.store.stats_scripts import APPLY_TRIALS, REBASE_DISCOUNT, RECORD_OUTCOMES

__all__ = [  # the statistics' scripts live in stats_scripts.py; callers use this one namespace
    "APPEND_LOG",
    "APPLY_CONFIG",
    "APPLY_TRIALS",
    "CHANGE_CONTROL",
    "GUARDED_CHANGE",
    "REBASE_DISCOUNT",
    "RECORD_OUTCOMES",
    "RECORD_UNATTRIBUTED",
    "STICKY_GET_OR_SET",
]

# Before any write, the keys' types: Redis does not undo a script's writes when a later command fails, so
# a key of the wrong type (written by hand) found mid-script left half a change (a kill written, its
# audit entry and change notice not, the CLI reporting failure). The changed hash (KEYS[2]) of another
# type refuses the whole change, naming it; an audit stream or audited hash of another type must not
# block a kill in an incident: the change is made and published without its audit entry, and the reply
# ends with what kept it out ('' when it was written), which the CLI prints.
# TYPE through pcall: an operator ACL written before these checks (without +type) still changes switches,
# unchecked, rather than failing a kill in an incident with NOPERM.
_CHECK_KEYS = """
local function other_type(key, expected)
  local found = redis.pcall('TYPE', key).ok
  if found and found ~= expected and found ~= 'none' then
    return key .. ' holds a ' .. found .. ', not a ' .. expected
  end
  return nil
end
local refused = other_type(KEYS[2], 'hash')
if refused then
  return redis.error_reply('WRONGTYPE ' .. refused .. ': nothing was written (delete the key and retry)')
end
local unaudited = other_type(KEYS[3], 'stream') or other_type(KEYS[4], 'hash') or ''
"""

# The audit entry, the change and the change notice happen together (the audit entry left out only when
# its keys hold another type, see _CHECK_KEYS).
_AUDIT = """
if unaudited == '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*',
    'ts_ms', ARGV[3], 'actor', ARGV[4], 'action', ARGV[5], 'target', ARGV[9],
    'before', before, 'after', ARGV[2], 'reason', ARGV[6], 'version', version)
  redis.call('HSET', KEYS[4], ARGV[9], redis.sha1hex(ARGV[2]))
end
redis.call('PUBLISH', ARGV[8], ARGV[10])
"""

# KEYS: config hash, config hash again (the changed hash _CHECK_KEYS checks), audit stream, audited hash.
# ARGV: 1 (unused) 2 doc JSON, 3 now ms, 4 actor, 5 action, 6 reason, 7 audit maxlen, 8 channel, 9 target,
# 10 experiment. Returns {the new, strictly greater version, why no audit entry ('' when written)}.
APPLY_CONFIG = (
    _CHECK_KEYS
    + """
local before = redis.call('HGET', KEYS[1], 'doc') or ''
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'updated_ms', ARGV[3])
"""
    + _AUDIT
    + "return {version, unaudited}\n"
)

# KEYS: version hash (the experiment's config, or the global control hash), control hash, audit stream,
# audited hash.
# ARGV: 1 field, 2 new value ('' deletes), 3 now ms, 4 actor, 5 action, 6 reason, 7 audit maxlen,
# 8 channel, 9 target, 10 scope. Returns {version ('' when the stored one is not a number), previous value,
# why no audit entry ('' when written)}.
CHANGE_CONTROL = (
    _CHECK_KEYS
    + """
local before = redis.call('HGET', KEYS[2], ARGV[1]) or ''
-- A version edited by hand into something HINCRBY refuses must not block a kill in an incident: the
-- switch is written without a version ('' in the reply and the audit entry); routers obey it anyway.
local version = redis.pcall('HINCRBY', KEYS[1], 'version', 1)
if type(version) == 'table' then
  version = ''
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
redis.call('HSET', KEYS[2], 'reason', ARGV[6])
if version ~= '' then
  redis.call('HSET', KEYS[2], 'version', version)
end
"""
    + _AUDIT
    + "return {version, before, unaudited}\n"
)

# KEYS: audited hash, audit stream. ARGV: (unused), now ms, target, before, after.
# Many replicas notice the same raw edit; the first one records it (see keys.audited).
RECORD_UNATTRIBUTED = """
-- An audit stream of another type (written by hand) takes no entry: nothing is written, so the edit is
-- not marked as recorded either (no half write), and the CLI names the key at its next change.
local found = redis.pcall('TYPE', KEYS[2]).ok
if found and found ~= 'stream' and found ~= 'none' then
  return 0
end
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
local found = redis.call('TYPE', KEYS[1]).ok
if found ~= 'string' and found ~= 'none' then
  return {'type', found}
end
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
# Returns {1, version, why no audit entry ('' when written)} when applied, {0, current value} when another
# replica (or an operator) acted.
GUARDED_CHANGE = (
    _CHECK_KEYS
    + """
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
    + "return {1, version, unaudited}\n"
)


# KEYS[1] a log stream. ARGV[1] its approximate cap, ARGV[2] a JSON array of entries, each a flat array
# of field, value strings. Appends them in order: one command for many XADDs.
# A batch of decision-log entries (runtime/exposure.py). A log key of another type (written by hand) is
# refused with {'type', key, its type}, writing nothing: the other experiments' entries in the same
# pipeline are written, and only these are dropped.
APPEND_LOG = """
local found = redis.call('TYPE', KEYS[1]).ok
if found ~= 'stream' and found ~= 'none' then
  return {'type', KEYS[1], found}
end
for _, entry in ipairs(cjson.decode(ARGV[2])) do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(entry))
end
return 1
"""
