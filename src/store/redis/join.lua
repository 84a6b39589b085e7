-- Puts a buyer in a sale's line, or returns the place they have: the rules of the domain's
-- `check_join`, then the writes (nothing is written before every check passed).
--
-- KEYS: see common.lua.
-- ARGV: 1 buyer id, 2 quantity, 3 now (ms), 4 the entry (encoded), 5 change channel.
--
-- Replies: {'PLACED', position, quantity, line length}, {'REFUSED', 'SALE_NOT_FOUND'}, or
-- {'REFUSED', rule, meta, bought, outstanding}: the facts decided on (`meta` holds the fields read
-- below, in that order), so the caller states the refusal from them with the domain's rules.

local meta = redis.call('HMGET', KEYS[1], 'status', 'end_reason', 'start', 'end',
    'max_per_purchase', 'per_user_limit', 'remaining', 'price', 'currency', 'allocated', 'hold_seconds',
    'held', 'in_flight')
local status = meta[1]
if not status then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end

local function place(buyer)
    local entry = cjson.decode(redis.call('HGET', KEYS[10], buyer))
    return {'PLACED', redis.call('ZRANK', KEYS[9], buyer) + 1, tonumber(entry.quantity),
        redis.call('ZCARD', KEYS[9])}
end

if redis.call('ZSCORE', KEYS[9], ARGV[1]) then
    return place(ARGV[1])
end

local bought = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local outstanding = tonumber(meta[12] or '0') + tonumber(meta[13] or '0')
local function refuse(rule)
    return {'REFUSED', rule, meta, bought, outstanding}
end

local quantity, now = tonumber(ARGV[2]), tonumber(ARGV[3])
if tonumber(meta[11] or '0') == 0 then
    return refuse('NO_WAITLIST')
end
if status ~= 'ACTIVE' or now < tonumber(meta[3]) or now >= tonumber(meta[4]) then
    return refuse('NOT_OPEN')
end
if quantity < 1 or quantity > tonumber(meta[5]) then
    return refuse('INVALID_QUANTITY')
end
local limit = tonumber(meta[6])
if limit ~= 0 and bought + quantity > limit then
    return refuse('USER_LIMIT_REACHED')
end
if tonumber(meta[7]) > 0 then
    return refuse('UNITS_ON_SALE')
end
if outstanding <= 0 then
    return refuse('SOLD_OUT')
end

local seq = redis.call('HINCRBY', KEYS[1], 'line_seq', 1)
redis.call('ZADD', KEYS[9], seq, ARGV[1])
redis.call('HSET', KEYS[10], ARGV[1], ARGV[4])
changed(ARGV[5])
return place(ARGV[1])
