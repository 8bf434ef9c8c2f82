-- Store new tasks, each unless its id exists already (the id is the idempotency key). One call
-- stores a whole batch; each task is stored on its own (one that fails is reported, the others
-- are stored). Its times are Redis's: `created` is now, and a delay or deadline counts from now.
-- ARGV[1] key prefix, ARGV[2] task channel, ARGV[3] events channel, ARGV[4] key limit,
-- ARGV[5] key policy ('reject' or 'defer'); then per task:
--   id, worker, wake ('1': publish the wake notice for it), priority,
--   due time in ms ('' = none given), delay in ms ('' = none; due that long after now),
--   key ('' = none), deadline in ms from now ('' = none),
--   the number of record values N, then N values: field, value pairs of the record (without
--   created, run_at and deadline, which are set here)
-- A one-shot task whose due time is not ahead of now is runnable now; a recurring template
-- (the record has `every` or `cron`) keeps its first time even when it has passed.
-- Returns per task: 1 queued, 2 deferred (key at its limit), 3 scheduled, 0 the id exists (its
-- wake is still published, so a client retrying after a broken pipeline wakes a node),
-- -1 refused (key at its limit and the policy is to reject; nothing stored), -2 failed.
local prefix, channel, events = ARGV[1], ARGV[2], ARGV[3]
local limit, policy = ARGV[4], ARGV[5]
local now = redis_ms()
local accepted = 0

local function enqueue(id, worker, wake, priority, due, delay, key, deadline_in, first, count)
  local tk = prefix .. ':task:' .. id
  local ch = ''
  if wake == '1' then
    ch = channel
  end
  if redis.call('EXISTS', tk) == 1 then
    publish_json(ch, {op = 'wake', worker = worker})
    return 0
  end
  local fields = {'created', now}
  local target = nil
  local recurring = false
  for i = first, first + count - 1, 2 do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
    if ARGV[i] == 'target' then
      target = ARGV[i + 1]
    elseif ARGV[i] == 'every' or ARGV[i] == 'cron' then
      recurring = true
    end
  end
  if delay ~= '' then
    due = string.format('%.0f', tonumber(now) + tonumber(delay))
  end
  if due ~= '' and not recurring and tonumber(due) <= tonumber(now) then
    due = ''
  end
  if due == '' and key ~= '' and policy == 'reject' and not take_slot(prefix, key, limit, id) then
    return -1
  end
  local deadline = ''
  if deadline_in ~= '' and not recurring then
    deadline = string.format('%.0f', tonumber(now) + tonumber(deadline_in))
    fields[#fields + 1] = 'deadline'
    fields[#fields + 1] = deadline
  end
  if due ~= '' then
    fields[#fields + 1] = 'run_at'
    fields[#fields + 1] = due
  end
  redis.call('HSET', tk, unpack(fields))
  accepted = accepted + 1
  if target == 'all' then
    -- A broadcast: one occurrence per member now, and per node that joins while it runs.
    redis.call('SADD', prefix .. ':broadcasts', id)
    for _, m in ipairs(redis.call('SMEMBERS', prefix .. ':members')) do
      spawn_occurrence(prefix, id, m, now, ch, events)
    end
    return 1
  end
  if deadline ~= '' then
    redis.call('ZADD', prefix .. ':deadlines', deadline, id)
  end
  if due ~= '' then
    redis.call('HSET', tk, 'state', 'scheduled')
    redis.call('ZADD', prefix .. ':scheduled', due, id)
    publish_json(ch, {op = 'schedule', due = tonumber(due)})
    return 3
  end
  local state = admit(prefix, id, {worker = worker, priority = priority, created = now,
    key = key, klimit = limit, target = target or false, fresh = true}, ch, events, now)
  if state == 'deferred' then
    return 2
  end
  return 1
end

local out = {}
local i = 6
while i <= #ARGV do
  local count = tonumber(ARGV[i + 8])
  local ok, code = pcall(enqueue, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
    ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], i + 9, count)
  if ok then
    out[#out + 1] = code
  else
    out[#out + 1] = -2
  end
  i = i + 9 + count
end
if accepted > 0 then
  redis.call('HINCRBY', prefix .. ':stats', 'accepted', accepted)
end
return out
