-- Put delayed messages whose time has come back on the request stream.
-- KEYS[1] delayed set; KEYS[2] delayed payloads; KEYS[3] request stream
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
local moved = 0
for i, id in ipairs(due) do
  if fields[i] then
    redis.call('XADD', KEYS[3], '*', unpack(fields[i]))
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
