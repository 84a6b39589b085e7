-- Records a status change (and the start time, which StartSale moves).
--
-- KEYS: 1 meta, 2 units, 3 keys, 4 pending, 5 board, 6 firsts, 7 names (see mod.rs).
-- ARGV: 1 status, 2 end reason ('' for none), 3 ended at ('' for none), 4 start, 5 change channel.
--
-- Replies: {'OK'} or {'REFUSED', 'SALE_NOT_FOUND'}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'REFUSED', 'SALE_NOT_FOUND'}
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'end_reason', ARGV[2], 'ended_at', ARGV[3],
    'start', ARGV[4])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PUBLISH', ARGV[5], version)
return {'OK'}
