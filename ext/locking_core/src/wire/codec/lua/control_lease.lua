-- A lease under the control prefix (KEYS[1]): one backfill at a time, seen
-- by `phase set/advance`. ARGV[1] = the holder's name; ARGV[2] = a TTL in ms
-- to take or keep the lease, or "0" to give it back. Only its holder keeps
-- or gives it back. Returns the holder afterwards (nil: nobody).
local holder = redis.call("GET", KEYS[1])
if ARGV[2] == "0" then
  if holder == ARGV[1] then
    redis.call("DEL", KEYS[1])
    return false
  end
  return holder
end
if not holder or holder == ARGV[1] then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
  return ARGV[1]
end
return holder
