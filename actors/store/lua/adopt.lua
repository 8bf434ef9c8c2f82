-- Adopt tasks another node hands over (queued, never started): run by the receiving node, so
-- ownership moves only by an atomic step of the new owner. A task is adopted only if the sender
-- still owns it under the epoch it named, and it is not pinned to a node.
-- KEYS[1] owned set of the sender, KEYS[2] owned set of the receiver
-- ARGV[1] key prefix, ARGV[2] receiver node id, ARGV[3..] id, epoch pairs
-- Returns one row per adopted task (see take_ownership).
local out = {}
for i = 3, #ARGV, 2 do
  local id, epoch = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', ARGV[1] .. ':task:' .. id, unpack(TASK_ROW))
  local pinned = f[13] and f[13] ~= '' and f[13] ~= 'any'
  if f[1] == 'queued' and f[15] == epoch and (not pinned)
      and redis.call('SREM', KEYS[1], id) == 1 then
    out[#out + 1] = take_ownership(ARGV[1], id, f, ARGV[2], KEYS[2])
  end
end
return out
