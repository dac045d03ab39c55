-- Put delayed messages whose time has come back on the request stream of their lane.
-- KEYS[1] delayed set; KEYS[2] delayed payloads; KEYS[3] high lane; KEYS[4] normal lane;
-- KEYS[5] bulk lane (a payload's `priority` field names its lane; none: normal)
-- ARGV[1] most to move in one call
-- Returns {moved, ms until the next one is due (-1: none waiting), unreadable payloads}.
-- Every payload is decoded before the first write (rule 14); one that does not decode is
-- dropped and counted, instead of failing the call after some messages were moved.
local limit = tonumber(ARGV[1])
if not limit or limit < 1 then
  return redis.error_reply('move_due.lua: the limit must be a positive number')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local fields, unreadable = {}, 0
for i, id in ipairs(due) do
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    local ok, decoded = pcall(cjson.decode, payload)
    if ok and type(decoded) == 'table' and #decoded > 0 and #decoded % 2 == 0
        and #decoded <= 512 then
      fields[i] = decoded
    else
      unreadable = unreadable + 1
    end
  end
end
local lanes = {high = KEYS[3], bulk = KEYS[5]}
local function lane_of(pairs)
  for j = 1, #pairs, 2 do
    if pairs[j] == 'priority' then
      return lanes[pairs[j + 1]] or KEYS[4]
    end
  end
  return KEYS[4]
end
local moved = 0
for i, id in ipairs(due) do
  if fields[i] then
    redis.call('XADD', lane_of(fields[i]), '*', unpack(fields[i]))
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next_due[2] then
  return {moved, math.max(0, tonumber(next_due[2]) - now), unreadable}
end
return {moved, -1, unreadable}
