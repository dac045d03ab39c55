-- @include types_fn.lua
-- @include trace_fn.lua
-- Move an entry to the dead-letter stream and acknowledge it, in one atomic step (rule 2).
-- Everything that can fail is checked before the first write (rule 14): a script that fails
-- after its XACK would lose the entry, since Redis does not undo what a script already did.
-- KEYS[1] request stream; KEYS[2] dead-letter stream; KEYS[3] dead-letter counts hash;
-- KEYS[4] message state hash; KEYS[5] the message's trace;
-- KEYS[6] (optional) the phone's window, to give its slot back
-- ARGV[1] group; ARGV[2] entry id; ARGV[3] message id; ARGV[4] reason; ARGV[5] trace TTL
-- (ms); ARGV[6] the error; ARGV[7..] fields
-- Returns the dead-letter entry id, or false when the entry was already settled elsewhere.
if #ARGV < 8 or (#ARGV - 6) % 2 ~= 0 or #ARGV > 6 + 2 * 256 or not tonumber(ARGV[5]) then
  return redis.error_reply('deadletter.lua: expected 6 arguments and 1 to 256 field pairs')
end
if not is_a(KEYS[2], 'stream') then
  return redis.error_reply('deadletter.lua: ' .. KEYS[2] .. ' is not a stream')
end
-- The state is this entry's, or nobody's: a copy dead-lettered beside a live owner (a poison
-- duplicate) must not erase the owner's attempts. A state of another type is corruption and
-- goes with the message.
local state_is_hash = key_type(KEYS[4]) == 'hash'
local owner = state_is_hash and redis.call('HGET', KEYS[4], 'owner')
local release = not state_is_hash or not owner or owner == ARGV[2]
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return false
end
local dead_id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 7))
redis.call('XDEL', KEYS[1], ARGV[2])
if is_a(KEYS[3], 'hash') then
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
end
if release then
  redis.call('DEL', KEYS[4])
  if #KEYS >= 6 and is_a(KEYS[6], 'zset') then
    redis.call('ZREM', KEYS[6], ARGV[3])
  end
end
if ARGV[3] ~= '' then
  trace(KEYS[5], tonumber(ARGV[5]), 'dead_lettered', ARGV[4] .. ': ' .. ARGV[6])
end
return dead_id
