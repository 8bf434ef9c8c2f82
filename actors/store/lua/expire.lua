-- Expire tasks whose deadline passed before they started. A task already claimed by a node
-- gets `grace` ms more, so the node's own start (which checks the deadline too) can land first.
-- KEYS[1] deadlines set
-- ARGV[1] key prefix, ARGV[2] now, ARGV[3] most entries, ARGV[4] result ttl (ms),
-- ARGV[5] task channel, ARGV[6] events channel, ARGV[7] grace (ms)
-- Returns the number of tasks expired.
local prefix, now = ARGV[1], tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local n = 0
for i = 1, #due, 2 do
  local id, deadline = due[i], tonumber(due[i + 1])
  local f = redis.call('HMGET', prefix .. ':task:' .. id, 'state', 'node')
  if (not f[1]) or is_terminal(f[1]) or f[1] == 'running' then
    redis.call('ZREM', KEYS[1], id)
  elseif f[1] == 'queued' and f[2] and f[2] ~= '' and now < deadline + tonumber(ARGV[7]) then
    redis.call('ZADD', KEYS[1], string.format('%.0f', deadline + tonumber(ARGV[7])), id)
  else
    close_unrun(prefix, id, 'expired', 'deadline passed before the task started', ARGV[2],
      ARGV[4], ARGV[5], ARGV[6])
    n = n + 1
  end
end
return n
