-- A reservation will not be durable: give its units back and free its idempotency key. Only an
-- order still in flight is released; releasing twice, or after a confirm, changes nothing.
--
-- KEYS: 1 meta, 2 units, 3 keys, 4 pending, 5 board, 6 firsts, 7 names (see mod.rs).
-- ARGV: 1 buyer id, 2 idempotency field, 3 order id, 4 change channel.
--
-- Replies: {'OK', released 0|1} or {'REFUSED', 'SALE_NOT_FOUND'}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
local pending = redis.call('HGET', KEYS[4], ARGV[3])
if not pending then
    return {'OK', 0}
end
-- The units come from the reservation itself, not from the caller.
local quantity = tonumber(cjson.decode(pending).quantity)
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'remaining', quantity)
redis.call('HINCRBY', KEYS[1], 'in_flight', -quantity)
if redis.call('HINCRBY', KEYS[2], ARGV[1], -quantity) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[1])
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PUBLISH', ARGV[4], version)
return {'OK', 1}
