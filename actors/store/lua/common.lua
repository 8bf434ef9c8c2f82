-- Shared by every script: the start of the function library whose functions are the scripts
-- (library.rs). Its top level runs once, when the library is loaded, where Redis offers no
-- standard library (no `ipairs`, `string`, ...): only the functions below may use them.

-- Redis's time in ms, as an integer string. Every time a script records or compares is this
-- one: a node's own clock decides nothing (times computed by nodes come from a clock anchored
-- to it). Scripts run with effects replication, so reading the time before writing is allowed.
local function redis_ms()
  local t = redis.call('TIME')
  return string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end

-- Pending sets are scored so that ZPOPMIN yields the highest priority first and, among equal
-- priorities, the oldest task first: score = created_ms - priority * 10^13, priority in -100..100.
-- The score is formatted as an integer: Lua's default number format would round it.
local function pending_score(priority, created)
  return string.format('%.0f', (tonumber(created) or 0) - (tonumber(priority) or 0) * 1e13)
end

local TERMINAL = {done = true, failed = true, dead = true, cancelled = true, expired = true}

local function is_terminal(state)
  return TERMINAL[state] == true
end

local function publish_json(channel, tbl)
  if channel ~= '' then
    redis.call('PUBLISH', channel, cjson.encode(tbl))
  end
end

-- The events of one call of the library go out together when it ends (flush_events), as one
-- message: the event itself when there is one, else a JSON array of them in order, at most
-- EVENTS_PER_MESSAGE to a message. A PUBLISH from a script costs about as much as the writes
-- of a whole transition, and a batch of the saver's writes carries two or three events per
-- task. Only a call of the library collects them (begin_call); a script run by EVAL with this
-- file in front (the Python client) publishes each event at once.
local EVENTS_PER_MESSAGE = 100
local EVENT_BUF = nil
local EVENT_CHANNEL = ''

local function flush_events()
  if EVENT_BUF == nil or #EVENT_BUF == 0 then
    return
  end
  if #EVENT_BUF == 1 then
    redis.call('PUBLISH', EVENT_CHANNEL, EVENT_BUF[1])
  else
    redis.call('PUBLISH', EVENT_CHANNEL, '[' .. table.concat(EVENT_BUF, ',') .. ']')
  end
  EVENT_BUF = {}
end

-- Publish event `payload` (a JSON object) on channel `events` ('' = nowhere).
local function emit(events, payload)
  if events == '' then
    return
  end
  if EVENT_BUF == nil then
    redis.call('PUBLISH', events, payload)
    return
  end
  if events ~= EVENT_CHANNEL then
    flush_events()
    EVENT_CHANNEL = events
  end
  EVENT_BUF[#EVENT_BUF + 1] = payload
  if #EVENT_BUF >= EVENTS_PER_MESSAGE then
    flush_events()
  end
end

local function publish_event(events, tbl)
  if events ~= '' then
    emit(events, cjson.encode(tbl))
  end
end

-- Set aside an entry that cannot be a task (its key holds something else than a hash): its id
-- goes to `{prefix}:bad`, a `bad` event and a line in the Redis log name it and say where it
-- was found, and the script carries on with the other entries.
local function quarantine(prefix, id, found_in, why, events, now)
  local reason = type(why) == 'table' and (why.err or 'error') or tostring(why)
  redis.call('SADD', prefix .. ':bad', id)
  redis.log(redis.LOG_WARNING, 'bgnode: set aside entry `' .. id .. '` of ' .. found_in .. ': '
    .. reason)
  publish_event(events, {event = 'bad', id = id, found_in = found_in, reason = reason,
    ts = tonumber(now)})
end

-- HMGET of `fields` of task `id`, or nil when its key is not a hash (the entry is quarantined).
local function read_task(prefix, id, fields, found_in, events, now)
  local ok, values = pcall(redis.call, 'HMGET', prefix .. ':task:' .. id, unpack(fields))
  if ok then
    return values
  end
  quarantine(prefix, id, found_in, values, events, now)
  return nil
end

-- Answer a caller waiting on the reply list of `id` with its final event.
local function answer(prefix, id, event, ttl)
  local reply = prefix .. ':reply:' .. id
  redis.call('RPUSH', reply, event)
  redis.call('PEXPIRE', reply, ttl)
end

-- The node a task is pinned to, or nil. The one definition of "pinned": a task whose target is
-- `node:<id>` (given so, `local` resolved when it was enqueued, or a broadcast's occurrence)
-- waits in that node's own pending set, is never handed to another node, and returns to that
-- set when it is handed back. Any other task (no target, `any`) waits in its worker's shared
-- set, from which every node may take it, so it may also move between nodes. (`all` marks a
-- broadcast, which waits nowhere itself: its occurrences are pinned.)
local function pinned_node(target)
  if target and string.sub(target, 1, 5) == 'node:' then
    return string.sub(target, 6)
  end
  return nil
end

-- The record fields a node needs to run a task. A claim or an adoption answers with a header,
-- ROW (`id`, the new `epoch`, `pinned` ('1' or '0'), then these fields), followed by one row of
-- values per task in the header's order ('' for a field the record lacks). The header is the
-- row's one definition; the store reads each value by the position of its name in the header,
-- and no row repeats the names.
local RUN_FIELDS = {'worker', 'args', 'priority', 'attempt', 'attempts', 'timeout', 'created',
  'deadline', 'backoff', 'backoff_cap'}
local ROW = {'id', 'epoch', 'pinned'}
for i = 1, #RUN_FIELDS do
  ROW[#ROW + 1] = RUN_FIELDS[i]
end

-- The answer of a claim for a paused worker (`{prefix}:paused`): this one row instead of the
-- header, and no task.
local PAUSED = {'paused'}

-- True while worker `worker` is paused cluster-wide: no claim or adoption hands out its tasks.
local function is_paused(prefix, worker)
  return redis.call('SISMEMBER', prefix .. ':paused', worker) == 1
    or redis.call('EXISTS', prefix .. ':archive:full') == 1
end

-- What a claim or an adoption reads of a record: the fields it decides on, at the positions
-- below, then RUN_FIELDS. (Positions rather than a table by name: a claim reads thousands of
-- records a second, and each table costs the interpreter.)
local STATE, CANCEL, EPOCH, TARGET = 1, 2, 3, 4
local CLAIM_READ = {'state', 'cancel', 'epoch', 'target'}
for i = 1, #RUN_FIELDS do
  CLAIM_READ[#CLAIM_READ + 1] = RUN_FIELDS[i]
end

-- The fields of CLAIM_READ of task `id`, in that order (false where the record has none), or
-- nil when the key is not a hash (quarantined, see read_task).
local function read_claimable(prefix, id, found_in, events, now)
  return read_task(prefix, id, CLAIM_READ, found_in, events, now)
end

-- Where `attempt` sits in CLAIM_READ.
local ATTEMPT
for i = 1, #CLAIM_READ do
  if CLAIM_READ[i] == 'attempt' then
    ATTEMPT = i
  end
end

-- Make `node` the owner of task `id` (its fields `f`, from read_claimable): a new epoch, the
-- owner recorded, the id in the owner's set. A claim (`count`) also records the attempt it is
-- taken for, before any worker sees it: a node that dies just after starting it cannot make
-- the next owner run the same attempt number again. An adoption takes over a claimed attempt
-- that never started and counts nothing. Returns the task's row (see ROW).
local function take_ownership(prefix, id, f, node, owned, count)
  local epoch = (tonumber(f[EPOCH]) or 0) + 1
  local tk = prefix .. ':task:' .. id
  if count then
    f[ATTEMPT] = tostring((tonumber(f[ATTEMPT]) or 0) + 1)
    redis.call('HSET', tk, 'epoch', epoch, 'node', node, 'attempt', f[ATTEMPT])
  else
    redis.call('HSET', tk, 'epoch', epoch, 'node', node)
  end
  redis.call('SADD', owned, id)
  local pinned = '0'
  if pinned_node(f[TARGET] or nil) then
    pinned = '1'
  end
  local row = {id, tostring(epoch), pinned}
  for i = 1, #RUN_FIELDS do
    row[3 + i] = f[TARGET + i] or ''
  end
  return row
end

-- Generation fencing: a node changes shared state only as the incarnation that holds its
-- liveness lease (`alive`, valued `holder` = `id:generation`). True when another incarnation
-- of the same id holds it now, so a process that was paused while its id was taken over can
-- change nothing. A lapsed lease (nobody's) fences nothing: what such a node owns, it still
-- owns until a survivor fails it over.
local function fenced(alive, holder)
  local cur = redis.call('GET', alive)
  return cur ~= false and cur ~= holder
end

-- The pending set a task waits in: its worker's, or, for a task pinned to a node, that node's
-- own set for the worker.
local function pending_key(prefix, worker, target)
  local node = pinned_node(target)
  if node then
    return prefix .. ':pending:' .. worker .. '@' .. node
  end
  return prefix .. ':pending:' .. worker
end

-- Worker names (and `worker@node` of pinned sets) already recorded in `{prefix}:workers` (and
-- `{prefix}:pinned`) during this script call.
local KNOWN_WORKERS = {}

-- Put a task on its pending set and wake the cluster. `target` is read from the record when
-- the caller does not know it (nil); `false` means none.
local function make_pending(prefix, id, worker, priority, created, channel, target)
  if target == nil then
    target = redis.call('HGET', prefix .. ':task:' .. id, 'target')
  end
  redis.call('ZADD', pending_key(prefix, worker, target), pending_score(priority, created), id)
  if not KNOWN_WORKERS[worker] then
    redis.call('SADD', prefix .. ':workers', worker)
    KNOWN_WORKERS[worker] = true
  end
  local node = pinned_node(target)
  if node and not KNOWN_WORKERS[worker .. '@' .. node] then
    -- Pinned sets are listed too, so that `bgnode bg` and the unrunnable sweep find them.
    redis.call('SADD', prefix .. ':pinned', worker .. '@' .. node)
    KNOWN_WORKERS[worker .. '@' .. node] = true
  end
  local wake = {op = 'wake', worker = worker, node = pinned_node(target)}
  publish_json(channel, wake)
end

-- Take a slot of `key` for `id` when one is free. Slots of tasks that finished or vanished are
-- pruned first, so a count can never leak.
local function take_slot(prefix, key, limit, id)
  local set = prefix .. ':key:' .. key
  if redis.call('SISMEMBER', set, id) == 1 then
    return true
  end
  for _, member in ipairs(redis.call('SMEMBERS', set)) do
    local st = redis.call('HGET', prefix .. ':task:' .. member, 'state')
    if (not st) or is_terminal(st) or st == 'scheduled' or st == 'deferred' then
      redis.call('SREM', set, member)
    end
  end
  if redis.call('SCARD', set) >= (tonumber(limit) or 1) then
    return false
  end
  redis.call('SADD', set, id)
  return true
end

-- Whether `available` events are published: not while `{prefix}:events:final` exists
-- (`redis.event_level = "final"`). Read once per script call.
local AVAILABLE_TOLD = nil
local function tell_available(prefix)
  if AVAILABLE_TOLD == nil then
    AVAILABLE_TOLD = redis.call('EXISTS', prefix .. ':events:final') == 0
  end
  return AVAILABLE_TOLD
end

-- A task becomes runnable: queue it, or defer it while its key is at its limit.
-- Returns the new state.
local function admit(prefix, id, f, channel, events, now)
  -- f: worker, priority, created, key, klimit, target (nil: read it), fresh (a new record,
  -- already stored as queued with no node)
  local tk = prefix .. ':task:' .. id
  if f.key and f.key ~= '' and not take_slot(prefix, f.key, f.klimit, id) then
    redis.call('HSET', tk, 'state', 'deferred')
    redis.call('RPUSH', prefix .. ':deferred:' .. f.key, id)
    redis.call('SADD', prefix .. ':deferring', f.key)
    return 'deferred'
  end
  if not f.fresh then
    redis.call('HSET', tk, 'state', 'queued', 'node', '')
  end
  make_pending(prefix, id, f.worker, f.priority, f.created, channel, f.target)
  if tell_available(prefix) then
    publish_event(events, {event = 'available', id = id, worker = f.worker, ts = tonumber(now)})
  end
  return 'queued'
end

-- Free the slot `id` held on `key` and let deferred tasks of that key in, oldest first.
local function free_slot(prefix, key, id, channel, events, now)
  if (not key) or key == '' then
    return
  end
  redis.call('SREM', prefix .. ':key:' .. key, id)
  local list = prefix .. ':deferred:' .. key
  while true do
    local next_id = redis.call('LINDEX', list, 0)
    if not next_id then
      redis.call('SREM', prefix .. ':deferring', key)
      return
    end
    local tk = prefix .. ':task:' .. next_id
    local g = redis.call('HMGET', tk, 'state', 'worker', 'priority', 'created', 'klimit')
    if g[1] ~= 'deferred' then
      redis.call('LPOP', list)
    elseif take_slot(prefix, key, g[5], next_id) then
      redis.call('LPOP', list)
      redis.call('HSET', tk, 'state', 'queued', 'node', '')
      make_pending(prefix, next_id, g[2], g[3], g[4], channel)
      if tell_available(prefix) then
        publish_event(events, {event = 'available', id = next_id, worker = g[2],
          ts = tonumber(now)})
      end
    else
      return
    end
  end
end

-- The most recently finished tasks `{prefix}:finished` keeps (by time of their end), for the
-- listings; older entries are trimmed once per script call.
local FINISHED_KEEP = 10000
local FINISHED_TRIMMED = false

-- Note in `{prefix}:finished` that task `id` ended at `now`.
-- The archive: while `{prefix}:archive` exists (set by the nodes that archive), every end
-- noted below also stages the task's final row, as JSON, on `{prefix}:archive:outbox`, in
-- the same step as the end itself; the archivers take it from there. Read once per call.
local ARCHIVING = nil
-- The id whose row its caller staged already (write.lua, from the row a node sent).
local STAGED = nil
local ARCHIVE_FIELDS = {'worker', 'state', 'attempt', 'node', 'priority', 'key', 'created',
  'started', 'finished', 'args', 'result', 'error', 'template', 'parent'}

local function stage_row(prefix, id)
  if id == STAGED then
    return
  end
  if ARCHIVING == nil then
    ARCHIVING = redis.call('EXISTS', prefix .. ':archive') == 1
  end
  if not ARCHIVING then
    return
  end
  local f = redis.call('HMGET', prefix .. ':task:' .. id, unpack(ARCHIVE_FIELDS))
  local row = {id = id}
  for i, name in ipairs(ARCHIVE_FIELDS) do
    if f[i] then
      row[name] = f[i]
    end
  end
  redis.call('RPUSH', prefix .. ':archive:outbox', cjson.encode(row))
end

local function note_end(prefix, id, now)
  local key = prefix .. ':finished'
  redis.call('ZADD', key, now, id)
  if not FINISHED_TRIMMED then
    redis.call('ZREMRANGEBYRANK', key, 0, -FINISHED_KEEP - 1)
    FINISHED_TRIMMED = true
  end
  stage_row(prefix, id)
end

-- The occurrence of broadcast `parent` (target `all`) for node `member`: created once, pinned to
-- that node.
local function spawn_occurrence(prefix, parent, member, now, channel, events)
  local oid = parent .. '@' .. member
  local ok = prefix .. ':task:' .. oid
  if redis.call('EXISTS', ok) == 1 then
    return
  end
  local p = redis.call('HMGET', prefix .. ':task:' .. parent, 'worker', 'args', 'priority',
    'attempts', 'timeout', 'backoff', 'backoff_cap', 'deadline')
  if not p[1] then
    return
  end
  redis.call('HSET', ok, 'worker', p[1], 'args', p[2] or 'null', 'priority', p[3] or '0',
    'attempts', p[4] or '0', 'attempt', '0', 'timeout', p[5] or '0', 'reply', '0', 'state', 'queued',
    'node', '', 'epoch', '0', 'created', now, 'target', 'node:' .. member, 'parent', parent)
  for i, name in ipairs({'backoff', 'backoff_cap', 'deadline'}) do
    if p[5 + i] and p[5 + i] ~= '' then
      redis.call('HSET', ok, name, p[5 + i])
    end
  end
  if p[8] and p[8] ~= '' then
    redis.call('ZADD', prefix .. ':deadlines', p[8], oid)
  end
  make_pending(prefix, oid, p[1], p[3], now, channel, 'node:' .. member)
  if tell_available(prefix) then
    publish_event(events, {event = 'available', id = oid, worker = p[1], ts = tonumber(now)})
  end
end

-- A broadcast is done when every member's occurrence has finished: its result maps each node
-- to how its occurrence ended. A member without an occurrence gets one now.
local function broadcast_check(prefix, parent, now, ttl, channel, events)
  local pk = prefix .. ':task:' .. parent
  local p = redis.call('HMGET', pk, 'state', 'worker', 'reply')
  if (not p[1]) or is_terminal(p[1]) then
    redis.call('SREM', prefix .. ':broadcasts', parent)
    return
  end
  local results = {}
  local members = redis.call('SMEMBERS', prefix .. ':members')
  if #members == 0 then
    return
  end
  for _, m in ipairs(members) do
    local f = redis.call('HMGET', prefix .. ':task:' .. parent .. '@' .. m, 'state', 'result', 'error')
    if not f[1] then
      spawn_occurrence(prefix, parent, m, now, channel, events)
      return
    end
    if not is_terminal(f[1]) then
      return
    end
    local entry = {state = f[1]}
    if f[2] then
      local decoded, value = pcall(cjson.decode, f[2])
      entry.result = decoded and value or f[2]
    end
    if f[3] then
      entry.error = f[3]
    end
    results[m] = entry
  end
  local value = cjson.encode(results)
  redis.call('HSET', pk, 'state', 'done', 'result', value, 'finished', now)
  note_end(prefix, parent, now)
  redis.call('SREM', prefix .. ':broadcasts', parent)
  redis.call('PEXPIRE', pk, ttl)
  redis.call('HINCRBY', prefix .. ':stats', 'done', 1)
  local event = cjson.encode({event = 'done', id = parent, worker = p[2], result = results,
    ts = tonumber(now)})
  emit(events, event)
  if p[3] == '1' then
    answer(prefix, parent, event, ttl)
  end
end

-- Tell everyone a task ended: its final event on the events channel, the same event to a
-- caller waiting on its reply list (`reply` '1', kept for `keep` ms), and its broadcast, if it
-- is an occurrence of one (`parent`), that one more occurrence finished. The end is noted in
-- `{prefix}:finished`.
local function announce_end(prefix, id, event, reply, parent, keep, ttl, now, channel, events)
  note_end(prefix, id, now)
  emit(events, event)
  if reply == '1' then
    answer(prefix, id, event, keep)
  end
  if parent and parent ~= '' then
    broadcast_check(prefix, parent, now, ttl, channel, events)
  end
end

-- End a task that never ran to completion here (cancelled, expired): take it out of every
-- waiting structure, fence out its owner, free its slot, keep the record for the result TTL,
-- announce it and answer a waiting caller.
local function close_unrun(prefix, id, state, message, now, ttl, channel, events)
  local tk = prefix .. ':task:' .. id
  local f = redis.call('HMGET', tk, 'worker', 'node', 'key', 'reply', 'attempt', 'target', 'parent')
  redis.call('ZREM', pending_key(prefix, f[1] or '', f[6]), id)
  redis.call('ZREM', prefix .. ':scheduled', id)
  redis.call('ZREM', prefix .. ':deadlines', id)
  if f[3] and f[3] ~= '' then
    redis.call('LREM', prefix .. ':deferred:' .. f[3], 0, id)
    if redis.call('EXISTS', prefix .. ':deferred:' .. f[3]) == 0 then
      redis.call('SREM', prefix .. ':deferring', f[3])
    end
  end
  if f[2] and f[2] ~= '' then
    redis.call('SREM', prefix .. ':node:' .. f[2] .. ':owned', id)
  end
  redis.call('HINCRBY', tk, 'epoch', 1)
  redis.call('HSET', tk, 'state', state, 'error', message, 'finished', now, 'node', '')
  redis.call('HDEL', tk, 'cancel')
  free_slot(prefix, f[3], id, channel, events, now)
  redis.call('PEXPIRE', tk, ttl)
  redis.call('HINCRBY', prefix .. ':stats', state, 1)
  local event = cjson.encode({event = state, id = id, worker = f[1], error = message,
    attempt = tonumber(f[5]) or 0, ts = tonumber(now)})
  announce_end(prefix, id, event, f[4], f[7], ttl, ttl, now, channel, events)
  return f[1] or ''
end

-- What the shared values above remember for the length of one call is forgotten before the
-- next: every function of the library calls this first.
local function begin_call()
  KNOWN_WORKERS = {}
  AVAILABLE_TOLD = nil
  FINISHED_TRIMMED = false
  ARCHIVING = nil
  STAGED = nil
  EVENT_BUF = {}
  EVENT_CHANNEL = ''
end
