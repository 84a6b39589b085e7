-- One admission round. ARGV: now, admit_per_second, max_active_buyers, admission ms, grace ms,
-- open ('1': units on sale), most admissions, the sale's change channel, when admission opened
-- (the bucket fills from then). Replies counts().
local now = tonumber(ARGV[1])
local rate, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local admission, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local open, batch = ARGV[6] == '1', tonumber(ARGV[7])
-- The first round closes the pre-queue: later arrivals only go to the back.
redis.call('HSET', KEYS[1], 'started', '1')
local m = redis.call('HMGET', KEYS[1], 'tokens', 'refill_at', 'head')
local tokens = tonumber(m[1] or '0')
local refill_at = tonumber(m[2] or math.min(tonumber(ARGV[9]), now))
local head = tonumber(m[3] or '0')
if rate > 0 then
    tokens = math.min(tokens + math.max(now - refill_at, 0) * rate / 1000, math.max(rate, 1))
end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', exact(now))
local allowed = batch
if rate > 0 then
    allowed = math.min(allowed, math.floor(tokens))
end
if cap > 0 then
    allowed = math.min(allowed, math.max(cap - redis.call('ZCARD', KEYS[6]), 0))
end
if not open then
    allowed = 0
end
local given, dropped = 0, 0
local length = redis.call('ZCARD', KEYS[2])
while given < allowed and head < length do
    local entries = redis.call('ZRANGE', KEYS[2], head, head + allowed - given - 1)
    for _, entry in ipairs(entries) do
        local rank = head
        head = head + 1
        local buyer = string.match(entry, '^[^/]+')
        -- An old entry of a buyer who entered again is skipped.
        if redis.call('HGET', KEYS[3], buyer) == entry then
            local seen = redis.call('ZSCORE', KEYS[4], buyer)
            if not seen or tonumber(seen) + grace < now then
                dropped = dropped + 1
            else
                local expires = now + admission
                redis.call('HSET', KEYS[5], buyer, exact(expires) .. ':' .. exact(rank))
                redis.call('ZADD', KEYS[6], exact(expires), buyer)
                given = given + 1
            end
        end
    end
end
if rate > 0 then
    tokens = tokens - given
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'refill_at', exact(math.max(now, refill_at)), 'head', exact(head))
if given > 0 then
    redis.call('HINCRBY', KEYS[1], 'admitted', given)
end
if dropped > 0 then
    redis.call('HINCRBY', KEYS[1], 'dropped', dropped)
end
if given > 0 or dropped > 0 then
    redis.call(PUBLISH, ARGV[8], '0')
end
return counts()
