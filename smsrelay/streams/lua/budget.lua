-- Take tokens from a rate budget shared by every process of a namespace (rule 16): GCRA on
-- the server's clock, so two processes never disagree and a restart forgets nothing.
-- KEYS[1] the budget (its theoretical arrival time, ms)
-- ARGV[1] emission interval (ms per token); ARGV[2] burst (tokens); ARGV[3] tokens wanted
-- Returns {tokens granted (0..wanted), ms until the next token}.
if #ARGV ~= 3 then
  return redis.error_reply('budget.lua: expected 3 arguments')
end
local interval, burst, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not (interval and burst and wanted) or interval <= 0 or burst < 1 or wanted < 1 then
  return redis.error_reply('budget.lua: interval > 0, burst >= 1 and wanted >= 1 required')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') or 0, now)
-- tokens available now: how far the arrival time is from its limit, now + burst intervals
local available = math.floor((now + burst * interval - tat) / interval)
local granted = math.max(0, math.min(wanted, available))
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now + interval))
end
local wait = math.max(0, math.ceil(tat + interval - burst * interval - now))
return {granted, wait}
