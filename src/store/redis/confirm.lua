-- An order is durable: count it as sold (and as held, for a HELD order of a sale with holds,
-- which ranks on the leaderboard only once paid: `end_hold.lua`), settle its idempotency key and
-- tell every node. Confirming twice changes nothing the second time.
--
-- KEYS: see common.lua.
-- ARGV: 1 buyer id, 2 idempotency field, 3 order id, 4 quantity, 5 the buyer's board member if
--       this is their first purchase, 6 display name, 7 the encoded order, 8 change channel,
--       9 the order's status (HELD or CONFIRMED).
--
-- Replies: {'OK', sold_out 0|1} or {'REFUSED', 'SALE_NOT_FOUND'}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
local quantity = tonumber(ARGV[4])

if redis.call('HDEL', KEYS[4], ARGV[3]) == 1 then
    -- The usual case: the reservation was in flight.
    redis.call('HINCRBY', KEYS[1], 'in_flight', -quantity)
else
    local entry = redis.call('HGET', KEYS[3], ARGV[2])
    if entry and cjson.decode(entry).id == ARGV[3] then
        -- Already confirmed.
        return {'OK', sold_out()}
    end
    -- A durable order this hot state does not hold (it was released after a commit whose outcome
    -- was unknown, or the state was rebuilt without it): take its units now, since the record
    -- has them.
    redis.call('HINCRBY', KEYS[1], 'remaining', -quantity)
    redis.call('HINCRBY', KEYS[2], ARGV[1], quantity)
    if not entry then
        redis.call('HSET', KEYS[3], ARGV[2], ARGV[7])
    end
end
redis.call('HINCRBY', KEYS[1], 'sold', quantity)
if ARGV[9] == 'HELD' then
    redis.call('HINCRBY', KEYS[1], 'held', quantity)
    redis.call('HSET', KEYS[8], ARGV[3], ARGV[7])
else
    credit(ARGV[1], quantity, ARGV[5], ARGV[6])
end
changed(ARGV[8])
return {'OK', sold_out()}
