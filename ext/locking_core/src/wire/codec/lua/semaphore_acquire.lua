-- Take a place in the semaphore KEYS[1] (a sorted set: token -> expiry in the
-- server's milliseconds) for the token ARGV[1], with a TTL of ARGV[2] ms,
-- unless ARGV[3] live places are taken. Expired places (expiry <= now) are
-- dropped first, by the server's own clock, so every holder agrees on them.
-- Returns 1 when a place was taken, 2 when the token already held a live one
-- (its expiry is reset: a retry after a lost reply), 0 when full. The key
-- expires with its latest place.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", string.format("%.0f", now))
local reply = 1
if redis.call("ZSCORE", KEYS[1], ARGV[1]) then
  reply = 2
elseif redis.call("ZCARD", KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call("ZADD", KEYS[1], string.format("%.0f", now + tonumber(ARGV[2])), ARGV[1])
local last = redis.call("ZRANGE", KEYS[1], -1, -1, "WITHSCORES")
redis.call("PEXPIREAT", KEYS[1], last[2])
return reply
