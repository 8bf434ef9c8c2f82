-- Hand back tasks a node owns: each unfinished one goes back to its worker's pending set with a
-- new epoch, so a late completion from the old owner is fenced out.
-- Run by the node itself (stopping, recovering, or giving back what it holds no longer), or, as
-- the failover of a dead node, by any survivor.
-- KEYS[1] owned set of the node, KEYS[2] set of worker names, KEYS[3] the node's liveness lease
-- ARGV[1] key prefix, ARGV[2] batch size,
-- ARGV[3] the guard: '' for a failover (nothing moves while the lease exists: Redis is the
--   arbiter, a node that still renews its lease is alive, whatever the gossip says), else the
--   incarnation handing back (nothing moves while another holds the lease, see fenced),
-- ARGV[4] '1' when the tasks never started on this node: the attempt their claim counted is
--   given back (queued tasks handed back at a stop; claims whose answer never arrived),
-- ARGV[5..] id, epoch pairs to hand back (epoch '': any; none at all: any task, up to the batch)
-- Returns the number of ids taken from the owned set (0 when there was nothing to take), or -1
-- when the guard held everything back.
local guard = ARGV[3]
if guard == '' then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    return -1
  end
elseif fenced(KEYS[3], guard) then
  return -1
end
local ids
if #ARGV > 4 then
  ids = {}
  for i = 5, #ARGV, 2 do
    local id, epoch = ARGV[i], ARGV[i + 1]
    local ok = epoch == '' or redis.call('HGET', ARGV[1] .. ':task:' .. id, 'epoch') == epoch
    if ok and redis.call('SREM', KEYS[1], id) == 1 then
      ids[#ids + 1] = id
    end
  end
else
  ids = redis.call('SPOP', KEYS[1], ARGV[2])
end
for _, id in ipairs(ids) do
  local tk = ARGV[1] .. ':task:' .. id
  local f = redis.call('HMGET', tk, 'state', 'worker', 'priority', 'created', 'attempt')
  if (f[1] == 'queued' or f[1] == 'running') and f[2] then
    redis.call('HINCRBY', tk, 'epoch', 1)
    redis.call('HSET', tk, 'state', 'queued', 'node', '')
    if ARGV[4] == '1' and f[1] == 'queued' and (tonumber(f[5]) or 0) > 0 then
      redis.call('HINCRBY', tk, 'attempt', -1)
    end
    make_pending(ARGV[1], id, f[2], f[3], f[4], '')
  end
end
return #ids
