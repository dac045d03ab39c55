-- @include types_fn.lua
-- The provider breaker of a namespace, shared by every worker (rules 15, 16): a hash on the
-- server's clock, so workers agree and a restart forgets nothing.
-- KEYS[1] the breaker hash; KEYS[2] the run of failures that may open it (a list)
-- ARGV[1] operation, then its arguments:
--   view                                  -> {state, failures, ms until a probe may go,
--                                             ms the fleet pauses (Retry-After), opened total}
--   probe    owner lease_ms               -> 1 when this owner may send the one probe
--   unprobe  owner                        -> 1 when the owner's unused probe was given back
--   failure  owner threshold base_ms max_ms ref error retry_after_ms
--                                         -> {'closed', failures} below the threshold;
--                                            {'opened', ref...} when this failure opened it
--                                            (the refs of the run that opened it, for their
--                                            attempts to be given back);
--                                            {'open'} when it was open (a failed probe
--                                            makes the cooldown half as long again, at
--                                            most max_ms)
--   success  owner base_ms                -> 'closed_now' when this probe closed it,
--                                            'reset' when it ended a run of failures, 'noop'
if not (is_a(KEYS[1], 'hash') and is_a(KEYS[2], 'list')) then
  return redis.error_reply('breaker.lua: the breaker keys have the wrong type')
end
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'state', 'failures', 'next_probe_at', 'probe_until',
                     'probe_owner', 'cooldown_ms', 'pause_until', 'opened_total')
local state = b[1] or 'closed'
local failures = tonumber(b[2] or '0')
local next_probe_at, probe_until = tonumber(b[3] or '0'), tonumber(b[4] or '0')
local probe_owner, cooldown = b[5] or '', tonumber(b[6] or '0')
local pause_until, opened_total = tonumber(b[7] or '0'), tonumber(b[8] or '0')

if op == 'view' then
  local until_probe = 0
  if state == 'open' then
    until_probe = math.max(0, next_probe_at - now)
    if probe_until > now then until_probe = math.max(until_probe, probe_until - now) end
  end
  return {state, failures, until_probe, math.max(0, pause_until - now), opened_total}
elseif op == 'probe' then
  local lease = tonumber(ARGV[3])
  if not lease then return redis.error_reply('breaker.lua: probe needs a lease') end
  if state ~= 'open' or now < next_probe_at or probe_until > now then return 0 end
  redis.call('HSET', KEYS[1], 'probe_until', now + lease, 'probe_owner', ARGV[2])
  return 1
elseif op == 'unprobe' then
  if probe_owner ~= ARGV[2] then return 0 end
  redis.call('HSET', KEYS[1], 'probe_until', 0, 'probe_owner', '')
  return 1
elseif op == 'failure' then
  local threshold, base, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local retry_after = tonumber(ARGV[8])
  if not (threshold and base and max and retry_after) or #ARGV ~= 8 then
    return redis.error_reply('breaker.lua: failure needs 7 arguments')
  end
  if retry_after > 0 and now + retry_after > pause_until then
    redis.call('HSET', KEYS[1], 'pause_until', now + retry_after)
  end
  if state == 'open' then
    if probe_owner == ARGV[2] and probe_until > 0 then  -- the probe failed: wait longer
      -- 1.5x, not 2x: the wait after the provider returns is at most about half the outage
      -- so far (with 2x, as long as it), and a login code waits for that
      local longer = math.min(math.floor(math.max(cooldown, base) * 1.5), max)
      redis.call('HSET', KEYS[1], 'cooldown_ms', longer, 'next_probe_at', now + longer,
                 'probe_until', 0, 'probe_owner', '', 'last_error', ARGV[7])
    end
    return {'open'}
  end
  failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  redis.call('RPUSH', KEYS[2], ARGV[6])
  redis.call('LTRIM', KEYS[2], -threshold, -1)
  if failures < threshold then
    return {'closed', failures}
  end
  local run = redis.call('LRANGE', KEYS[2], 0, -1)
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'cooldown_ms', base,
             'next_probe_at', now + base, 'probe_until', 0, 'probe_owner', '',
             'last_error', ARGV[7])
  redis.call('HINCRBY', KEYS[1], 'opened_total', 1)
  return {'opened', unpack(run)}
elseif op == 'success' then
  if state == 'open' then
    if probe_owner ~= ARGV[2] or probe_until == 0 then return 'noop' end
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'probe_until', 0,
               'probe_owner', '', 'cooldown_ms', tonumber(ARGV[3]) or 0, 'closed_at', now)
    redis.call('DEL', KEYS[2])
    return 'closed_now'
  end
  if failures > 0 then
    redis.call('HSET', KEYS[1], 'failures', 0)
    redis.call('DEL', KEYS[2])
    return 'reset'
  end
  return 'noop'
end
return redis.error_reply('breaker.lua: unknown operation ' .. tostring(op))
