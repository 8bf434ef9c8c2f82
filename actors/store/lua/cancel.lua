-- Cancel a task. Waiting tasks (scheduled, retrying, deferred, pending) are closed here; for a
-- task a node holds (queued there or running) the record is flagged and the node is told on its
-- control channel; it stops the task and writes `cancelled` itself (a node that died meanwhile:
-- whoever claims the task next closes it instead).
-- KEYS[1] task hash
-- ARGV[1] key prefix, ARGV[2] task id, ARGV[3] result ttl (ms), ARGV[4] task channel,
-- ARGV[5] events channel
-- Returns 1 cancelled, 2 requested from the owning node, 0 no such task, -1 already finished.
local prefix, id, now = ARGV[1], ARGV[2], redis_ms()
local f = redis.call('HMGET', KEYS[1], 'state', 'node', 'target')
if not f[1] then
  return 0
end
if is_terminal(f[1]) then
  return -1
end
if f[3] == 'all' then
  -- A broadcast: close it first (so no completion check marks it done), then its occurrences.
  close_unrun(prefix, id, 'cancelled', 'cancelled', now, ARGV[3], ARGV[4], ARGV[5])
  redis.call('SREM', prefix .. ':broadcasts', id)
  for _, m in ipairs(redis.call('SMEMBERS', prefix .. ':members')) do
    local oid = id .. '@' .. m
    local g = redis.call('HMGET', prefix .. ':task:' .. oid, 'state', 'node')
    if g[1] and not is_terminal(g[1]) then
      if g[1] == 'running' or (g[1] == 'queued' and g[2] and g[2] ~= '') then
        redis.call('HSET', prefix .. ':task:' .. oid, 'cancel', '1')
        publish_json(ARGV[4] .. ':node:' .. g[2], {op = 'cancel', id = oid})
      else
        close_unrun(prefix, oid, 'cancelled', 'cancelled', now, ARGV[3], ARGV[4], ARGV[5])
      end
    end
  end
  return 1
end
if f[1] == 'running' or (f[1] == 'queued' and f[2] and f[2] ~= '') then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  publish_json(ARGV[4] .. ':node:' .. f[2], {op = 'cancel', id = id})
  return 2
end
close_unrun(prefix, id, 'cancelled', 'cancelled', now, ARGV[3], ARGV[4], ARGV[5])
return 1
