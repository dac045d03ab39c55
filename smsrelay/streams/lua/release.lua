-- @include types_fn.lua
-- @include trace_fn.lua
-- A direct sender (an admin's "retry now") whose attempt the provider did not accept gives
-- the message up again: its failed_sms record keeps the error, the message stays dead.
-- KEYS[1] message state hash; KEYS[2] the message's trace;
-- KEYS[3] (optional) the phone's window, to give its slot back
-- ARGV[1] the sender's token; ARGV[2] message id; ARGV[3] trace TTL (ms); ARGV[4] the error
-- Returns 1, or 0 when the sender no longer owned the message (its lease ran out).
if #ARGV ~= 4 or not tonumber(ARGV[3]) then
  return redis.error_reply('release.lua: expected 4 arguments')
end
if key_type(KEYS[1]) ~= 'hash' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if #KEYS >= 3 and is_a(KEYS[3], 'zset') then
  redis.call('ZREM', KEYS[3], ARGV[2])
end
trace(KEYS[2], tonumber(ARGV[3]), 'admin_retry_failed', ARGV[4])
return 1
