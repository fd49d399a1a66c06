-- A lease under the control prefix (KEYS[1]): one backfill at a time, seen
-- by `phase set/advance`, which refuse a move into phase 2 while it exists.
-- ARGV[1] = the holder's name; ARGV[2] = a TTL in ms to take or keep the
-- lease, "0" to give it back now, or "-1" to give it back but let it live
-- out its TTL (copies of its holder may still be on the wire).
-- ARGV[3] = on a take, the exact value of a lease this holder may take over
-- ("" for none): a gone holder's, or one given back with "-1".
-- The lease is never shortened by anyone but a holder that knows every
-- copy it sent has landed: a take over keeps the TTL left if it is longer,
-- and a lease given back with "-1" keeps its TTL, marked " released=1".
-- Returns the holder afterwards (nil: nobody, or given back).
local holder = redis.call("GET", KEYS[1])
if ARGV[2] == "0" or ARGV[2] == "-1" then
  if holder ~= ARGV[1] then
    return holder
  end
  local left = redis.call("PTTL", KEYS[1])
  if ARGV[2] == "0" or left <= 0 then
    redis.call("DEL", KEYS[1])
  else
    redis.call("SET", KEYS[1], ARGV[1] .. " released=1", "PX", left)
  end
  return false
end
if not holder or holder == ARGV[1] or (ARGV[3] ~= "" and holder == ARGV[3]) then
  local ttl = tonumber(ARGV[2])
  local left = redis.call("PTTL", KEYS[1])
  if left > ttl then
    ttl = left
  end
  redis.call("SET", KEYS[1], ARGV[1], "PX", ttl)
  return ARGV[1]
end
return holder
