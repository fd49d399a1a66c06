-- What the gates compare of KEYS[1] on this server: {"string", value, ms
-- left (-1: no TTL)} for a lock, or {type} for any other key (a semaphore is
-- a "zset"; a missing key is "none"). Reads only.
local kind = redis.call("TYPE", KEYS[1])["ok"]
if kind == "string" then
  return {kind, redis.call("GET", KEYS[1]), redis.call("PTTL", KEYS[1])}
end
return {kind}
