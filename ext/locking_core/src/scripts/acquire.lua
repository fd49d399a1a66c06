-- Token-idempotent acquire for servers older than Redis 7 (no SET .. NX GET).
-- Returns false when the key was set by this call, else the value already there,
-- which is our token on a retry and a foreign token when the lock is taken.
local current = redis.call("GET", KEYS[1])
if current then
  return current
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return false
