-- @include types_fn.lua
-- Give a message back the attempt a provider outage cost it (rule 15): the failure was the
-- provider's, not the message's.
-- KEYS[1] message state hash
-- Returns the attempts now counted, or -1 when the message has no state (settled meanwhile).
if key_type(KEYS[1]) ~= 'hash' then
  return -1
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') or 0
if attempts > 0 then
  attempts = redis.call('HINCRBY', KEYS[1], 'attempts', -1)
end
return attempts
