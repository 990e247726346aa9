"""Lua scripts of an experiment's lifecycle (store/admin_store.py): its deletion, and counting its log.

Each touches keys of one hash tag only (one experiment), so each is legal on Redis Cluster.
"""

from __future__ import annotations

# KEYS: config hash, stats hash, control hash. ARGV[1]: the `archived` value the CLI checked, or '' for
# an experiment that had no config (listed, but its delete or apply was interrupted).
# The experiment's definition, statistics and switches go together or not at all, and only while it is
# as checked: an unarchive or an apply that came in between wins. Returns the keys deleted, or -1.
DELETE_DEFINITION = """
local archived = redis.call('HGET', KEYS[3], 'archived') or ''
if (ARGV[1] == '' and redis.call('EXISTS', KEYS[1]) == 1) or (ARGV[1] ~= '' and archived ~= ARGV[1]) then
  return -1
end
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
"""

# KEYS[1] a log stream. ARGV: 1 the first id to count from ('(' + id: after it), 2 at most this many.
# Counts in Redis and returns {count, last id counted}: only two numbers cross the network, and each
# call is short (the caller pages), so counting a large log never holds Redis for long.
COUNT_ENTRIES = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local n = #entries
if n == 0 then
  return {0, ''}
end
return {n, entries[n][1]}
"""
