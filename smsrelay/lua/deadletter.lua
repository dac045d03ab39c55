-- Move an entry to the dead-letter stream and acknowledge it, in one atomic step (rule 2).
-- KEYS[1] request stream; KEYS[2] dead-letter stream; KEYS[3] dead-letter counts hash;
-- KEYS[4] message state hash; KEYS[5] (optional) the phone's window, to give its slot back
-- ARGV[1] group; ARGV[2] entry id; ARGV[3] message id; ARGV[4] reason; ARGV[5..] fields
-- Returns the dead-letter entry id, or false when the entry was already settled elsewhere.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return false
end
local dead_id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
redis.call('DEL', KEYS[4])
if #KEYS >= 5 then
  redis.call('ZREM', KEYS[5], ARGV[3])
end
return dead_id
