-- Records a status change (and the start time, which StartSale moves).
--
-- KEYS: see common.lua. An ended sale's line closes (its buyers learn it from the status).
-- ARGV: 1 status, 2 end reason ('' for none), 3 ended at ('' for none), 4 start, 5 change channel.
--
-- Replies: {'OK'} or {'REFUSED', 'SALE_NOT_FOUND'}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'end_reason', ARGV[2], 'ended_at', ARGV[3],
    'start', ARGV[4])
if ARGV[1] == 'ENDED' then
    redis.call('DEL', KEYS[9], KEYS[10])
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call(PUBLISH, ARGV[5], version)
return {'OK'}
