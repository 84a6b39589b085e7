-- A reservation will not be durable: give its units back (to the line first: common.lua) and
-- free its idempotency key. Only an order still in flight is released; releasing twice, or after
-- a confirm, changes nothing.
--
-- KEYS: see common.lua.
-- ARGV: 1 buyer id, 2 idempotency field, 3 order id, 4 change channel, 5 now (ms).
--
-- Replies: {'OK', released 0|1, served orders, dropped buyers, price, currency} or
-- {'REFUSED', 'SALE_NOT_FOUND'}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
local pending = redis.call('HGET', KEYS[4], ARGV[3])
if not pending then
    return {'OK', 0, {}, {}}
end
-- The units come from the reservation itself, not from the caller.
local quantity = tonumber(cjson.decode(pending).quantity)
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'in_flight', -quantity)
take_from_buyer(ARGV[1], quantity)
local handed = give_back(quantity, tonumber(ARGV[5]))
changed(ARGV[4])
return {'OK', 1, handed[1], handed[2], unpack(redis.call('HMGET', KEYS[1], 'price', 'currency'))}
