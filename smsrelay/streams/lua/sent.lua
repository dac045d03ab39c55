-- @include types_fn.lua
-- Record the provider's acceptance, then settle the entry: marker before ack (rule 4).
-- KEYS[1] request stream; KEYS[2] sent marker; KEYS[3] message state hash;
-- KEYS[4] (optional) outcome stream, for a message whose failed_sms record must be resolved
-- ARGV[1] group; ARGV[2] entry id ('' for a direct sender: no entry to settle);
-- ARGV[3] provider SID; ARGV[4] marker TTL (s); ARGV[5..] (with KEYS[4]) outcome fields
-- Returns 1 when this call settled the entry (or recorded a direct send), 0 when another did.
if #ARGV < 4 or (#ARGV - 4) % 2 ~= 0 or #ARGV > 4 + 64 then
  return redis.error_reply('sent.lua: expected 4 arguments and up to 32 field pairs')
end
if not tonumber(ARGV[4]) or ARGV[3] == '' then
  return redis.error_reply('sent.lua: the SID is empty or the TTL is not a number')
end
if #KEYS >= 4 and not is_a(KEYS[4], 'stream') then
  return redis.error_reply('sent.lua: ' .. KEYS[4] .. ' is not a stream')
end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
local settled = 1
if ARGV[2] ~= '' then
  settled = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[3])
if #KEYS >= 4 and settled == 1 then
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, 5))
end
return settled
