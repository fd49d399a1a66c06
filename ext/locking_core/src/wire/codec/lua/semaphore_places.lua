-- The tokens with a live place (expiry > now, the server's clock) in the
-- semaphore KEYS[1]: what the gates compare across servers. Reads only.
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
return redis.call("ZRANGEBYSCORE", KEYS[1], "(" .. string.format("%.0f", now), "+inf")
