-- Run a finished task again (`bgnode retry`): a new epoch, attempts counted from zero, out of the
-- dead set, kept until it finishes again; queued at once (or deferred while its key is full).
-- KEYS[1] task hash
-- ARGV[1] key prefix, ARGV[2] task id, ARGV[3] task channel, ARGV[4] events channel
-- Returns 1 queued, 2 deferred, 0 no such task, -1 not finished (nothing to retry).
local prefix, id, now = ARGV[1], ARGV[2], redis_ms()
local f = redis.call('HMGET', KEYS[1], 'state', 'worker', 'priority', 'key', 'klimit', 'every', 'cron')
if not f[1] then
  return 0
end
if not is_terminal(f[1]) or (f[6] and f[6] ~= '') or (f[7] and f[7] ~= '') then
  return -1
end
redis.call('ZREM', prefix .. ':dead', id)
redis.call('ZREM', prefix .. ':finished', id)
redis.call('PERSIST', KEYS[1])
redis.call('HDEL', KEYS[1], 'error', 'result', 'finished', 'started', 'cancel', 'retry_at')
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'attempt', '0', 'node', '', 'created', now)
local state = admit(prefix, id, {worker = f[2], priority = f[3], created = now, key = f[4],
  klimit = f[5]}, ARGV[3], ARGV[4], now)
if state == 'deferred' then
  return 2
end
return 1
