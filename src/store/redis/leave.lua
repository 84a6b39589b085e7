-- Takes a buyer out of a sale's line. The line moves up: units kept for the old head may serve
-- the new one, or go back on sale once the line is empty (common.lua).
--
-- KEYS: see common.lua.
-- ARGV: 1 buyer id, 2 now (ms), 3 change channel.
--
-- Replies: {'OK', left 0|1, served orders, dropped buyers, price, currency} or
-- {'REFUSED', 'SALE_NOT_FOUND'}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
if redis.call('ZREM', KEYS[9], ARGV[1]) == 0 then
    return {'OK', 0, {}, {}}
end
redis.call('HDEL', KEYS[10], ARGV[1])
local handed = give_back(0, tonumber(ARGV[2]))
changed(ARGV[3])
return {'OK', 1, handed[1], handed[2], unpack(redis.call('HMGET', KEYS[1], 'price', 'currency'))}
