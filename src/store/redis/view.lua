-- A sale's live state and the top of its leaderboard, read atomically.
--
-- KEYS: see common.lua.
-- ARGV: 1 how many leaderboard entries, 2.. the meta fields wanted, in order.
--
-- Replies: {} when the sale is absent, else {meta values, buyers, {member, score, ...}, names,
-- buyers in line}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {}
end
local fields = {}
for j = 2, #ARGV do
    fields[#fields + 1] = ARGV[j]
end
local meta = redis.call('HMGET', KEYS[1], unpack(fields))
local top = redis.call('ZRANGE', KEYS[5], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local names = {}
for j = 1, #top, 2 do
    local member = top[j]
    local buyer = string.sub(member, string.find(member, ':', 1, true) + 1)
    names[#names + 1] = redis.call('HGET', KEYS[7], buyer) or ''
end
return {meta, redis.call('ZCARD', KEYS[5]), top, names, redis.call('ZCARD', KEYS[9])}
