-- An archiver takes rows to write from its node's own outbox, where the node's final writes
-- stage their rows and where rows it took before and did not acknowledge still are. When that
-- holds fewer than N, rows from the head of the cluster's outbox (staged by scripts that end
-- tasks no archiving node held: cancels, expiries, broadcasts, the ends of nodes without an
-- archive) are moved to its tail first, in the same step, so that a node that dies with them
-- leaves them to a survivor (`leave.lua` moves the whole list back).
-- KEYS[1] the cluster's outbox, KEYS[2] this node's outbox
-- ARGV[1] N
-- Returns up to N rows from the head of this node's outbox; `archive_ack.lua` removes them once
-- written.
local want = tonumber(ARGV[1])
local held = redis.call('LLEN', KEYS[2])
if held < want then
  local rows = redis.call('LPOP', KEYS[1], want - held)
  if rows then
    redis.call('RPUSH', KEYS[2], unpack(rows))
  end
end
return redis.call('LRANGE', KEYS[2], 0, want - 1)
