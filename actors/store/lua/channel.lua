-- Claim a task channel for one cluster. A channel belongs to the cluster whose key prefix is
-- recorded under KEYS[1]; a node of another cluster may take it over only when no member of
-- the recorded cluster holds a liveness lease (that cluster is gone).
-- KEYS[1] the channel's owner key; ARGV[1] this cluster's key prefix
-- Returns '' when the channel is this cluster's now, else the live owner's prefix.
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  for _, member in ipairs(redis.call('SMEMBERS', owner .. ':members')) do
    if redis.call('EXISTS', owner .. ':node:' .. member .. ':alive') == 1 then
      return owner
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return ''
