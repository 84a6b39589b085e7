-- Shared by the scripts that settle units (prepended to them; see `Scripts` in mod.rs).
--
-- KEYS: 1 meta, 2 units, 3 keys, 4 pending, 5 board, 6 firsts, 7 names, 8 holds, 9 line,
-- 10 waiting (see mod.rs).

-- Every allocated unit is sold, and none of them is only held: the sale is sold out.
local function sold_out()
    local meta = redis.call('HMGET', KEYS[1], 'sold', 'allocated', 'held')
    if tonumber(meta[1]) >= tonumber(meta[2]) and tonumber(meta[3] or '0') <= 0 then
        return 1
    end
    return 0
end

-- Credits confirmed units to a buyer on the leaderboard: the member keeps the buyer's earliest
-- purchase time (members sort as their times do: an earlier `member` replaces the known one),
-- the score is -units.
local function credit(buyer, units, member, name)
    local known = redis.call('HGET', KEYS[6], buyer)
    if not known then
        redis.call('HSET', KEYS[6], buyer, member)
        redis.call('HSET', KEYS[7], buyer, name)
        redis.call('ZINCRBY', KEYS[5], -units, member)
    elseif member < known then
        local score = tonumber(redis.call('ZSCORE', KEYS[5], known) or '0')
        redis.call('ZREM', KEYS[5], known)
        redis.call('ZADD', KEYS[5], score - units, member)
        redis.call('HSET', KEYS[6], buyer, member)
    else
        redis.call('ZINCRBY', KEYS[5], -units, known)
    end
end

-- Units given back go to the sale's line first, step for step as the domain's `hand_over`: the
-- head is served while the spare units cover its quantity (a new hold for it, reserved in flight
-- like a purchase, for the caller to make durable); a head that can never be served (it wants
-- more than the spare units and all that may still come back) is dropped; spare units too few for the head wait for it; when the line is
-- empty they go back on sale. Returns {served orders (encoded), dropped buyer ids}.
local function give_back(units, now)
    local meta = redis.call('HMGET', KEYS[1], 'spare', 'status', 'held', 'in_flight', 'hold_seconds')
    local spare = tonumber(meta[1] or '0') + units
    local served, dropped = {}, {}
    if meta[2] ~= 'ENDED' then
        local outstanding = tonumber(meta[3] or '0') + tonumber(meta[4] or '0')
        local hold_ms = tonumber(meta[5] or '0') * 1000
        while true do
            local head = redis.call('ZRANGE', KEYS[9], 0, 0)[1]
            if not head then
                break
            end
            local entry = cjson.decode(redis.call('HGET', KEYS[10], head))
            local wanted = tonumber(entry.quantity)
            if wanted <= spare then
                spare = spare - wanted
                outstanding = outstanding + wanted
                redis.call('ZREM', KEYS[9], head)
                redis.call('HDEL', KEYS[10], head)
                local key = 'waitlist-' .. entry.order_id
                local order = cjson.encode({
                    id = entry.order_id, buyer_id = entry.buyer_id, buyer_name = entry.buyer_name,
                    quantity = wanted, idempotency_key = key, created_at = now,
                    status = 'HELD', expires_at = now + hold_ms,
                })
                redis.call('HINCRBY', KEYS[1], 'in_flight', wanted)
                redis.call('HINCRBY', KEYS[2], entry.buyer_id, wanted)
                redis.call('HSET', KEYS[3], entry.buyer_id .. ':' .. key, order)
                redis.call('HSET', KEYS[4], entry.order_id, order)
                served[#served + 1] = order
            elseif spare + outstanding < wanted then
                redis.call('ZREM', KEYS[9], head)
                redis.call('HDEL', KEYS[10], head)
                dropped[#dropped + 1] = head
            else
                break
            end
        end
    end
    if redis.call('ZCARD', KEYS[9]) == 0 then
        redis.call('HINCRBY', KEYS[1], 'remaining', spare)
        spare = 0
    end
    redis.call('HSET', KEYS[1], 'spare', spare)
    return {served, dropped}
end

-- A buyer's units go down (a released reservation, a hold given back).
local function take_from_buyer(buyer, units)
    if redis.call('HINCRBY', KEYS[2], buyer, -units) <= 0 then
        redis.call('HDEL', KEYS[2], buyer)
    end
end

-- The change is visible: a new version, published to every node.
local function changed(channel)
    redis.call(PUBLISH, channel, redis.call('HINCRBY', KEYS[1], 'version', 1))
end
