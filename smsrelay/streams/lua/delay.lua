-- @include types_fn.lua
-- @include trace_fn.lua
-- Take an entry off the stream and hold it until a due time (a retry backoff, a deferral, or
-- a copy waiting for another sender of its message to finish).
-- The wait lives in Redis, so a crash loses neither the message nor its wait (rule 6).
-- KEYS[1] request stream; KEYS[2] delayed set; KEYS[3] delayed payloads; KEYS[4] state hash;
-- KEYS[5] the message's trace
-- ARGV[1] group; ARGV[2] entry id; ARGV[3] message id; ARGV[4] delay (ms);
-- ARGV[5] JSON array of the entry's fields; ARGV[6] last error ('' keeps the stored one);
-- ARGV[7] '1' gives the attempt back (the provider's outage, not the message's failure);
-- ARGV[8] '1' when the attempt's outcome is unknown (looked up before the next one);
-- ARGV[9] trace TTL (ms); ARGV[10] the event ('retry_scheduled', 'held', 'deferred', ...)
-- Returns 1, or 0 when the entry was already settled elsewhere.
if #ARGV ~= 10 or not tonumber(ARGV[4]) or not tonumber(ARGV[9]) then
  return redis.error_reply('delay.lua: expected 10 arguments with a numeric delay and TTL')
end
local ok, fields = pcall(cjson.decode, ARGV[5])
if not ok or type(fields) ~= 'table' or #fields == 0 or #fields % 2 ~= 0 then
  return redis.error_reply('delay.lua: the payload is not a JSON array of field pairs')
end
if not (is_a(KEYS[2], 'zset') and is_a(KEYS[3], 'hash') and is_a(KEYS[4], 'hash')) then
  return redis.error_reply('delay.lua: the delay set, payloads or state has the wrong type')
end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
if redis.call('HGET', KEYS[4], 'owner') == ARGV[2] then
  if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[4], 'last_error', ARGV[6])
  end
  if ARGV[7] == '1' and tonumber(redis.call('HGET', KEYS[4], 'attempts') or '0') > 0 then
    redis.call('HINCRBY', KEYS[4], 'attempts', -1)
  end
  if ARGV[8] == '1' then
    redis.call('HSETNX', KEYS[4], 'ambiguous_since',
               redis.call('HGET', KEYS[4], 'first_attempt_at') or '')
  end
  redis.call('HDEL', KEYS[4], 'owner', 'in_flight')
end
local why = 'for ' .. ARGV[4] .. ' ms'
if ARGV[6] ~= '' then why = why .. ': ' .. ARGV[6] end
trace(KEYS[5], tonumber(ARGV[9]), ARGV[10], why)
return 1
