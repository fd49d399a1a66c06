-- Dynamic phases: read the fleet's phase (KEYS[1], "0" when unset) and, in
-- the same atomic step, record that this process now uses it (KEYS[2], a
-- heartbeat that expires after ARGV[1] ms). Reading and reporting at once
-- means an operator never sees a fleet that hides a process about to act.
-- Both keys share the {locking-control} hash tag: one cluster slot.
local phase = redis.call("GET", KEYS[1]) or "0"
redis.call("SET", KEYS[2], phase, "PX", ARGV[1])
return tonumber(phase)
