-- Store a new task and put it on its worker's pending set, unless the id exists already.
-- KEYS[1] task hash, KEYS[2] pending set of the worker, KEYS[3] set of worker names, KEYS[4] stats
-- ARGV[1] task id, ARGV[2] worker, ARGV[3] wake channel ('' = do not publish),
-- ARGV[4] wake message, ARGV[5] events channel, ARGV[6] `available` event,
-- ARGV[7] priority, ARGV[8] created (ms), ARGV[9..] field, value pairs of the record
-- Returns 1 when stored, 0 when the id was taken (the id is the idempotency key). The wake is
-- published either way, so a client that retries after a broken pipeline still wakes a node.
local stored = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  local fields = {}
  for i = 9, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('ZADD', KEYS[2], pending_score(ARGV[7], ARGV[8]), ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'accepted', 1)
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  stored = 1
end
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return stored
