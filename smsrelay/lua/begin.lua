-- @include ratelimit_fn.lua
-- Decide, in one round trip, whether this delivery of a message may call the provider.
-- KEYS[1] sent marker; KEYS[2] message state hash; KEYS[3] the phone's rate-limit window
-- ARGV[1] message id; ARGV[2] stream entry id; ARGV[3] rate limit max (0: no check);
-- ARGV[4] window (ms); ARGV[5] max attempts; ARGV[6] now (ISO, for display); ARGV[7] state TTL (s)
-- Returns one of:
--   {'sent', sid}                 already accepted by the provider: acknowledge, never resend
--   {'busy', owner entry id}      another entry of the same message is in progress: a duplicate
--   {'limited', wait ms, attempts}
--   {'exhausted', attempts, last error, first attempt, last attempt}
--   {'go', attempt number, first attempt}
local sid = redis.call('GET', KEYS[1])
if sid then
  return {'sent', sid}
end
local owner = redis.call('HGET', KEYS[2], 'owner')
if owner and owner ~= ARGV[2] then
  return {'busy', owner}
end
local attempts = tonumber(redis.call('HGET', KEYS[2], 'attempts') or '0')
if attempts >= tonumber(ARGV[5]) then
  local st = redis.call('HMGET', KEYS[2], 'last_error', 'first_attempt_at', 'last_attempt_at')
  return {'exhausted', tostring(attempts), st[1] or '', st[2] or '', st[3] or ''}
end
if tonumber(ARGV[3]) > 0 then
  local ok, wait_ms = acquire_slot(KEYS[3], ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
  if ok == 0 then
    return {'limited', tostring(wait_ms), tostring(attempts)}
  end
end
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'last_attempt_at', ARGV[6])
redis.call('HSETNX', KEYS[2], 'first_attempt_at', ARGV[6])
attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('EXPIRE', KEYS[2], ARGV[7])
return {'go', tostring(attempts), redis.call('HGET', KEYS[2], 'first_attempt_at')}
