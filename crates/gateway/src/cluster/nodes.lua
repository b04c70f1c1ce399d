-- One node's heartbeat (issue 16): the nodes of one app and environment
-- are a sorted set scored by when each one's registration lapses, on
-- Redis's clock. A node that stops beating drops out after the TTL, and
-- its load with it.
--
-- Each node with a dynamic throttle also publishes its load (T01): the
-- throttle's signals (CPU, memory, in-flight), in millionths, in a hash
-- next to the set. Only the loads of live nodes count; a lapsed node's
-- is deleted here.
--
-- KEYS[1]  the set of live nodes
-- KEYS[2]  the nodes' loads (a hash: node id -> "cpu:memory:in_flight")
-- ARGV[1]  this node's id
-- ARGV[2]  TTL in milliseconds
-- ARGV[3]  this node's load "cpu:memory:in_flight", or "" (no throttle)
-- Returns {live nodes (this one included), nodes reporting a load, and
-- the sums of their CPU, memory and in-flight signals, in millionths}.
local ttl = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 2)

if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
else
  redis.call('HDEL', KEYS[2], ARGV[1])
end
local reporting, cpu, memory, in_flight = 0, 0, 0, 0
local loads = redis.call('HGETALL', KEYS[2])
for i = 1, #loads, 2 do
  local id, value = loads[i], loads[i + 1]
  if redis.call('ZSCORE', KEYS[1], id) then
    local c, m, f = string.match(value, '^(%d+):(%d+):(%d+)$')
    if c then
      reporting = reporting + 1
      cpu = cpu + tonumber(c)
      memory = memory + tonumber(m)
      in_flight = in_flight + tonumber(f)
    end
  else
    redis.call('HDEL', KEYS[2], id)
  end
end
redis.call('PEXPIRE', KEYS[2], ttl * 2)
return {redis.call('ZCARD', KEYS[1]), reporting, cpu, memory, in_flight}
