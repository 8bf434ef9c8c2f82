-- An archiver wrote the first N rows of its node's outbox: they go. Only while this incarnation
-- holds the node's lease (see fenced): an old process of the node that wakes up must not drop
-- rows a new one staged since.
-- KEYS[1] this node's outbox, KEYS[2] the node's liveness lease
-- ARGV[1] N, ARGV[2] the incarnation
-- Returns 1, or 0 when fenced out.
if fenced(KEYS[2], ARGV[2]) then
  return 0
end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[1]), -1)
return 1
