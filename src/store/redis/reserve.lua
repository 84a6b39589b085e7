-- Reserve units for one purchase: every purchase rule, then the writes. Lua has no rollback, so
-- nothing is written until every check has passed.
--
-- KEYS: see common.lua.
-- ARGV: 1 buyer id, 2 idempotency field ("<buyer>:<key>"), 3 quantity, 4 now (ms),
--       5 new order id, 6 the new order, encoded (what `keys` and `pending` store).
--
-- Replies (first element is the code):
--   {'NEW', price, currency, the order as stored (HELD with its deadline in a sale with holds)}
--   {'EXISTING', encoded first order, settled 0|1, price, currency}
--   {'REFUSED', 'SALE_NOT_FOUND'} or {'REFUSED', 'IDEMPOTENCY_KEY_REUSED'}
--   {'REFUSED', rule, meta, bought}: refused by a sale rule; `meta` holds the fields read below,
--   in that order, and `bought` the buyer's units, so the caller can state the refusal exactly
--   as the domain's rules do from the same facts.

local meta = redis.call('HMGET', KEYS[1], 'status', 'end_reason', 'start', 'end',
    'max_per_purchase', 'per_user_limit', 'remaining', 'price', 'currency', 'allocated', 'hold_seconds')
local status = meta[1]
if not status then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
local price, currency = meta[8], meta[9]
local quantity = tonumber(ARGV[3])

-- Rule 5 first: a retry gets its first answer, even after the sale ended.
local first = redis.call('HGET', KEYS[3], ARGV[2])
if first then
    local order = cjson.decode(first)
    if tonumber(order.quantity) ~= quantity then
        return {'REFUSED', 'IDEMPOTENCY_KEY_REUSED'}
    end
    local settled = 1 - redis.call('HEXISTS', KEYS[4], order.id)
    return {'EXISTING', first, settled, price, currency}
end

local bought = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local function refuse(rule)
    return {'REFUSED', rule, meta, bought}
end

-- Rule 1: status and the [start, end) window.
local now, start_at, end_at = tonumber(ARGV[4]), tonumber(meta[3]), tonumber(meta[4])
if status == 'ENDED' then
    return refuse('ENDED')
end
if status ~= 'ACTIVE' or now < start_at then
    return refuse('NOT_STARTED')
end
if now >= end_at then
    return refuse('ENDED')
end

-- Rule 2: 1 <= quantity <= max per purchase.
local max_per_purchase = tonumber(meta[5])
if quantity < 1 or quantity > max_per_purchase then
    return refuse('INVALID_QUANTITY')
end

-- Rule 3: units held + in flight + quantity <= per-user limit (0 = unlimited).
local limit = tonumber(meta[6])
if limit ~= 0 and bought + quantity > limit then
    return refuse('USER_LIMIT_REACHED')
end

-- Rule 4: no partial fills.
local remaining = tonumber(meta[7])
if remaining <= 0 then
    return refuse('SOLD_OUT')
end
if quantity > remaining then
    return refuse('INSUFFICIENT_STOCK')
end

-- Every check passed: reserve. In a sale with holds the order is HELD until now + hold time.
local stored = ARGV[6]
local hold_seconds = tonumber(meta[11] or '0')
if hold_seconds > 0 then
    local order = cjson.decode(stored)
    order.status = 'HELD'
    order.expires_at = now + hold_seconds * 1000
    stored = cjson.encode(order)
end
redis.call('HINCRBY', KEYS[1], 'remaining', -quantity)
redis.call('HINCRBY', KEYS[1], 'in_flight', quantity)
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HINCRBY', KEYS[2], ARGV[1], quantity)
redis.call('HSET', KEYS[3], ARGV[2], stored)
redis.call('HSET', KEYS[4], ARGV[5], stored)
return {'NEW', price, currency, stored}
