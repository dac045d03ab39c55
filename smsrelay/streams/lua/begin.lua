-- @include ratelimit_fn.lua
-- Decide, in one round trip, whether this sender may call the provider for a message now.
-- Every sender goes through here: a worker for a stream entry, an admin's "retry now" (rule 13).
-- KEYS[1] sent marker; KEYS[2] message state hash; KEYS[3] the phone's rate-limit window
-- ARGV[1] message id; ARGV[2] owner: the stream entry id, or a direct sender's token;
-- ARGV[3] rate limit max (0: no check); ARGV[4] window (ms); ARGV[5] max attempts (0: no cap);
-- ARGV[6] now (ISO, for display); ARGV[7] state TTL (s);
-- ARGV[8] lease (ms) of a direct sender's ownership (0: the owner is a pending entry);
-- ARGV[9] the message's expiry (epoch ms on the server's clock; 0: none)
-- Returns one of:
--   {'sent', sid}                 already accepted by the provider: never send again
--   {'expired'}                   past its expiry: never send
--   {'busy', owner}               another sender of the same message is in progress
--   {'limited', wait ms, attempts}
--   {'exhausted', attempts, last error, first attempt, last attempt, unsettled}
--   {'go', attempt number, first attempt, ambiguous since}
-- `ambiguous since` (else '') says an earlier attempt's outcome is unknown (a timeout, or a
-- sender that died mid-send): the provider is asked before the message is sent again.
if #ARGV ~= 9 then
  return redis.error_reply('begin.lua: expected 9 arguments, got ' .. #ARGV)
end
local rate_max, window_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_attempts, ttl, lease = tonumber(ARGV[5]), tonumber(ARGV[7]), tonumber(ARGV[8])
local expiry = tonumber(ARGV[9])
if not (rate_max and window_ms and max_attempts and ttl and lease and expiry) then
  return redis.error_reply('begin.lua: a numeric argument is not a number')
end
local sid = redis.call('GET', KEYS[1])
if sid then
  return {'sent', sid}
end
local now = server_ms()
if expiry > 0 and now >= expiry then
  return {'expired'}
end
local st = redis.call('HMGET', KEYS[2], 'owner', 'lease_until', 'attempts', 'in_flight')
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
return {'go', tostring(attempts), first, redis.call('HGET', KEYS[2], 'ambiguous_since') or ''}
