-- Hand back tasks a node owns: each unfinished one goes back to its worker's pending set with a
-- new epoch, so a late completion from the old owner is fenced out.
-- Also the failover of a dead node, run by any survivor: then KEYS[3] is the dead node's liveness
-- lease, and nothing moves while it exists (Redis is the arbiter: a node that still renews its
-- lease is alive, whatever the gossip says).
-- KEYS[1] owned set of the node, KEYS[2] set of worker names, KEYS[3] (failover) its lease
-- ARGV[1] key prefix, ARGV[2] batch size, ARGV[3..] ids to hand back (none: any, up to the batch)
-- Returns the number of ids taken from the owned set (0 when there was nothing to take), or -1
-- when the lease of KEYS[3] exists.
if #KEYS >= 3 and redis.call('EXISTS', KEYS[3]) == 1 then
  return -1
end
local ids
if #ARGV > 2 then
  ids = {}
  for i = 3, #ARGV do
    if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then
      ids[#ids + 1] = ARGV[i]
    end
  end
else
  ids = redis.call('SPOP', KEYS[1], ARGV[2])
end
for _, id in ipairs(ids) do
  local tk = ARGV[1] .. ':task:' .. id
  local f = redis.call('HMGET', tk, 'state', 'worker', 'priority', 'created')
  if (f[1] == 'queued' or f[1] == 'running') and f[2] then
    redis.call('HINCRBY', tk, 'epoch', 1)
    redis.call('HSET', tk, 'state', 'queued', 'node', '')
    make_pending(ARGV[1], id, f[2], f[3], f[4], '')
  end
end
return #ids
