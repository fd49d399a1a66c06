-- The live places (expiry > now, the server's clock) of the semaphore
-- KEYS[1], as token, ms left, token, ms left, ...: what the gates compare
-- across servers, and what a backfill copies. Reads only; any other type at
-- the key (a lock, or none) has no places.
if redis.call("TYPE", KEYS[1])["ok"] ~= "zset" then
  return {}
end
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local places = redis.call("ZRANGEBYSCORE", KEYS[1], "(" .. string.format("%.0f", now), "+inf", "WITHSCORES")
local out = {}
for i = 1, #places, 2 do
  out[#out + 1] = places[i]
  out[#out + 1] = math.floor(tonumber(places[i + 1]) - now)
end
return out
