-- settle.lua: close one admitted call exactly once.
--
-- Releases the call's reservation, adds its actual cost to the month's spend (or, when the
-- spend is missing after a Redis loss, to the orphans hash the rebuild adds back), appends
-- the usage record to the ledger stream, counts broker-wide metrics, and reports a soft
-- budget threshold crossed for the first time this month. The call's intent is deleted in
-- the same step: this script is what makes a settle and the reconciler mutually exclusive.
--
-- KEYS: 1 budget hash, 2 reservation zset, 3 reservation amounts, 4 done marker,
--       5 ledger stream, 6 orphans hash, 7 soft-threshold marker, 8 metrics hash,
--       9 intents hash, 10 intents due zset
-- ARGV: 1 request_id, 2 actual_nano, 3 done_ttl_s, 4 soft_nano (0 = none), 5 soft_ttl_s,
--       6 the usage record (JSON; empty = none), then metric field/amount pairs.
-- Returns {-1} if this call was already settled, else {1, spent_nano or -1, soft_crossed}.
local rid = ARGV[1]
local actual = tonumber(ARGV[2])
if not redis.call("SET", KEYS[4], "1", "NX", "EX", tonumber(ARGV[3])) then
  return {-1}
end
redis.call("HDEL", KEYS[9], rid)
redis.call("ZREM", KEYS[10], rid)

local amount = redis.call("HGET", KEYS[3], rid)
if amount then
  redis.call("HINCRBY", KEYS[1], "reserved", -tonumber(amount))
  redis.call("HDEL", KEYS[3], rid)
  redis.call("ZREM", KEYS[2], rid)
end

local spent = -1
local crossed = 0
if redis.call("HEXISTS", KEYS[1], "spent") == 1 then
  spent = redis.call("HINCRBY", KEYS[1], "spent", actual)
  local soft = tonumber(ARGV[4])
  if soft > 0 and spent >= soft and redis.call("SET", KEYS[7], "1", "NX", "EX", tonumber(ARGV[5])) then
    crossed = 1
  end
elseif actual > 0 then
  redis.call("HSET", KEYS[6], rid, actual)
end

for pos = 7, #ARGV, 2 do
  redis.call("HINCRBY", KEYS[8], ARGV[pos], tonumber(ARGV[pos + 1]))
end

if ARGV[6] ~= "" then
  redis.call("XADD", KEYS[5], "*", "r", ARGV[6])
end
return {1, spent, crossed}
