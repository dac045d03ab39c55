-- @include ratelimit_fn.lua
-- Take (or confirm) a rate-limit slot for one message.
-- KEYS[1] the phone's window; ARGV[1] message id, ARGV[2] max, ARGV[3] window (ms)
-- Returns {1, 0} or {0, ms until a slot frees}.
local ok, wait_ms = acquire_slot(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
return {ok, wait_ms}
