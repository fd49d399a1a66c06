-- Raise the TTL of KEYS[1] to ARGV[2] milliseconds, only while it holds
-- ARGV[1] and only if that is longer than what it has (backfill following a
-- renewal on the source). Never shortens, never touches another token's key.
-- Returns 1 when extended, else 0.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return 0
end
local current = redis.call("PTTL", KEYS[1])
if current >= 0 and current < tonumber(ARGV[2]) then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
