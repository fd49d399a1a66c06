-- The operator tools' look at KEYS[1] (locking status, unlock, the
-- dashboard), which must tell a semaphore from other data under the prefix.
-- A semaphore is a sorted set as the semaphore scripts leave one: with a TTL
-- (they always set one, to the latest place's expiry), its scores whole
-- milliseconds on the server's clock (none before 2001, none past the key's
-- own expiry). Anything else (a zset without a TTL, scores in seconds ...)
-- is not a semaphore and is never deleted here.
-- ARGV[1] "view": the semaphore's live places as token, ms left, token, ms
-- left ... (possibly none); false (nil) when KEYS[1] is not a semaphore.
-- ARGV[1] "unlock": deletes KEYS[1] if it is a lock (a string): 1, or a
-- semaphore: 2; else leaves it and returns 0.
if redis.replicate_commands then redis.replicate_commands() end
local kind = redis.call("TYPE", KEYS[1])["ok"]
if ARGV[1] == "unlock" and kind == "string" then
  return redis.call("DEL", KEYS[1])
end
if kind ~= "zset" then
  if ARGV[1] == "unlock" then return 0 end
  return false
end
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = redis.call("PTTL", KEYS[1])
local first = tonumber(redis.call("ZRANGE", KEYS[1], 0, 0, "WITHSCORES")[2])
local last = tonumber(redis.call("ZRANGE", KEYS[1], -1, -1, "WITHSCORES")[2])
local semaphore = ttl >= 0 and first ~= nil and last ~= nil and first >= 1e12
  and first == math.floor(first) and last == math.floor(last) and last <= now + ttl + 1000
if ARGV[1] == "unlock" then
  if not semaphore then return 0 end
  return redis.call("DEL", KEYS[1]) * 2
end
if not semaphore then return false end
local places = redis.call("ZRANGEBYSCORE", KEYS[1], "(" .. string.format("%.0f", now), "+inf", "WITHSCORES")
local out = {}
for i = 1, #places, 2 do
  out[#out + 1] = places[i]
  out[#out + 1] = math.floor(tonumber(places[i + 1]) - now)
end
return out
