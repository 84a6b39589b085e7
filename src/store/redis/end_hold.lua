-- A hold ended in the record: count it as confirmed (it ranks on the leaderboard now), or give
-- its units back (to the line first: common.lua). Only a hold this state holds (durable, or
-- still in flight) is settled, so settling twice changes nothing.
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
local order
if held then
    redis.call('HDEL', KEYS[8], ARGV[1])
    order = cjson.decode(held)
    redis.call('HINCRBY', KEYS[1], 'held', -tonumber(order.quantity))
else
    -- The record ended the hold before this state heard it was durable (its confirm is still
    -- to come, or was lost): settle it from in flight; the late confirm then finds it settled.
    local pending = redis.call('HGET', KEYS[4], ARGV[1])
    if not pending then
        return {'OK', sold_out(), {}, {}}
    end
    redis.call('HDEL', KEYS[4], ARGV[1])
    order = cjson.decode(pending)
    redis.call('HINCRBY', KEYS[1], 'in_flight', -tonumber(order.quantity))
    redis.call('HINCRBY', KEYS[1], 'sold', tonumber(order.quantity))
end
local quantity = tonumber(order.quantity)
local handed
if ARGV[2] == 'CONFIRMED' then
    credit(order.buyer_id, quantity, ARGV[4], ARGV[5])
    -- Fewer units may come back now: units kept for the head may never suffice.
    handed = give_back(0, tonumber(ARGV[3]))
else
    redis.call('HINCRBY', KEYS[1], 'sold', -quantity)
    take_from_buyer(order.buyer_id, quantity)
    handed = give_back(quantity, tonumber(ARGV[3]))
end
changed(ARGV[6])
return {'OK', sold_out(), handed[1], handed[2], unpack(redis.call('HMGET', KEYS[1], 'price', 'currency'))}
