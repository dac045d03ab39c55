-- Read new entries of one shard's three lanes for a worker, in priority order (rule 17).
-- KEYS[1] high lane; KEYS[2] normal lane; KEYS[3] bulk lane (one shard: one slot)
-- ARGV[1] group; ARGV[2] consumer; ARGV[3] how many entries at most (the free send slots);
-- ARGV[4] how many of them bulk may take ahead of normal (its one slot in ten, owed)
-- Returns {high entries, normal entries, bulk entries}, each as XREADGROUP gives them.
-- High takes what it has first. Bulk's reserve comes next, then normal, then bulk takes what
-- normal left. The worker asks for no more than it has free slots: nothing read waits in its
-- memory behind other entries, so a login code waits for no more than the sends in flight.
local count, reserve = tonumber(ARGV[3]), tonumber(ARGV[4])
if #ARGV ~= 4 or not count or count < 1 or not reserve or reserve < 0 then
  return redis.error_reply('read.lua: expected group, consumer, a count >= 1, a reserve >= 0')
end

local function take(stream, n)
  if n < 1 then
    return {}
  end
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n,
    'STREAMS', stream, '>')
  if not reply then
    return {}
  end
  return reply[1][2]
end

local high = take(KEYS[1], count)
local left = count - #high
local bulk = take(KEYS[3], math.min(reserve, left))
left = left - #bulk
local normal = take(KEYS[2], left)
left = left - #normal
for _, entry in ipairs(take(KEYS[3], left)) do
  bulk[#bulk + 1] = entry
end
return {high, normal, bulk}
