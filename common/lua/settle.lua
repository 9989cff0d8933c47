-- settle.lua: close one admitted call exactly once.
--
-- Releases the call's reservation, adds its actual cost to the month's spend (or, when the
-- spend is missing after a Redis loss, to the orphans hash the rebuild adds back), appends
-- the usage record to the ledger stream, and reports a soft
-- budget threshold crossed for the first time this month. The call's intent is deleted in
-- the same step: this script is what makes a settle and the reconciler mutually exclusive.
--
-- Exactly-once rides on the call's own state, nothing is kept after it: a reserved call
-- settles only while its reservation amount or its intent still exists (this script
-- deletes both), so a second settle of it finds neither and is a duplicate. When the
-- month's spend itself is missing (Redis lost the month), the orphans hash, keyed by
-- request id, is what tells a second settle apart until the rebuild.
--
-- KEYS: 1 budget hash, 2 reservation zset, 3 reservation amounts, 4 ledger stream,
--       5 orphans hash, 6 soft-threshold marker, 7 intents hash, 8 intents due zset
-- ARGV: 1 request_id, 2 actual_nano, 3 reserved (1: the call was admitted with a
--       reservation, 0: nothing was reserved, e.g. a cached answer), 4 soft_nano (0 = none),
--       5 soft_ttl_s, 6 the usage record (JSON; empty = none).
-- Broker-wide metrics are not counted here (they would tie every settle to one key): the
-- caller counts them in-process once the settle is not a duplicate.
-- Returns {-1} if this call was already settled, else {1, spent_nano or -1, soft_crossed}.
local rid = ARGV[1]
local actual = tonumber(ARGV[2])
local reserved = ARGV[3] == "1"
local has_spent = redis.call("HEXISTS", KEYS[1], "spent") == 1

local amount = redis.call("HGET", KEYS[3], rid)
local had_intent = redis.call("HDEL", KEYS[7], rid) == 1
if reserved and not amount and not had_intent then
  if has_spent or redis.call("HEXISTS", KEYS[5], rid) == 1 then
    return {-1}
  end
end
redis.call("ZREM", KEYS[8], rid)
if amount then
  redis.call("HINCRBY", KEYS[1], "reserved", -tonumber(amount))
  redis.call("HDEL", KEYS[3], rid)
end
redis.call("ZREM", KEYS[2], rid)

local spent = -1
local crossed = 0
if has_spent then
  spent = redis.call("HINCRBY", KEYS[1], "spent", actual)
  local soft = tonumber(ARGV[4])
  if soft > 0 and spent >= soft and redis.call("SET", KEYS[6], "1", "NX", "EX", tonumber(ARGV[5])) then
    crossed = 1
  end
elseif actual > 0 or reserved then
  redis.call("HSET", KEYS[5], rid, actual)
end

if ARGV[6] ~= "" then
  redis.call("XADD", KEYS[4], "*", "r", ARGV[6])
end
return {1, spent, crossed}
