-- A node joins: it becomes a member, and gets its occurrence of every broadcast still running
-- (target `all` reaches nodes that join while it is pending).
-- KEYS[1] the node's liveness lease
-- ARGV[1] key prefix, ARGV[2] node id, ARGV[3] task channel, ARGV[4] events channel,
-- ARGV[5] the joining incarnation (not while another holds the lease, see fenced)
-- Returns the number of broadcasts this node joined, or -1 when fenced.
local prefix, node, now = ARGV[1], ARGV[2], redis_ms()
if fenced(KEYS[1], ARGV[5]) then
  return -1
end
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
