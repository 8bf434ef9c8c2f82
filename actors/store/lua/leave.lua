-- A node leaves the membership (it stopped, or it was failed over): its unfinished occurrences
-- of broadcasts are cancelled, since a broadcast runs once per live node, and each broadcast is
-- checked for completion.
-- ARGV[1] key prefix, ARGV[2] node id, ARGV[3] result ttl (ms), ARGV[4] task channel,
-- ARGV[5] events channel
-- Returns 1 when the node was a member.
local prefix, node, now = ARGV[1], ARGV[2], redis_ms()
local was = redis.call('SREM', prefix .. ':members', node)
for _, parent in ipairs(redis.call('SMEMBERS', prefix .. ':broadcasts')) do
  local oid = parent .. '@' .. node
  local st = redis.call('HGET', prefix .. ':task:' .. oid, 'state')
  if st and not is_terminal(st) and st ~= 'running' then
    close_unrun(prefix, oid, 'cancelled', 'node ' .. node .. ' left the cluster', now, ARGV[3],
      ARGV[4], ARGV[5])
  end
  broadcast_check(prefix, parent, now, ARGV[3], ARGV[4], ARGV[5])
end
return was
