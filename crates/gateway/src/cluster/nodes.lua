-- One node's heartbeat (issue 16): the nodes of one app and environment
-- are a sorted set scored by when each one's registration lapses, on
-- Redis's clock. A node that stops beating drops out after the TTL.
--
-- KEYS[1]  the set of live nodes
-- ARGV[1]  this node's id
-- ARGV[2]  TTL in milliseconds
-- Returns the number of live nodes, this one included.
local ttl = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
