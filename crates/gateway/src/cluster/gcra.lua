-- GCRA (the generic cell rate algorithm) as one atomic Redis script, so a
-- caller's limit holds across every node (issue 16, T02/T03).
--
-- After rwz/redis-gcra's vendor/perform_gcra_ratelimit.lua (Pavel
-- Pravosud, MIT, https://github.com/rwz/redis-gcra), itself after Brandur
-- Leach's redis-cell (https://github.com/brandur/redis-cell): the rate
-- limiter of the Redis ecosystem. Same algorithm, integers in microseconds
-- instead of float seconds, the clock Redis's own (one clock for every
-- node), and only the answer the gateway needs.
--
-- KEYS[1]  the caller's key in this scope
-- ARGV[1]  emission interval: microseconds between two requests at the rate
-- ARGV[2]  burst: requests allowed at once
-- Returns {1, 0} when the request is allowed (and counted), else
-- {0, microseconds until one would be}.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])

-- Microseconds since 2017-01-01: exact in a Lua number (a double) for
-- centuries.
local time = redis.call('TIME')
local now = (tonumber(time[1]) - 1483228800) * 1000000 + tonumber(time[2])

local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = math.max(tonumber(stored) or now, now)
end

local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, allow_at - now}
end

-- Kept until the caller's allowance is whole again, then forgotten.
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
  math.floor((new_tat - now) / 1000) + 1)
return {1, 0}
