-- Claim up to N pending tasks of one worker for a node: pop them, bump their epoch, record the
-- owner, add them to the node's owned set. Entries whose record is gone or not queued are
-- dropped; a task cancelled while it waited is closed as cancelled instead of handed out.
-- Tasks pinned to this node are taken first.
-- KEYS[1] pending set, KEYS[2] owned set of the node, KEYS[3] this node's own pending set,
-- KEYS[4] the node's liveness lease
-- ARGV[1] key prefix, ARGV[2] node id, ARGV[3] N, ARGV[4] result ttl (ms),
-- ARGV[5] task channel, ARGV[6] events channel, ARGV[7] the worker, ARGV[8] the claiming
-- incarnation (lease holder): nothing is claimed while another incarnation holds the lease
-- (see fenced).
-- A record that names another worker than the set it waited in is set aside (see quarantine):
-- run here, it would hold a slot of the wrong worker type.
-- Returns the header ROW, then one row per task (see ROW); for a paused worker (see is_paused)
-- the single row PAUSED, and nothing is taken.
if fenced(KEYS[4], ARGV[8]) then
  return {ROW}
end
if is_paused(ARGV[1], ARGV[7]) then
  return {PAUSED}
end
local want = tonumber(ARGV[3])
local now = redis_ms()
local popped = redis.call('ZPOPMIN', KEYS[3], want)
if #popped / 2 < want then
  local shared = redis.call('ZPOPMIN', KEYS[1], want - #popped / 2)
  for _, v in ipairs(shared) do
    popped[#popped + 1] = v
  end
end
local out = {ROW}
for i = 1, #popped, 2 do
  local id = popped[i]
  local f = read_claimable(ARGV[1], id, KEYS[1], ARGV[6], now) or {}
  if f[STATE] == 'queued' and f[TARGET + 1] ~= ARGV[7] then
    quarantine(ARGV[1], id, KEYS[1], 'its record names worker `' .. tostring(f[TARGET + 1])
      .. '`, not `' .. ARGV[7] .. '`', ARGV[6], now)
    f = {}
  end
  if f[STATE] == 'queued' and f[CANCEL] == '1' then
    close_unrun(ARGV[1], id, 'cancelled', 'cancelled before it started', now, ARGV[4], ARGV[5],
      ARGV[6])
  elseif f[STATE] == 'queued' then
    out[#out + 1] = take_ownership(ARGV[1], id, f, ARGV[2], KEYS[2], true)
  end
end
return out
