-- Expire tasks whose deadline passed before they started. A task already claimed by a node
-- gets `grace` ms more, so the node's own start (which checks the deadline too) can land first.
-- KEYS[1] deadlines set
-- ARGV[1] key prefix, ARGV[2] most entries, ARGV[3] result ttl (ms), ARGV[4] task channel,
-- ARGV[5] events channel, ARGV[6] grace (ms)
-- A deadline has passed when Redis's time now is beyond it. Returns the worker of each task
-- expired (the node that ran the sweep counts them).
local prefix, stamp = ARGV[1], redis_ms()
local now = tonumber(stamp)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', stamp, 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local expired = {}
for i = 1, #due, 2 do
  local id, deadline = due[i], tonumber(due[i + 1])
  local f = redis.call('HMGET', prefix .. ':task:' .. id, 'state', 'node')
  if (not f[1]) or is_terminal(f[1]) or f[1] == 'running' then
    redis.call('ZREM', KEYS[1], id)
  elseif f[1] == 'queued' and f[2] and f[2] ~= '' and now < deadline + tonumber(ARGV[6]) then
    redis.call('ZADD', KEYS[1], string.format('%.0f', deadline + tonumber(ARGV[6])), id)
  else
    expired[#expired + 1] = close_unrun(prefix, id, 'expired',
      'deadline passed before the task started', stamp, ARGV[3], ARGV[4], ARGV[5])
  end
end
return expired
