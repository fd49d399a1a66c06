-- Dynamic phases: set the fleet's phase (KEYS[1]) to ARGV[2] only if it is
-- still ARGV[1] (the phase the operator's checks were made against), or,
-- with ARGV[1] = "none", only if no phase is set (a first set, or after the
-- destination lost its data). Returns the phase stored afterwards, -1 if none.
local current = redis.call("GET", KEYS[1])
if (current or "none") ~= ARGV[1] then
  return tonumber(current) or -1
end
redis.call("SET", KEYS[1], ARGV[2])
return tonumber(ARGV[2])
