-- @include ratelimit_fn.lua
-- @include trace_fn.lua
-- Decide, in one round trip, whether this sender may call the provider for a message now.
-- Every sender goes through here: a worker for a stream entry, an admin's "retry now" (rule 13).
-- KEYS[1] sent marker; KEYS[2] message state hash; KEYS[3] the phone's rate-limit window;
-- KEYS[4] the message's trace
-- ARGV[1] message id; ARGV[2] owner: the stream entry id, or a direct sender's token;
-- ARGV[3] rate limit max (0: no check); ARGV[4] window (ms); ARGV[5] max attempts (0: no cap);
-- ARGV[6] now (ISO, for display); ARGV[7] state TTL (s);
-- ARGV[8] lease (ms) of a direct sender's ownership (0: the owner is a pending entry);
-- ARGV[9] the message's expiry (epoch ms on the server's clock; 0: none);
-- ARGV[10] trace TTL (ms, 0: no trace); ARGV[11] what this sender is ('attempt' for a worker,
-- 'admin_retry'); ARGV[12] when the message was published (epoch ms; 0: unknown);
-- ARGV[13] a SID the provider reported undelivered: a marker holding it does not count as sent
-- Returns one of:
--   {'sent', sid}                 already accepted by the provider: never send again
--   {'expired'}                   past its expiry: never send
--   {'busy', owner}               another sender of the same message is in progress
--   {'limited', wait ms, attempts}
--   {'exhausted', attempts, last error, first attempt, last attempt, unsettled}
--   {'go', attempt number, first attempt, ambiguous since}
-- `ambiguous since` (else '') says an earlier attempt's outcome is unknown (a timeout, or a
-- sender that died mid-send): the provider is asked before the message is sent again.
if #ARGV ~= 13 then
  return redis.error_reply('begin.lua: expected 13 arguments, got ' .. #ARGV)
end
local rate_max, window_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_attempts, ttl, lease = tonumber(ARGV[5]), tonumber(ARGV[7]), tonumber(ARGV[8])
local expiry, trace_ttl, published = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[12])
if not (rate_max and window_ms and max_attempts and ttl and lease and expiry and trace_ttl
        and published) then
  return redis.error_reply('begin.lua: a numeric argument is not a number')
end
local sid = redis.call('GET', KEYS[1])
if sid and sid ~= ARGV[13] then
  return {'sent', sid}
end
local window_type = redis.call('TYPE', KEYS[3])['ok']
if window_type ~= 'zset' and window_type ~= 'none' then
  return redis.error_reply('begin.lua: ' .. KEYS[3] .. ' is not a sorted set')
end
local now = server_ms()
local st = redis.call('HMGET', KEYS[2], 'owner', 'lease_until', 'attempts', 'in_flight')
-- (every read that can fail is above: the first write is the trace's)
if trace_ttl > 0 and published > 0 and redis.call('EXISTS', KEYS[4]) == 0 then
  trace(KEYS[4], trace_ttl, 'published', '', published)
end
if expiry > 0 and now >= expiry then
  trace(KEYS[4], trace_ttl, 'expired', '')
  return {'expired'}
end
local owner, lease_until = st[1], tonumber(st[2] or '0')
if owner and owner ~= ARGV[2] and (lease_until == 0 or lease_until > now) then
  return {'busy', owner}
end
local attempts = tonumber(st[3] or '0')
if max_attempts > 0 and attempts >= max_attempts then
  local last = redis.call('HMGET', KEYS[2], 'last_error', 'first_attempt_at', 'last_attempt_at')
  -- `unsettled`: the last attempt's sender died mid-send; the provider may have the message
  return {'exhausted', tostring(attempts), last[1] or '', last[2] or '', last[3] or '',
          st[4] or ''}
end
if rate_max > 0 then
  local ok, wait_ms = acquire_slot(KEYS[3], ARGV[1], rate_max, window_ms)
  if ok == 0 then
    trace(KEYS[4], trace_ttl, 'rate_limited', 'a slot frees in ' .. wait_ms .. ' ms')
    return {'limited', tostring(wait_ms), tostring(attempts)}
  end
end
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'last_attempt_at', ARGV[6])
if lease > 0 then
  redis.call('HSET', KEYS[2], 'lease_until', now + lease)
else
  redis.call('HDEL', KEYS[2], 'lease_until')
end
redis.call('HSETNX', KEYS[2], 'first_attempt_at', ARGV[6])
local first = redis.call('HGET', KEYS[2], 'first_attempt_at')
if st[4] == '1' then  -- the last attempt never settled: its sender died mid-send
  redis.call('HSETNX', KEYS[2], 'ambiguous_since', first)
end
redis.call('HSET', KEYS[2], 'in_flight', '1')
attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('EXPIRE', KEYS[2], ttl)
trace(KEYS[4], trace_ttl, ARGV[11], tostring(attempts))
return {'go', tostring(attempts), first, redis.call('HGET', KEYS[2], 'ambiguous_since') or ''}
