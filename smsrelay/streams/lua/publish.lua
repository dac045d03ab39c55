-- Publish one request, deduplicated by its idempotency key, in one atomic step.
-- KEYS[1] request stream; KEYS[2] (optional) idempotency key of the same shard
-- ARGV[1] idempotency TTL (s); ARGV[2] message id; ARGV[3..] field, value, field, value ...
-- Returns {1, message id} when queued, {0, original message id} for a duplicate.
if #ARGV < 4 or #ARGV % 2 ~= 0 or #ARGV > 2 + 2 * 256 or not tonumber(ARGV[1]) then
  return redis.error_reply('publish.lua: expected a TTL, a message id and 1 to 256 field pairs')
end
if #KEYS > 1 then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    return {0, prior}
  end
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
return {1, ARGV[2]}
