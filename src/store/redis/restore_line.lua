-- Puts a line kept by the record back into a sale just built from the record, unless its line
-- has buyers already; the units on sale then go to the line first (common.lua's give_back).
--
-- KEYS: see common.lua.
-- ARGV: 1 now (ms), 2 change channel, then (buyer id, encoded entry) pairs, first come first.
--
-- Replies: {'OK', 1, served orders, dropped buyers, price, currency}, {'OK', 0, {}, {}} when
-- nothing was restored, or {'REFUSED', 'SALE_NOT_FOUND'}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
if #ARGV < 4 or redis.call('ZCARD', KEYS[9]) > 0 or redis.call('HGET', KEYS[1], 'status') == 'ENDED' then
    return {'OK', 0, {}, {}}
end
for i = 3, #ARGV, 2 do
    local seq = redis.call('HINCRBY', KEYS[1], 'line_seq', 1)
    redis.call('ZADD', KEYS[9], seq, ARGV[i])
    redis.call('HSET', KEYS[10], ARGV[i], ARGV[i + 1])
end
-- Nothing is on sale while buyers wait: what is left goes to them first.
local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining'))
redis.call('HSET', KEYS[1], 'remaining', 0)
local handed = give_back(remaining, tonumber(ARGV[1]))
changed(ARGV[2])
return {'OK', 1, handed[1], handed[2], unpack(redis.call('HMGET', KEYS[1], 'price', 'currency'))}
