-- A hold ended in the record: count it as confirmed (it ranks on the leaderboard now), or give
-- its units back (to the line first: common.lua). Only a hold this state holds is settled, so
-- settling twice changes nothing.
--
-- KEYS: see common.lua.
-- ARGV: 1 order id, 2 its new status (CONFIRMED, CANCELLED or EXPIRED), 3 now (ms), 4 the
--       buyer's board member if this is their first confirmed purchase, 5 display name,
--       6 change channel.
--
-- Replies: {'OK', sold_out 0|1, served orders, dropped buyers, price, currency} or
-- {'REFUSED', 'SALE_NOT_FOUND'}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
local held = redis.call('HGET', KEYS[8], ARGV[1])
if not held then
    return {'OK', sold_out(), {}, {}}
end
redis.call('HDEL', KEYS[8], ARGV[1])
local order = cjson.decode(held)
local quantity = tonumber(order.quantity)
redis.call('HINCRBY', KEYS[1], 'held', -quantity)
local handed = {{}, {}}
if ARGV[2] == 'CONFIRMED' then
    credit(order.buyer_id, quantity, ARGV[4], ARGV[5])
else
    redis.call('HINCRBY', KEYS[1], 'sold', -quantity)
    take_from_buyer(order.buyer_id, quantity)
    handed = give_back(quantity, tonumber(ARGV[3]))
end
changed(ARGV[6])
return {'OK', sold_out(), handed[1], handed[2], unpack(redis.call('HMGET', KEYS[1], 'price', 'currency'))}
