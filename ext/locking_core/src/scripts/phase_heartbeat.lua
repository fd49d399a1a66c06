-- Dynamic phases: read the fleet's phase (KEYS[1]) and, in the same atomic
-- step, record which phases this process may act in (KEYS[2], a heartbeat
-- that expires after ARGV[1] ms): from the lowest to the highest of the phase
-- read now and ARGV[2]..ARGV[3], the phases its cache and its operations in
-- flight still use. Reading and reporting at once means an operator never
-- sees a fleet that hides a process about to act.
-- A missing phase is an error, never phase 0: a destination that restarted
-- without its data must not send a fleet in phase 3 back to the source.
-- Both keys share the {locking-control} hash tag: one cluster slot.
local stored = redis.call("GET", KEYS[1])
if not stored then
  return redis.error_reply("LOCKING_NO_PHASE")
end
local phase = tonumber(stored)
if not phase then
  return redis.error_reply("LOCKING_BAD_PHASE")
end
local low = math.min(phase, tonumber(ARGV[2]))
local high = math.max(phase, tonumber(ARGV[3]))
redis.call("SET", KEYS[2], low .. " " .. high .. " " .. ARGV[1], "PX", ARGV[1])
return phase
