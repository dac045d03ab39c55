-- Put delayed messages whose time has come back on the request stream.
-- KEYS[1] delayed set; KEYS[2] delayed payloads; KEYS[3] request stream
-- ARGV[1] most to move in one call
-- Returns {moved, ms until the next one is due (-1: none waiting)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    redis.call('XADD', KEYS[3], '*', unpack(cjson.decode(payload)))
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next_due[2] then
  return {#due, math.max(0, tonumber(next_due[2]) - now)}
end
return {#due, -1}
