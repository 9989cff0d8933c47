-- failures.lua: failed-credential limits, counted before the credential is verified.
--
-- An attempt takes a slot in every counter first and gives it back once the credential
-- proves valid, so concurrent guesses cannot all pass a check before any is counted.
-- KEYS: the counters (fixed windows). ARGV: 1 mode ("take" | "refund"), then per key:
--       limit, window_s.
-- take:   {1, index, ttl_s} if a counter is at its limit (nothing counted), else {0}.
-- refund: gives one slot back to each counter still above zero; {0}.
local mode = ARGV[1]
local n = #KEYS

if mode == "refund" then
  for i = 1, n do
    local used = tonumber(redis.call("GET", KEYS[i]) or "0")
    if used > 0 then
      redis.call("DECR", KEYS[i])
    end
  end
  return {0}
end

for i = 1, n do
  local limit = tonumber(ARGV[2 * i])
  local used = tonumber(redis.call("GET", KEYS[i]) or "0")
  if used >= limit then
    local ttl = redis.call("TTL", KEYS[i])
    if ttl < 1 then ttl = tonumber(ARGV[2 * i + 1]) end
    return {1, i, ttl}
  end
end
for i = 1, n do
  if redis.call("INCR", KEYS[i]) == 1 then
    redis.call("EXPIRE", KEYS[i], tonumber(ARGV[2 * i + 1]))
  end
end
return {0}
