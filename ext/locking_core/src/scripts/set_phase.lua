-- Dynamic phases: set the fleet's phase (KEYS[1]) to ARGV[2] only if it is
-- still ARGV[1] (the phase the operator's checks were made against).
-- Returns the phase stored afterwards.
local current = redis.call("GET", KEYS[1]) or "0"
if current ~= ARGV[1] then
  return tonumber(current)
end
redis.call("SET", KEYS[1], ARGV[2])
return tonumber(ARGV[2])
