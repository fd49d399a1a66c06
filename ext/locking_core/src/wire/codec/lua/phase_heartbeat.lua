-- Dynamic phases: read the fleet's phase (KEYS[1]) and, in the same atomic
-- step, record which phases this process (ARGV[4]) may act in: from the
-- lowest to the highest of the phase read now and ARGV[2]..ARGV[3] (the
-- phases its cache and its operations in flight still use). Reading and
-- reporting at once means an operator never sees a fleet that hides a
-- process about to act.
-- The fleet is one sorted set (KEYS[2]: process -> when its heartbeat
-- expires, on this server's clock, after ARGV[1] ms) and one hash (KEYS[3]:
-- process -> "LOW HIGH TTL_MS"), so reading it never scans the keyspace.
-- Each call forgets a few processes whose heartbeat expired.
-- A missing phase is an error, never phase 0: a destination that restarted
-- without its data must not send a fleet in phase 3 back to the source.
-- Every key shares the {locking-control} hash tag: one cluster slot.
local stored = redis.call("GET", KEYS[1])
if not stored then
  return redis.error_reply("LOCKING_NO_PHASE")
end
local phase = tonumber(stored)
if not phase then
  return redis.error_reply("LOCKING_BAD_PHASE")
end
local ttl = tonumber(ARGV[1])
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local low = math.min(phase, tonumber(ARGV[2]))
local high = math.max(phase, tonumber(ARGV[3]))
redis.call("ZADD", KEYS[2], now + ttl, ARGV[4])
redis.call("HSET", KEYS[3], ARGV[4], low .. " " .. high .. " " .. ttl)
local gone = redis.call("ZRANGEBYSCORE", KEYS[2], "-inf", now, "LIMIT", 0, 16)
if #gone > 0 then
  redis.call("ZREM", KEYS[2], unpack(gone))
  redis.call("HDEL", KEYS[3], unpack(gone))
end
-- The two keys outlive the longest heartbeat, and no more.
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  if redis.call("PTTL", key) < ttl then
    redis.call("PEXPIRE", key, ttl)
  end
end
return phase
