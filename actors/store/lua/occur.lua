-- Create the occurrence of a recurring template due at `due` and move the template to its next
-- time, only if the template is still due at `due` (compare-and-set): two schedulers racing
-- for one occurrence cannot both create it, and its id (template@due) is the same on every node.
-- KEYS[1] scheduled set, KEYS[2] template hash
-- ARGV[1] key prefix, ARGV[2] template id, ARGV[3] due (ms), ARGV[4] next due ('' = never),
-- ARGV[5] task channel, ARGV[6] events channel
-- Returns 1 created, 0 someone else advanced the template (or it was cancelled).
local prefix, tid, due, now = ARGV[1], ARGV[2], ARGV[3], redis_ms()
local score = redis.call('ZSCORE', KEYS[1], tid)
if (not score) or tonumber(score) ~= tonumber(due) then
  return 0
end
local t = redis.call('HMGET', KEYS[2], 'state', 'worker', 'args', 'priority', 'attempts', 'timeout',
  'key', 'klimit', 'result_key', 'backoff', 'backoff_cap', 'deadline_in')
if t[1] ~= 'scheduled' then
  redis.call('ZREM', KEYS[1], tid)
  return 0
end
local oid = tid .. '@' .. due
local ok = prefix .. ':task:' .. oid
if redis.call('EXISTS', ok) == 0 then
  redis.call('HSET', ok, 'worker', t[2], 'args', t[3] or 'null', 'priority', t[4] or '0',
    'attempts', t[5] or '0', 'attempt', '0', 'timeout', t[6] or '0', 'reply', '0', 'state', 'queued',
    'node', '', 'epoch', '0', 'created', now, 'template', tid)
  for i, name in ipairs({'key', 'klimit', 'result_key', 'backoff', 'backoff_cap'}) do
    if t[6 + i] and t[6 + i] ~= '' then
      redis.call('HSET', ok, name, t[6 + i])
    end
  end
  if t[12] and t[12] ~= '' then
    local deadline = string.format('%.0f', tonumber(due) + tonumber(t[12]))
    redis.call('HSET', ok, 'deadline', deadline)
    redis.call('ZADD', prefix .. ':deadlines', deadline, oid)
  end
  redis.call('HINCRBY', prefix .. ':stats', 'accepted', 1)
  admit(prefix, oid, {worker = t[2], priority = t[4], created = now, key = t[7], klimit = t[8]},
    ARGV[5], ARGV[6], now)
end
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[1], tid)
  redis.call('HSET', KEYS[2], 'state', 'done', 'finished', now)
else
  redis.call('ZADD', KEYS[1], 'XX', ARGV[4], tid)
  redis.call('HSET', KEYS[2], 'run_at', ARGV[4], 'fired', due)
end
return 1
