-- An order is durable: count it as sold, credit the leaderboard, settle its idempotency key and
-- tell every node. Confirming twice changes nothing the second time.
--
-- KEYS: 1 meta, 2 units, 3 keys, 4 pending, 5 board, 6 firsts, 7 names (see mod.rs).
-- ARGV: 1 buyer id, 2 idempotency field, 3 order id, 4 quantity, 5 the buyer's board member if
--       this is their first purchase, 6 display name, 7 the encoded order, 8 change channel.
--
-- Replies: {'OK', sold_out 0|1} or {'REFUSED', 'SALE_NOT_FOUND'}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
local quantity = tonumber(ARGV[4])

local function sold_out()
    local sold = tonumber(redis.call('HGET', KEYS[1], 'sold'))
    local allocated = tonumber(redis.call('HGET', KEYS[1], 'allocated'))
    if sold >= allocated then return 1 end
    return 0
end

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

-- Leaderboard: the member keeps the buyer's first purchase time, the score is -units.
local member = redis.call('HGET', KEYS[6], ARGV[1])
if not member then
    member = ARGV[5]
    redis.call('HSET', KEYS[6], ARGV[1], member)
    redis.call('HSET', KEYS[7], ARGV[1], ARGV[6])
end
redis.call('ZINCRBY', KEYS[5], -quantity, member)

local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PUBLISH', ARGV[8], version)
return {'OK', sold_out()}
