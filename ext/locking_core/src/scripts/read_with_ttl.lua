-- Value and remaining TTL of KEYS[1], read atomically, for backfill.
-- Returns false unless the key is a string (queue data is never touched),
-- else {value, pttl} where pttl is -1 for a key without expiry.
if redis.call("TYPE", KEYS[1]).ok ~= "string" then
  return false
end
return {redis.call("GET", KEYS[1]), redis.call("PTTL", KEYS[1])}
