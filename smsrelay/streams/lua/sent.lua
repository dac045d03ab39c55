-- @include types_fn.lua
-- @include trace_fn.lua
-- Record the provider's acceptance, then settle the entry: marker before ack (rule 4).
-- The outcome entry feeds `sent_sms` (and resolves a failed_sms record): the mirror reads it.
-- KEYS[1] request stream; KEYS[2] sent marker; KEYS[3] message state hash;
-- KEYS[4] outcome stream; KEYS[5] the message's trace
-- ARGV[1] group; ARGV[2] entry id ('' for a direct sender: no entry to settle);
-- ARGV[3] provider SID; ARGV[4] marker TTL (s); ARGV[5] trace TTL (ms); ARGV[6] the event
-- ('sent', 'found_at_provider'); ARGV[7] most outcome entries kept unmirrored (MAXLEN ~);
-- ARGV[8..] outcome fields
-- Returns 1 when this call settled the entry (or recorded a direct send), 0 when another did.
if #ARGV < 9 or (#ARGV - 7) % 2 ~= 0 or #ARGV > 7 + 64 then
  return redis.error_reply('sent.lua: expected 7 arguments and 1 to 32 field pairs')
end
local trace_ttl, cap = tonumber(ARGV[5]), tonumber(ARGV[7])
if not tonumber(ARGV[4]) or not trace_ttl or not cap or ARGV[3] == '' then
  return redis.error_reply('sent.lua: the SID is empty or a number is not a number')
end
if not is_a(KEYS[4], 'stream') then
  return redis.error_reply('sent.lua: ' .. KEYS[4] .. ' is not a stream')
end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
local settled = 1
if ARGV[2] ~= '' then
  settled = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[3])
if settled == 1 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', cap, '*', unpack(ARGV, 8))
  trace(KEYS[5], trace_ttl, ARGV[6], ARGV[3])
end
return settled
