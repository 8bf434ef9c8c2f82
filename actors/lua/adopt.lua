-- Adopt tasks another node hands over (queued, never started): run by the receiving node, so
-- ownership moves only by an atomic step of the new owner. A task is adopted only if the sender
-- still owns it under the epoch it named, and it is not pinned to a node.
-- KEYS[1] owned set of the sender, KEYS[2] owned set of the receiver
-- ARGV[1] key prefix, ARGV[2] receiver node id, ARGV[3..] id, epoch pairs
-- Returns rows like claim.lua for the adopted tasks.
local out = {}
for i = 3, #ARGV, 2 do
  local id, epoch = ARGV[i], ARGV[i + 1]
  local tk = ARGV[1] .. ':task:' .. id
  local f = redis.call('HMGET', tk, 'state', 'worker', 'args', 'priority', 'attempt', 'attempts',
    'timeout', 'created', 'reply', 'deadline', 'backoff', 'backoff_cap', 'target', 'epoch')
  local pinned = f[13] and f[13] ~= '' and f[13] ~= 'any'
  if f[1] == 'queued' and f[14] == epoch and (not pinned)
      and redis.call('SREM', KEYS[1], id) == 1 then
    local new = redis.call('HINCRBY', tk, 'epoch', 1)
    redis.call('HSET', tk, 'node', ARGV[2])
    redis.call('SADD', KEYS[2], id)
    out[#out + 1] = {id, tostring(new), f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10],
      f[11], f[12], f[13]}
  end
end
return out
