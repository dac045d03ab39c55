-- A message's trace (rule 18): each step a script takes appends one event to a capped list
-- with a TTL, in the round trip that already runs. `ms|event|detail`, the server's clock.
-- A key of another type (a corruption) is stepped around: the trace never fails a script.
local function trace(key, ttl_ms, event, detail, at_ms)
  if ttl_ms <= 0 then return end
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'list' and kind ~= 'none' then return end
  local ms = at_ms
  if not ms then
    local t = redis.call('TIME')
    ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  redis.call('RPUSH', key, ms .. '|' .. event .. '|' .. string.sub(detail or '', 1, 300))
  redis.call('LTRIM', key, -64, -1)
  redis.call('PEXPIRE', key, ttl_ms)
end
