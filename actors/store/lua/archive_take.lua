-- An archiver takes rows to write: this node's own outbox when it still holds rows (a batch
-- whose write was not acknowledged: a retry, or what a previous process of this node left),
-- else up to N rows from the head of the cluster's outbox, moved into its own in the same step
-- so that a node that dies with them leaves them to a survivor (`leave.lua` moves them back).
-- KEYS[1] the cluster's outbox, KEYS[2] this node's outbox
-- ARGV[1] N
-- Returns the rows.
local held = redis.call('LRANGE', KEYS[2], 0, -1)
if #held > 0 then
  return held
end
local rows = redis.call('LPOP', KEYS[1], tonumber(ARGV[1]))
if not rows then
  return {}
end
redis.call('RPUSH', KEYS[2], unpack(rows))
return rows
