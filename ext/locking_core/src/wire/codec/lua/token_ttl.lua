-- Remaining TTL of KEYS[1] in milliseconds while it holds our token (ARGV[1]).
-- Returns -2 when the key is absent or holds another token, -1 when it has no TTL.
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PTTL", KEYS[1])
end
return -2
