-- Mark a task running, fenced by epoch.
-- KEYS[1] task hash
-- ARGV[1] epoch, ARGV[2] attempt, ARGV[3] start time, ARGV[4] events channel, ARGV[5] event
-- Returns 1 when written, 0 when the epoch moved on (the task changed owner meanwhile).
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'running', 'attempt', ARGV[2], 'started', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
