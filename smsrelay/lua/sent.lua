-- Record the provider's acceptance, then settle the entry: marker before ack (rule 4).
-- KEYS[1] request stream; KEYS[2] sent marker; KEYS[3] message state hash;
-- KEYS[4] (optional) outcome stream, for a replayed dead letter whose record must be resolved
-- ARGV[1] group; ARGV[2] entry id; ARGV[3] provider SID; ARGV[4] marker TTL (s);
-- ARGV[5..] (with KEYS[4]) the outcome entry's fields
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[3])
if #KEYS >= 4 and acked == 1 then
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, 5))
end
return acked
