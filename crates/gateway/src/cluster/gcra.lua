-- GCRA (the generic cell rate algorithm) as one atomic Redis script, so a
-- caller's limit holds across every node (issue 16, T02/T03).
--
-- After rwz/redis-gcra's vendor/perform_gcra_ratelimit.lua (Pavel
-- Pravosud, MIT, https://github.com/rwz/redis-gcra), itself after Brandur
-- Leach's redis-cell (https://github.com/brandur/redis-cell): the rate
-- limiter of the Redis ecosystem. Same algorithm, integers in microseconds
-- instead of float seconds, the clock Redis's own (one clock for every
-- node), and only the answer the gateway needs. One call checks every
-- scope of a request (the app's limit and the function's): one round trip,
-- and all or nothing, so a request refused by one scope is counted by none.
--
-- KEYS[i]      the caller's key in scope i
-- ARGV[2i-1]   scope i's emission interval: microseconds between two
--              requests at the rate
-- ARGV[2i]     scope i's burst: requests allowed at once
-- Returns {1, 0} when the request is allowed (and counted in every scope),
-- else {0, microseconds until every scope would allow one}.

-- Microseconds since 2017-01-01: exact in a Lua number (a double) for
-- centuries.
local time = redis.call('TIME')
local now = (tonumber(time[1]) - 1483228800) * 1000000 + tonumber(time[2])

local new_tats = {}
local wait = 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = now
  local stored = redis.call('GET', KEYS[i])
  if stored then
    tat = math.max(tonumber(stored) or now, now)
  end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if now < allow_at then
    wait = math.max(wait, allow_at - now)
  end
  new_tats[i] = new_tat
end
if wait > 0 then
  return {0, wait}
end

-- Kept until the caller's allowance is whole again, then forgotten.
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%d', new_tats[i]), 'PX',
    math.floor((new_tats[i] - now) / 1000) + 1)
end
return {1, 0}
