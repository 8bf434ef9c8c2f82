-- Record the end of a task, fenced by epoch; answer a waiting caller; let the record expire.
-- KEYS[1] task hash, KEYS[2] owned set of the node, KEYS[3] reply list, KEYS[4] stats
-- ARGV[1] epoch, ARGV[2] final state, ARGV[3] 'result' or 'error', ARGV[4] its value,
-- ARGV[5] attempt, ARGV[6] start time, ARGV[7] end time, ARGV[8] ttl in ms, ARGV[9] task id,
-- ARGV[10] events channel, ARGV[11] final event, ARGV[12] `started` event not yet published ('' none)
-- Returns 1 written, 0 stale (fenced out, counted), 2 already finished, 3 record gone.
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'state', 'reply')
if not cur[1] then
  redis.call('SREM', KEYS[2], ARGV[9])
  return 3
end
if cur[1] ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'stale', 1)
  redis.call('HINCRBY', KEYS[4], 'stale', 1)
  return 0
end
if cur[2] == 'done' or cur[2] == 'failed' then
  return 2
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], ARGV[3], ARGV[4], 'attempt', ARGV[5],
  'started', ARGV[6], 'finished', ARGV[7])
redis.call('SREM', KEYS[2], ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
if ARGV[12] ~= '' then
  redis.call('PUBLISH', ARGV[10], ARGV[12])
end
redis.call('PUBLISH', ARGV[10], ARGV[11])
if cur[3] == '1' then
  redis.call('RPUSH', KEYS[3], ARGV[11])
  redis.call('PEXPIRE', KEYS[3], ARGV[8])
end
return 1
