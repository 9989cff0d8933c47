-- admit.lua: one atomic admission decision (deny-list, fixed-window limits, budget).
--
-- KEYS: nd deny keys, then nl limit counters, then (if budget) budget hash,
--       reservation zset, reservation amounts hash, the project's intents hash and
--       intents due zset (all of one project: one cluster slot, but the limits' keys).
-- ARGV: 1 nd, 2 nl, 3 has_budget (0/1), 4 now_ms, 5 mode ("hit" counts, "peek" only checks),
--       then per limit: limit, window_s;
--       then (if budget) request_id, worst_nano, budget_nano, reservation_expiry_ms, max_cleanup,
--       intent (what settles the call at its bound if its instance dies; empty = none).
-- Returns {0, limit, remaining, reset_s} | {1, deny_index} | {2, limit_index, limit, reset_s}
--       | {3, remaining_nano} | {4} (the month's spend is missing: rebuild it first).
local nd = tonumber(ARGV[1])
local nl = tonumber(ARGV[2])
local has_budget = ARGV[3] == "1"
local now_ms = tonumber(ARGV[4])
local mode = ARGV[5]

for i = 1, nd do
  if redis.call("EXISTS", KEYS[i]) == 1 then
    return {1, i}
  end
end

-- Check every limit before counting any, so a refused call consumes nothing.
local best_limit, best_remaining, best_reset = -1, -1, -1
for i = 1, nl do
  local key = KEYS[nd + i]
  local limit = tonumber(ARGV[5 + 2 * i - 1])
  local window = tonumber(ARGV[5 + 2 * i])
  local used = tonumber(redis.call("GET", key) or "0")
  local ttl = redis.call("TTL", key)
  if ttl < 0 then ttl = window end
  if used >= limit then
    return {2, i, limit, ttl}
  end
  local remaining = limit - used - 1
  if best_remaining < 0 or remaining < best_remaining then
    best_limit, best_remaining, best_reset = limit, remaining, ttl
  end
end

if has_budget then
  local base = 5 + 2 * nl
  local budget_key, resv_key, amounts_key = KEYS[nd + nl + 1], KEYS[nd + nl + 2], KEYS[nd + nl + 3]
  local request_id = ARGV[base + 1]
  local worst = tonumber(ARGV[base + 2])
  local budget = tonumber(ARGV[base + 3])
  local expiry = tonumber(ARGV[base + 4])
  local max_cleanup = tonumber(ARGV[base + 5])
  local intent = ARGV[base + 6]
  local intents_key, due_key = KEYS[nd + nl + 4], KEYS[nd + nl + 5]

  -- Release reservations of calls that died (their deadline passed without a settle). A
  -- call with an intent may have reached the upstream: it stays reserved until the
  -- reconciler settles it at its bound.
  local stale = redis.call("ZRANGEBYSCORE", resv_key, "-inf", now_ms, "LIMIT", 0, max_cleanup)
  for _, rid in ipairs(stale) do
    if redis.call("HEXISTS", intents_key, rid) == 0 then
      local amount = redis.call("HGET", amounts_key, rid)
      if amount then
        redis.call("HINCRBY", budget_key, "reserved", -tonumber(amount))
        redis.call("HDEL", amounts_key, rid)
      end
      redis.call("ZREM", resv_key, rid)
    end
  end

  local spent = redis.call("HGET", budget_key, "spent")
  if not spent then
    return {4}
  end
  spent = tonumber(spent)
  local reserved = tonumber(redis.call("HGET", budget_key, "reserved") or "0")
  if spent + reserved + worst > budget then
    return {3, budget - spent - reserved}
  end
  if mode == "hit" then
    redis.call("HINCRBY", budget_key, "reserved", worst)
    redis.call("HSET", amounts_key, request_id, worst)
    redis.call("ZADD", resv_key, expiry, request_id)
    if intent ~= "" then
      redis.call("HSET", intents_key, request_id, intent)
      redis.call("ZADD", due_key, expiry, request_id)
    end
  end
end

if mode == "hit" then
  for i = 1, nl do
    local key = KEYS[nd + i]
    local window = tonumber(ARGV[5 + 2 * i])
    if redis.call("INCR", key) == 1 then
      redis.call("EXPIRE", key, window)
    end
  end
end
return {0, best_limit, best_remaining, best_reset}
