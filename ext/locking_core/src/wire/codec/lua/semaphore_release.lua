-- Give back the token ARGV[1]'s place in the semaphore KEYS[1]. Expired places
-- are dropped first, so the reply says whether a live place was given back:
-- 1, else 0. (An empty sorted set is deleted by Redis.)
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", string.format("%.0f", now))
return redis.call("ZREM", KEYS[1], ARGV[1])
