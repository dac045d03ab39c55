"""Publishing SMS requests: the producers, their Lua script and the local disk spool."""
