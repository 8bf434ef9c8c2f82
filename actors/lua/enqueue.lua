-- Store a new task, unless the id exists already (the id is the idempotency key).
-- KEYS[1] task hash
-- ARGV[1] key prefix, ARGV[2] id, ARGV[3] worker, ARGV[4] task channel for wakes ('' = none),
-- ARGV[5] events channel, ARGV[6] now (ms), ARGV[7] priority, ARGV[8] created (ms),
-- ARGV[9] due time in ms ('' = runnable now), ARGV[10] key ('' = none), ARGV[11] key limit,
-- ARGV[12] key policy ('reject' or 'defer'), ARGV[13] deadline in ms ('' = none),
-- ARGV[14..] field, value pairs of the record
-- Returns 1 queued, 2 deferred (key at its limit), 3 scheduled, 0 the id exists (a wake is
-- still published, so a client retrying after a broken pipeline wakes a node), -1 refused
-- (key at its limit and the policy is to reject; nothing stored).
local prefix, id, worker, channel, events, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local due, key, limit, policy, deadline = ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13]
if redis.call('EXISTS', KEYS[1]) == 1 then
  publish_json(channel, {op = 'wake', worker = worker})
  return 0
end
if due == '' and key ~= '' and policy == 'reject' and not take_slot(prefix, key, limit, id) then
  return -1
end
local fields = {}
for i = 14, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HINCRBY', prefix .. ':stats', 'accepted', 1)
local target = redis.call('HGET', KEYS[1], 'target')
if target == 'all' then
  -- A broadcast: one occurrence per member now, and per node that joins while it runs.
  redis.call('SADD', prefix .. ':broadcasts', id)
  for _, m in ipairs(redis.call('SMEMBERS', prefix .. ':members')) do
    spawn_occurrence(prefix, id, m, now, channel, events)
  end
  return 1
end
if deadline ~= '' then
  redis.call('ZADD', prefix .. ':deadlines', deadline, id)
end
if due ~= '' then
  redis.call('HSET', KEYS[1], 'state', 'scheduled')
  redis.call('ZADD', prefix .. ':scheduled', due, id)
  publish_json(channel, {op = 'schedule', due = tonumber(due)})
  return 3
end
local state = admit(prefix, id, {worker = worker, priority = ARGV[7], created = ARGV[8], key = key,
  klimit = limit}, channel, events, now)
if state == 'deferred' then
  return 2
end
return 1
