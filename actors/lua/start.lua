-- Mark a task running, fenced by epoch. Starting in time lifts its deadline.
-- KEYS[1] task hash, KEYS[2] deadlines set
-- ARGV[1] epoch, ARGV[2] attempt, ARGV[3] start time, ARGV[4] events channel, ARGV[5] event,
-- ARGV[6] task id
-- Returns 1 when written, 0 when the epoch moved on (the task changed owner meanwhile).
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'running', 'attempt', ARGV[2], 'started', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
