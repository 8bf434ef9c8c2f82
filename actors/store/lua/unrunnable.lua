-- Expire waiting tasks that no live node has been able to run for `limit` ms: tasks of a worker
-- no live node offers, and tasks pinned to a node that is not live or does not offer their
-- worker. The rule is `decide::runnable::unrunnable`: a live node is a member whose liveness
-- lease exists; it offers the workers its report lists, or any worker while it has no report
-- (or a report listing none: the one written before its worker pools are up).
-- Each pending set that no live node can serve has a clock in `{prefix}:unrunnable`
-- (`{since}:{checked}`, ms): started when a sweep first finds it so, dropped when a node able to
-- serve it is live again or the set is empty, and restarted when no sweep checked it for `idle`
-- ms (no node was running to watch). A task expires once both the clock of its set and the task
-- itself (created, due, or retried) are older than `limit`. Times are Redis's.
-- Safe when several nodes run it: it is atomic, takes only queued tasks that no node owns, and
-- closes them with `close_unrun` (which bumps the epoch).
-- KEYS[1] the clocks hash, KEYS[2] the worker names set, KEYS[3] the pinned sets' set
-- ARGV[1] key prefix, ARGV[2] limit (ms), ARGV[3] idle (ms), ARGV[4] most tasks examined,
-- ARGV[5] result ttl (ms), ARGV[6] task channel, ARGV[7] events channel,
-- ARGV[8] the limit as people write it ("1h")
-- Returns {the worker of each task expired, pending sets that no live node can serve}.
local prefix = ARGV[1]
local limit, idle, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local clocks = KEYS[1]

-- The live nodes: node -> set of workers, or true while it has no report (offers any).
local live = {}
for _, m in ipairs(redis.call('SMEMBERS', prefix .. ':members')) do
  if redis.call('EXISTS', prefix .. ':node:' .. m .. ':alive') == 1 then
    live[m] = true
    local report = redis.call('GET', prefix .. ':node:' .. m .. ':info')
    if report then
      local ok, info = pcall(cjson.decode, report)
      if ok and type(info) == 'table' and type(info.workers) == 'table'
          and next(info.workers) ~= nil then
        live[m] = info.workers
      end
    end
  end
end

local function offers(node, worker)
  local w = live[node]
  if w == nil then
    return nil
  end
  return w == true or w[worker] ~= nil
end

-- Why no live node can serve `worker` (pinned to `node`, or any), or nil when one can.
local function reason(worker, node)
  if node then
    local o = offers(node, worker)
    if o == nil then
      return 'node `' .. node .. '` is not live'
    elseif not o then
      return 'node `' .. node .. '` does not offer worker `' .. worker .. '`'
    end
    return nil
  end
  for n, _ in pairs(live) do
    if offers(n, worker) then
      return nil
    end
  end
  return 'no live node offers worker `' .. worker .. '`'
end

local expired, blocked = {}, 0

-- Check one pending set; expire what waited too long in it.
local function sweep(set, worker, node)
  if redis.call('ZCARD', set) == 0 then
    redis.call('HDEL', clocks, set)
    return false
  end
  local why = reason(worker, node)
  if not why then
    redis.call('HDEL', clocks, set)
    return true
  end
  blocked = blocked + 1
  local since = now
  local clock = redis.call('HGET', clocks, set)
  if clock then
    local s, checked = string.match(clock, '^(%d+):(%d+)$')
    if s and now - tonumber(checked) <= idle then
      since = tonumber(s)
    end
  end
  redis.call('HSET', clocks, set, string.format('%.0f:%.0f', since, now))
  if now - since < limit or budget <= 0 then
    return true
  end
  local message = 'cannot run: ' .. why .. ' (waited longer than [tasks] unrunnable_after, '
    .. ARGV[8] .. ')'
  for _, id in ipairs(redis.call('ZRANGE', set, 0, budget - 1)) do
    budget = budget - 1
    local f = read_task(prefix, id, {'state', 'node', 'worker', 'created', 'run_at', 'retry_at'},
      set, ARGV[7], now)
    if f and f[1] == 'queued' and (not f[2] or f[2] == '') and f[3] == worker then
      local from = since
      for i = 4, 6 do
        from = math.max(from, tonumber(f[i]) or 0)
      end
      if now - from >= limit then
        expired[#expired + 1] = close_unrun(prefix, id, 'expired', message,
          string.format('%.0f', now), ARGV[5], ARGV[6], ARGV[7])
      end
    end
  end
  return true
end

for _, worker in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  sweep(prefix .. ':pending:' .. worker, worker, nil)
end
for _, entry in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local worker, node = string.match(entry, '^([^@]+)@(.+)$')
  if worker and not sweep(prefix .. ':pending:' .. entry, worker, node) then
    redis.call('SREM', KEYS[3], entry)
  end
end
return {expired, blocked}
