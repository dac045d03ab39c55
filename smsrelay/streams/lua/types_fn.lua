-- Key types, read before a script's first write (rule 14): a key of an unexpected type (a
-- corruption, a foreign tool) must fail the script before it changes anything, or be stepped
-- around, never fail it halfway.
local function key_type(key)
  return redis.call('TYPE', key)['ok']
end

local function is_a(key, wanted)
  local found = key_type(key)
  return found == 'none' or found == wanted
end
