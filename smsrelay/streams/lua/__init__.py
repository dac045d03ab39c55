"""The Lua scripts, kept in `.lua` files with a KEYS/ARGV header (loaded by streams.scripts)."""
