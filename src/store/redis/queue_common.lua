-- A sale's waiting room (queue.rs; the domain's `Line` step for step). KEYS: the room's meta
-- (hash: started, head, seq, tokens, refill_at, admitted, dropped), line (sorted set: entries by
-- rank), tickets (hash: buyer -> their current entry), seen (sorted set: buyer -> last seen),
-- admitted (hash: buyer -> 'expiry:ticket'), active (sorted set: buyer -> admission expiry).

-- A number as exact integer text: redis.call would write it with 14 significant digits.
local function exact(n)
    return string.format('%.0f', n)
end

local function counts()
    local m = redis.call('HMGET', KEYS[1], 'started', 'head', 'admitted', 'dropped')
    return {
        tonumber(m[1] or '0'),
        tonumber(m[2] or '0'),
        redis.call('ZCARD', KEYS[2]),
        tonumber(m[3] or '0'),
        tonumber(m[4] or '0'),
        redis.call('ZCARD', KEYS[6]),
    }
end
