-- Dynamic phases: set the fleet's phase (KEYS[1]) to ARGV[2] only if it is
-- still ARGV[1] (the phase the operator's checks were made against), or,
-- with ARGV[1] = "none", only if no phase is set (a first set, or after the
-- destination lost its data). With ARGV[3] = "1" (a move into phase 2), not
-- while a backfill holds its lease (KEYS[2]): its copies could race phase-2
-- releases. A backfill takes the lease, then reads the phase: one of the two
-- sees the other. Returns the phase stored afterwards, -1 if none, -2 if a
-- backfill blocked the move.
local current = redis.call("GET", KEYS[1])
if (current or "none") ~= ARGV[1] then
  return tonumber(current) or -1
end
if ARGV[3] == "1" and redis.call("EXISTS", KEYS[2]) == 1 then
  return -2
end
redis.call("SET", KEYS[1], ARGV[2])
return tonumber(ARGV[2])
