-- Where an order stands, read atomically (a pipeline could see the key before a release and the
-- pending record after it, and call a released order confirmed).
--
-- KEYS: see common.lua.
-- ARGV: 1 idempotency field, 2 order id.
--
-- Replies: {'CONFIRMED'}, {'IN_FLIGHT'}, {'RELEASED'} or {'REFUSED', 'SALE_NOT_FOUND'}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
local entry = redis.call('HGET', KEYS[3], ARGV[1])
if not entry or cjson.decode(entry).id ~= ARGV[2] then
    return {'RELEASED'}
end
if redis.call('HEXISTS', KEYS[4], ARGV[2]) == 1 then
    return {'IN_FLIGHT'}
end
return {'CONFIRMED'}
