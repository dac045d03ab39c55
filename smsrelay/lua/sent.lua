-- Record the provider's acceptance, then settle the entry: marker before ack (rule 4).
-- KEYS[1] request stream; KEYS[2] sent marker; KEYS[3] message state hash
-- ARGV[1] group; ARGV[2] entry id; ARGV[3] provider SID; ARGV[4] marker TTL (s)
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[3])
return acked
