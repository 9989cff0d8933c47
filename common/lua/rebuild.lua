-- rebuild.lua: restore a month's spend after Redis lost it.
--
-- KEYS: 1 budget hash, 2 orphans hash (calls settled while the spend was missing)
-- ARGV: 1 base_nano (the ledger's sum, without the orphans), 2 ttl_s for the budget hash
-- Returns the spend now in force (another instance may have rebuilt it first).
local current = redis.call("HGET", KEYS[1], "spent")
if current then
  return tonumber(current)
end
local total = tonumber(ARGV[1])
for _, value in ipairs(redis.call("HVALS", KEYS[2])) do
  total = total + tonumber(value)
end
redis.call("HSET", KEYS[1], "spent", total)
redis.call("EXPIRE", KEYS[1], tonumber(ARGV[2]))
redis.call("DEL", KEYS[2])
return total
