"""The Redis store's Lua scripts: each keeps one change atomic, also when several replicas make it at once."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = [
    "ACQUIRE_LEASE",
    "ADD_AUDIT",
    "ADD_DEAD_LETTER",
    "APPEND",
    "PRUNE",
    "RELEASE_LEASE",
    "RENEW_LEASE",
    "SETTLE_REPLAY",
    "SET_CURSOR",
    "Scripts",
]
# KEYS: repository hash, events, deliveries, received_at_ns, repositories, notices
# ARGV: repository id, delivery id, repository name, received_at_ns, event type, headers, body, notices maxlen
APPEND = """
local known = redis.call('HGET', KEYS[3], ARGV[2])
if known then return {0, tonumber(known)} end
local sequence = redis.call('HINCRBY', KEYS[1], 'last_sequence', 1)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'name', ARGV[3]) end
redis.call('XADD', KEYS[2], sequence .. '-0', 'delivery_id', ARGV[2], 'event_type', ARGV[5],
    'repository_name', ARGV[3], 'received_at_ns', ARGV[4], 'headers', ARGV[6], 'body', ARGV[7])
redis.call('HSET', KEYS[3], ARGV[2], sequence)
redis.call('ZADD', KEYS[4], sequence, ARGV[4] .. ':' .. ARGV[2])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*', 'repository_id', ARGV[1], 'sequence', sequence)
return {1, sequence}
"""

# KEYS: cursors, repositories; ARGV: client id, sequence, repository id
SET_CURSOR = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or tonumber(current) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('SADD', KEYS[2], ARGV[3])
"""

# KEYS: dead letters, dead letters by time; ARGV: field, member (a letter replaces the one of the same event)
ADD_DEAD_LETTER = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('ZREM', KEYS[2], old) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
"""

# KEYS: replays, dead letters, dead letters by time; ARGV: sequence, dead letter field, delivered (1/0)
SETTLE_REPLAY = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
    local old = redis.call('HGET', KEYS[2], ARGV[2])
    if old then
        redis.call('ZREM', KEYS[3], old)
        redis.call('HDEL', KEYS[2], ARGV[2])
    end
end
"""

# KEYS: audit, repository hash; ARGV: sequence, record, sequence, record, …
# The counter keeps records of one sequence in the order they were added (members sort by it).
ADD_AUDIT = """
local count = #ARGV / 2
local n = redis.call('HINCRBY', KEYS[2], 'audit_count', count) - count
for i = 1, #ARGV, 2 do
    n = n + 1
    redis.call('ZADD', KEYS[1], ARGV[i], string.format('%020d', n) .. ARGV[i + 1])
end
"""

# KEYS: events, received_at_ns, deliveries, cursors, audit
# ARGV: max-age cutoff ns, retention cutoff ns (events received before a cutoff are past it), batch
# Only a prefix goes, so retained sequences stay dense; the rule is base.prunable's. Times are compared
# as decimal strings: Lua numbers are doubles, exact only to 2^53, and nanosecond times are larger.
PRUNE = """
local function before(a, b)
    if #a ~= #b then return #a < #b end
    return a < b
end
local min_cursor = nil
for _, value in ipairs(redis.call('HVALS', KEYS[4])) do
    local n = tonumber(value)
    if min_cursor == nil or n < min_cursor then min_cursor = n end
end
local upto = 0
local deliveries = {}
local page = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
for i = 1, #page, 2 do
    local received, delivery = string.match(page[i], '^(%d+):(.*)$')
    local sequence = tonumber(page[i + 1])
    local acknowledged = min_cursor ~= nil and min_cursor >= sequence
    if not (before(received, ARGV[1]) or (acknowledged and before(received, ARGV[2]))) then break end
    upto = sequence
    deliveries[#deliveries + 1] = delivery
end
if upto == 0 then return 0 end
redis.call('XTRIM', KEYS[1], 'MINID', (upto + 1) .. '-0')
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', upto)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', upto)
for i = 1, #deliveries, 1000 do
    redis.call('HDEL', KEYS[3], unpack(deliveries, i, math.min(i + 999, #deliveries)))
end
return #deliveries
"""


# KEYS: lease, lease tokens; ARGV: client id, holder, ttl ms
# A holder asking again keeps its lease and token; a free lease goes to the asker with the next token.
# Answers {1, token, value} when granted, else {0, milliseconds until it expires, value}.
ACQUIRE_LEASE = """
local current = redis.call('GET', KEYS[1])
if current then
    local token, holder = string.match(current, '^(%d+) (.*)$')
    if holder ~= ARGV[2] then return {0, redis.call('PTTL', KEYS[1]), current} end
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return {1, tonumber(token), current}
end
local token = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local value = token .. ' ' .. ARGV[2]
redis.call('SET', KEYS[1], value, 'PX', ARGV[3])
return {1, token, value}
"""

# KEYS: lease; ARGV: value (token and holder), ttl ms
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease, released notices; ARGV: holder, client id, repository id, notices maxlen
# By holder, not value: a holder that does not know whether its last acquire went through can still give up.
RELEASE_LEASE = """
local current = redis.call('GET', KEYS[1])
if not current or string.match(current, '^%d+ (.*)$') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'client_id', ARGV[2], 'repository_id', ARGV[3])
return 1
"""


class Scripts:
    """The scripts, registered with the store's client when it opens; each is then called with whichever
    client (or pipeline) runs it, and loaded again by redis-py when Redis lost it."""

    append: AsyncScript
    set_cursor: AsyncScript
    add_dead_letter: AsyncScript
    settle_replay: AsyncScript
    add_audit: AsyncScript
    prune: AsyncScript
    acquire_lease: AsyncScript
    renew_lease: AsyncScript
    release_lease: AsyncScript

    def register(self, client: Redis) -> None:
        self.append = client.register_script(APPEND)
        self.set_cursor = client.register_script(SET_CURSOR)
        self.add_dead_letter = client.register_script(ADD_DEAD_LETTER)
        self.settle_replay = client.register_script(SETTLE_REPLAY)
        self.add_audit = client.register_script(ADD_AUDIT)
        self.prune = client.register_script(PRUNE)
        self.acquire_lease = client.register_script(ACQUIRE_LEASE)
        self.renew_lease = client.register_script(RENEW_LEASE)
        self.release_lease = client.register_script(RELEASE_LEASE)
