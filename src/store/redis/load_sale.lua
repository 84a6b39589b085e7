-- Builds a sale's hot state from its record and durable orders, unless the sale is live: a live
-- sale's in-flight reservations exist only here, so it is never overwritten.
--
-- KEYS: see common.lua.
-- ARGV: 1 change channel, 2 meta pairs n1, 3 buyers n2, 4 orders n3, 5 board entries n4,
--       6 holds n5, then n1 x (field, value) of meta, n2 x (buyer, units), n3 x (idempotency
--       field, encoded order), n4 x (buyer, member, score, display name), n5 x (order id,
--       encoded order). The line starts empty.
--
-- Replies: {'LOADED'} or {'PRESENT'}.

if redis.call('EXISTS', KEYS[1]) == 1 then
    return {'PRESENT'}
end
-- Leftovers of a sale without meta cannot be live: start clean.
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10])

local n_meta, n_buyers, n_orders, n_board, n_holds =
    tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local i = 7
local meta_at = i
i = i + 2 * n_meta
for _ = 1, n_buyers do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    i = i + 2
end
for _ = 1, n_orders do
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
    i = i + 2
end
for _ = 1, n_board do
    redis.call('ZADD', KEYS[5], ARGV[i + 2], ARGV[i + 1])
    redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[7], ARGV[i], ARGV[i + 3])
    i = i + 4
end
for _ = 1, n_holds do
    redis.call('HSET', KEYS[8], ARGV[i], ARGV[i + 1])
    i = i + 2
end
-- Meta last: it is what marks the sale live.
for j = meta_at, meta_at + 2 * n_meta - 1, 2 do
    redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1])
end
redis.call(PUBLISH, ARGV[1], redis.call('HGET', KEYS[1], 'version'))
return {'LOADED'}
