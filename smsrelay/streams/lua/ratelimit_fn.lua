-- Sliding-window log: a sorted set per phone, members are message ids, scores the server's
-- time in ms (rule 5). Idempotent per message: a message that already holds a slot keeps it.
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Returns 1, 0 when the message may be sent; 0, ms-until-a-slot-frees otherwise.
local function acquire_slot(key, member, max, window_ms)
  local now = server_ms()
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window_ms)
  if redis.call('ZSCORE', key, member) then
    return 1, 0
  end
  if redis.call('ZCARD', key) < max then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, window_ms)
    return 1, 0
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return 0, math.max(1, tonumber(oldest[2]) + window_ms - now)
end
