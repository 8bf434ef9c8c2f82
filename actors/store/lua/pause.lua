-- Pause or resume one worker type cluster-wide. A paused worker's tasks are still accepted and
-- wait in their pending sets; no claim or adoption hands them out (see is_paused), and running
-- ones finish. Every member is told on its control channel, so it hands back the tasks of that
-- worker it holds queued (pause) or claims at once (resume); a resume also publishes the
-- worker's wake on the task channel.
-- ARGV[1] key prefix, ARGV[2] task channel, ARGV[3] worker, ARGV[4] '1' pause, '0' resume
-- Returns 1 when it changed the state, 0 when the worker already was so.
local prefix, channel, worker = ARGV[1], ARGV[2], ARGV[3]
local changed
local op
if ARGV[4] == '1' then
  changed = redis.call('SADD', prefix .. ':paused', worker)
  op = 'pause'
else
  changed = redis.call('SREM', prefix .. ':paused', worker)
  op = 'resume'
end
for _, m in ipairs(redis.call('SMEMBERS', prefix .. ':members')) do
  publish_json(channel .. ':node:' .. m, {op = op, worker = worker})
end
if op == 'resume' then
  publish_json(channel, {op = 'wake', worker = worker})
end
return changed
