-- A node joins: it becomes a member, and gets its occurrence of every broadcast still running
-- (target `all` reaches nodes that join while it is pending).
-- ARGV[1] key prefix, ARGV[2] node id, ARGV[3] task channel, ARGV[4] events channel
-- Returns the number of broadcasts this node joined.
local prefix, node, now = ARGV[1], ARGV[2], redis_ms()
redis.call('SADD', prefix .. ':members', node)
local n = 0
for _, parent in ipairs(redis.call('SMEMBERS', prefix .. ':broadcasts')) do
  local st = redis.call('HGET', prefix .. ':task:' .. parent, 'state')
  if (not st) or is_terminal(st) then
    redis.call('SREM', prefix .. ':broadcasts', parent)
  else
    spawn_occurrence(prefix, parent, node, now, ARGV[3], ARGV[4])
    n = n + 1
  end
end
return n
