-- The failed-authentication back-off (T03) shared by every node (issue
-- 16): one failure from one client network, counted atomically, on
-- Redis's clock. The same rules as the node-local back-off
-- (`authn/backoff.rs`), with the same GCRA as `gcra.lua` for its two
-- buckets: failures beyond the allowance earn a strike, and a strike
-- starts a penalty that doubles with every strike held; strikes come back
-- one per decay period.
--
-- KEYS[1]  the allowance's GCRA state (a TAT, microseconds)
-- KEYS[2]  the strikes' GCRA state (a TAT, microseconds)
-- KEYS[3]  the penalty: present (with its TTL) while the client is shut out
-- ARGV[1]  allowance: microseconds for one failure to come back
-- ARGV[2]  allowance: failures allowed at once (the per-minute allowance)
-- ARGV[3]  decay: microseconds for one strike to come back
-- ARGV[4]  strikes held at most
-- ARGV[5]  the first penalty, milliseconds
-- ARGV[6]  the longest penalty, milliseconds
-- Returns the penalty that starts now, in milliseconds, or 0 (within the
-- allowance: no penalty).
local time = redis.call('TIME')
local now = (tonumber(time[1]) - 1483228800) * 1000000 + tonumber(time[2])

-- One GCRA step (as in gcra.lua); the new TAT if the cell conforms (and
-- is counted), else nil.
local function gcra(key, interval, burst)
  local tat = now
  local stored = redis.call('GET', key)
  if stored then
    tat = math.max(tonumber(stored) or now, now)
  end
  local new_tat = tat + interval
  if now < new_tat - interval * burst then
    return nil
  end
  redis.call('SET', key, string.format('%d', new_tat), 'PX',
    math.floor((new_tat - now) / 1000) + 1)
  return new_tat
end

if gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])) then
  return 0
end

local decay = tonumber(ARGV[3])
local most = tonumber(ARGV[4])
-- Strikes held, this one included, after what has decayed.
local strikes = most
local strike_tat = gcra(KEYS[2], decay, most)
if strike_tat then
  strikes = math.min(math.ceil((strike_tat - now) / decay), most)
end

local penalty = math.min(tonumber(ARGV[5]) * 2 ^ math.min(strikes - 1, 20),
  tonumber(ARGV[6]))
penalty = math.max(math.floor(penalty), 1)
redis.call('SET', KEYS[3], '1', 'PX', penalty)
return penalty
