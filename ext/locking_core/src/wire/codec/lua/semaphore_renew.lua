-- A new TTL (ARGV[2] ms) for the token ARGV[1]'s live place in the semaphore
-- KEYS[1]. Expired places are dropped first, so an expired place is never
-- revived: it may have been counted free and taken meanwhile.
-- Returns 1 when renewed, 0 when the token holds no live place.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", string.format("%.0f", now))
if not redis.call("ZSCORE", KEYS[1], ARGV[1]) then
  return 0
end
redis.call("ZADD", KEYS[1], "XX", string.format("%.0f", now + tonumber(ARGV[2])), ARGV[1])
local last = redis.call("ZRANGE", KEYS[1], -1, -1, "WITHSCORES")
redis.call("PEXPIREAT", KEYS[1], last[2])
return 1
