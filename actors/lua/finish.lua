-- Record how an attempt ended, fenced by epoch.
-- KEYS[1] task hash, KEYS[2] owned set of the node
-- ARGV[1] epoch, ARGV[2] new state: done, failed, dead, cancelled, expired or retrying,
-- ARGV[3] result JSON (done) or error message, ARGV[4] attempt, ARGV[5] start time,
-- (attempt and start time are not written when the start time is 0: the attempt never began),
-- ARGV[6] now, ARGV[7] result ttl (ms), ARGV[8] task id, ARGV[9] events channel,
-- ARGV[10] the event of this transition, ARGV[11] the `started` event if not yet published
-- ('' none), ARGV[12] the `error` event published before `retry` or `dead` ('' none),
-- ARGV[13] key prefix, ARGV[14] task channel, ARGV[15] retry time (ms, retrying only),
-- ARGV[16] ttl of dead tasks (ms)
-- Returns 1 written, 0 stale (fenced out, counted), 2 already finished, 3 record gone.
local prefix, id, now = ARGV[13], ARGV[8], ARGV[6]
local state = ARGV[2]
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'state', 'reply', 'key', 'result_key', 'parent')
if not cur[1] then
  redis.call('SREM', KEYS[2], id)
  return 3
end
if cur[1] ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'stale', 1)
  redis.call('HINCRBY', prefix .. ':stats', 'stale', 1)
  return 0
end
if is_terminal(cur[2]) or cur[2] == 'retrying' then
  return 2
end
redis.call('SREM', KEYS[2], id)
if ARGV[11] ~= '' then
  redis.call('PUBLISH', ARGV[9], ARGV[11])
end
if ARGV[12] ~= '' then
  redis.call('PUBLISH', ARGV[9], ARGV[12])
end
if ARGV[5] ~= '0' then
  redis.call('HSET', KEYS[1], 'attempt', ARGV[4], 'started', ARGV[5])
end
if state == 'retrying' then
  -- The owner gives the task up until it is due again: a new epoch fences the old attempt.
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('HSET', KEYS[1], 'state', 'retrying', 'error', ARGV[3], 'node', '',
    'retry_at', ARGV[15])
  redis.call('ZADD', prefix .. ':scheduled', ARGV[15], id)
  redis.call('HINCRBY', prefix .. ':stats', 'retried', 1)
  redis.call('PUBLISH', ARGV[9], ARGV[10])
  publish_json(ARGV[14], {op = 'schedule', due = tonumber(ARGV[15])})
  return 1
end
local slot = 'error'
if state == 'done' then
  slot = 'result'
end
redis.call('HSET', KEYS[1], 'state', state, slot, ARGV[3], 'finished', now)
redis.call('HDEL', KEYS[1], 'cancel')
redis.call('ZREM', prefix .. ':deadlines', id)
free_slot(prefix, cur[4], id, ARGV[14], ARGV[9], now)
local ttl = ARGV[7]
if state == 'dead' then
  redis.call('ZADD', prefix .. ':dead', now, id)
  ttl = ARGV[16]
end
if state == 'done' and cur[5] and cur[5] ~= '' then
  redis.call('SET', prefix .. ':result:' .. cur[5], ARGV[3], 'PX', ARGV[7])
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('HINCRBY', prefix .. ':stats', state, 1)
redis.call('PUBLISH', ARGV[9], ARGV[10])
if cur[3] == '1' then
  answer(prefix, id, ARGV[10], ttl)
end
if cur[6] and cur[6] ~= '' then
  broadcast_check(prefix, cur[6], now, ARGV[7], ARGV[14], ARGV[9])
end
return 1
