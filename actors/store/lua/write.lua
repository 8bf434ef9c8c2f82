-- Apply a batch of the saver's writes in order, each fenced by epoch and each on its own (one
-- that fails is reported, the others are applied).
-- ARGV[1] key prefix, ARGV[2] events channel, ARGV[3] task channel, ARGV[4] result ttl (ms),
-- ARGV[5] dead ttl (ms); then one write after another:
--   'S', id, epoch, attempt, start time, `started` event ('': none)         (an attempt began)
--   'F', id, node, epoch, new state, result JSON or error, attempt, start time (0: it never
--        began), end time, retry time, transition event, `started` event (''), `error` event (''),
--        the archive's row ('': none; else staged on the node's own outbox, see below)
--   'E', event                                              (an event of no task: `rejected`)
-- Returns one code per write: S 1 written, 0 fenced out; F 1 written, 0 stale (fenced out and
-- counted), 2 already finished, 3 record gone; E 1; -2 the write failed.
local prefix, events, channel, ttl, dead_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- Counters of this batch, added to the stats once at the end.
local counts = {}
local function count(name)
  counts[name] = (counts[name] or 0) + 1
end

-- An attempt began; starting in time lifts the deadline.
local function start(id, epoch, attempt, at, event)
  local tk = prefix .. ':task:' .. id
  local cur = redis.call('HMGET', tk, 'epoch', 'deadline')
  if cur[1] ~= epoch then
    return 0
  end
  redis.call('HSET', tk, 'state', 'running', 'attempt', attempt, 'started', at)
  if cur[2] then
    redis.call('ZREM', prefix .. ':deadlines', id)
  end
  if event ~= '' then
    emit(events, event)
  end
  return 1
end

-- An attempt ended: done, failed, dead, cancelled, expired, or retrying at `retry_at`.
local function finish(id, node, epoch, state, value, attempt, started, now, retry_at, event,
    started_event, error_event, row)
  local tk = prefix .. ':task:' .. id
  local owned = prefix .. ':node:' .. node .. ':owned'
  local cur = redis.call('HMGET', tk, 'epoch', 'state', 'reply', 'key', 'result_key', 'parent',
    'deadline', 'cancel', 'template')
  if not cur[1] then
    redis.call('SREM', owned, id)
    return 3
  end
  if cur[1] ~= epoch then
    redis.call('HINCRBY', tk, 'stale', 1)
    count('stale')
    return 0
  end
  if is_terminal(cur[2]) or cur[2] == 'retrying' then
    return 2
  end
  redis.call('SREM', owned, id)
  if started_event ~= '' then
    emit(events, started_event)
  end
  if error_event ~= '' then
    emit(events, error_event)
  end
  if state == 'retrying' then
    -- The owner gives the task up until it is due again: a new epoch fences the old attempt.
    redis.call('HINCRBY', tk, 'epoch', 1)
    redis.call('HSET', tk, 'state', 'retrying', 'error', value, 'node', '', 'retry_at', retry_at,
      'failed:' .. attempt, cjson.encode({node = node, started = tonumber(started), ended =
      tonumber(now), error = value, retry_at = tonumber(retry_at)}))
    if started ~= '0' then
      redis.call('HSET', tk, 'attempt', attempt, 'started', started)
    end
    redis.call('ZADD', prefix .. ':scheduled', retry_at, id)
    count('retried')
    emit(events, event)
    publish_json(channel, {op = 'schedule', due = tonumber(retry_at)})
    return 1
  end
  local slot = 'error'
  if state == 'done' then
    slot = 'result'
  end
  if started ~= '0' then
    redis.call('HSET', tk, 'state', state, slot, value, 'finished', now, 'attempt', attempt,
      'started', started)
  else
    redis.call('HSET', tk, 'state', state, slot, value, 'finished', now)
  end
  if cur[8] then
    redis.call('HDEL', tk, 'cancel')
  end
  if cur[7] then
    redis.call('ZREM', prefix .. ':deadlines', id)
  end
  free_slot(prefix, cur[4], id, channel, events, now)
  local keep = ttl
  if state == 'dead' then
    redis.call('ZADD', prefix .. ':dead', now, id)
    keep = dead_ttl
  end
  if state == 'done' and cur[5] and cur[5] ~= '' then
    redis.call('SET', prefix .. ':result:' .. cur[5], value, 'PX', ttl)
  end
  redis.call('PEXPIRE', tk, keep)
  count(state)
  if row ~= '' then
    -- The node archives and sent the row of what it knows; the record adds the rest. Staged on
    -- its own outbox, which its archiver reads (and a survivor gets back if it dies); the
    -- record is not read again for it (see stage_row).
    local extra = {key = cur[4], parent = cur[6], template = cur[9]}
    row = string.sub(row, 1, -2)
    for name, v in pairs(extra) do
      if v and v ~= '' then
        row = row .. ',"' .. name .. '":' .. cjson.encode(v)
      end
    end
    redis.call('RPUSH', prefix .. ':archive:outbox:' .. node, row .. '}')
    STAGED = id
  end
  announce_end(prefix, id, event, cur[3], cur[6], keep, ttl, now, channel, events)
  return 1
end

local out = {}
local i = 6
while i <= #ARGV do
  local kind = ARGV[i]
  local ok, code
  if kind == 'S' then
    ok, code = pcall(start, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
    i = i + 6
  elseif kind == 'F' then
    ok, code = pcall(finish, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5],
      ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10], ARGV[i + 11], ARGV[i + 12],
      ARGV[i + 13])
    i = i + 14
  else
    ok, code = pcall(emit, events, ARGV[i + 1])
    code = 1
    i = i + 2
  end
  if ok then
    out[#out + 1] = code
  else
    out[#out + 1] = -2
  end
end
for name, n in pairs(counts) do
  redis.call('HINCRBY', prefix .. ':stats', name, n)
end
return out
