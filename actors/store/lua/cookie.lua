-- Check this node's cookie against its cluster's. The hash of the cookie of the cluster under
-- one key prefix is kept in KEYS[1]; a node with another cookie may replace it only when no
-- member of the cluster holds a liveness lease (the cluster that set it is gone).
-- KEYS[1] the cookie hash key; ARGV[1] this node's cookie hash, ARGV[2] key prefix
-- Returns {'same'} or {'set'} (the cookie is the cluster's), {'replaced'} (a gone cluster's
-- cookie was replaced), or {'other', member} (a live member has another cookie).
local stored = redis.call('GET', KEYS[1])
if stored == ARGV[1] then
  return {'same'}
end
if stored then
  for _, member in ipairs(redis.call('SMEMBERS', ARGV[2] .. ':members')) do
    if redis.call('EXISTS', ARGV[2] .. ':node:' .. member .. ':alive') == 1 then
      return {'other', member}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
if stored then
  return {'replaced'}
end
return {'set'}
