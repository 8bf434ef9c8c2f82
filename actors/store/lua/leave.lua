-- A node leaves the membership (it stopped, or it was failed over): its unfinished occurrences
-- of broadcasts are cancelled, since a broadcast runs once per live node, and each broadcast is
-- checked for completion. The rows of the archive it had taken and not yet written go back to
-- the head of the cluster's outbox, for another node's archiver.
-- KEYS[1] the node's liveness lease
-- ARGV[1] key prefix, ARGV[2] node id, ARGV[3] result ttl (ms), ARGV[4] task channel,
-- ARGV[5] events channel, ARGV[6] the guard, as in release.lua: '' when a survivor removes a
-- dead node (only while its lease is absent), else the leaving incarnation (not while another
-- incarnation of the id holds the lease)
-- Returns 1 when the node was a member, 0 when it was not, -1 when the guard held it back.
local prefix, node, now = ARGV[1], ARGV[2], redis_ms()
if ARGV[6] == '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return -1
  end
elseif fenced(KEYS[1], ARGV[6]) then
  return -1
end
local was = redis.call('SREM', prefix .. ':members', node)
local taken = prefix .. ':archive:outbox:' .. node
while redis.call('LMOVE', taken, prefix .. ':archive:outbox', 'RIGHT', 'LEFT') do
end
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
