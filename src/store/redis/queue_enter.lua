-- A buyer enters. ARGV: buyer, now, shuffle key ('' after the start), PREQUEUE_SPAN.
-- Replies {'ADMITTED', expiry, ticket} | {'PRE'} | {'WAITING', rank}.
local buyer, now = ARGV[1], tonumber(ARGV[2])
redis.call('ZADD', KEYS[4], exact(now), buyer)
local admission = redis.call('HGET', KEYS[5], buyer)
if admission then
    local expires, ticket = string.match(admission, '^(%d+):(%d+)$')
    if tonumber(expires) > now then
        return {'ADMITTED', tonumber(expires), tonumber(ticket)}
    end
end
local started = redis.call('HGET', KEYS[1], 'started') == '1'
local member = redis.call('HGET', KEYS[3], buyer)
if member then
    if not started then
        return {'PRE'}
    end
    local rank = redis.call('ZRANK', KEYS[2], member)
    if rank and rank >= tonumber(redis.call('HGET', KEYS[1], 'head') or '0') then
        return {'WAITING', rank}
    end
end
redis.call('HDEL', KEYS[5], buyer)
if ARGV[3] ~= '' and not started then
    redis.call('ZADD', KEYS[2], ARGV[3], buyer)
    redis.call('HSET', KEYS[3], buyer, buyer)
    return {'PRE'}
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
-- A buyer's first entry is their id; a later one carries its arrival number, so the old entry
-- stays where it was (behind the head) and no rank moves.
local entry = buyer
if member then
    entry = buyer .. '/' .. seq
end
redis.call('ZADD', KEYS[2], exact(tonumber(ARGV[4]) + seq), entry)
redis.call('HSET', KEYS[3], buyer, entry)
return {'WAITING', redis.call('ZRANK', KEYS[2], entry)}
