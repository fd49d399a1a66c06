-- Token-idempotent acquire for servers older than Redis 7 (no SET .. NX GET),
-- also the backfill's mirror there. Returns false when the key was set by
-- this call, else the value already there, which is our token on a retry and
-- a foreign token when the lock is taken. ARGV[2]: a TTL in ms, or absent
-- for none (a mirrored lock without expiry).
local current = redis.call("GET", KEYS[1])
if current then
  return current
end
if ARGV[2] then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
else
  redis.call("SET", KEYS[1], ARGV[1])
end
return false
