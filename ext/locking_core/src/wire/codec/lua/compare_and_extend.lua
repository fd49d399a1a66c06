-- Set a new TTL (ARGV[2] milliseconds) on KEYS[1] only while it holds our token (ARGV[1]).
-- Returns 1 when extended, 0 when the key is absent or holds another token.
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
