-- Backfill: copies of the source's live places into the semaphore KEYS[1] on
-- the destination. ARGV[1] is the rule, then token, ms left, token, ms left,
-- ... as one read of the source gave them (at most the limit, since the
-- source never holds more).
-- - A place the destination has is raised to the copy's expiry, never lowered.
-- - A missing place is added only while every live place here is among the
--   copied ones: the destination then holds no more places than the source
--   did at that read, so never more than the limit. Otherwise a holder here
--   that the read did not see (a phase-2 acquire, or one after the read)
--   would be counted beside an added place that its token's next acquire
--   claims as "already mine", past the limit (the explorer found this).
-- The rules "set" (lowers an expiry) and "unchecked" (adds whatever is
-- here) are wrong, for the explorer's negative controls only.
-- Expired places are dropped first, by this server's clock. Returns how
-- many places were written, or -1 when the key holds something other than
-- a semaphore here (left alone).
if redis.replicate_commands then redis.replicate_commands() end
local kind = redis.call("TYPE", KEYS[1])["ok"]
if kind ~= "zset" and kind ~= "none" then
  return -1
end
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", string.format("%.0f", now))
local copied = {}
for i = 2, #ARGV - 1, 2 do
  copied[ARGV[i]] = true
end
local covered = ARGV[1] == "unchecked"
if not covered then
  covered = true
  for _, token in ipairs(redis.call("ZRANGE", KEYS[1], 0, -1)) do
    if not copied[token] then
      covered = false
      break
    end
  end
end
local written = 0
for i = 2, #ARGV - 1, 2 do
  local expiry = now + tonumber(ARGV[i + 1])
  local current = redis.call("ZSCORE", KEYS[1], ARGV[i])
  local write
  if current then
    write = ARGV[1] == "set" or tonumber(current) < expiry
  else
    write = covered
  end
  if write then
    redis.call("ZADD", KEYS[1], string.format("%.0f", expiry), ARGV[i])
    written = written + 1
  end
end
if written > 0 then
  local last = redis.call("ZRANGE", KEYS[1], -1, -1, "WITHSCORES")
  redis.call("PEXPIREAT", KEYS[1], last[2])
end
return written
