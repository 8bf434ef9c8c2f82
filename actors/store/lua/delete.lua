-- Delete a finished task (done, failed, dead, cancelled or expired): its record, its reply list,
-- and its entries in the dead set and `{prefix}:finished`. A task that may still run is kept.
-- KEYS[1] task hash
-- ARGV[1] key prefix, ARGV[2] task id, ARGV[3] worker ('' = any): only a task of this worker
-- Returns 1 deleted, 0 no such task (or not of that worker), -1 not finished (nothing changed).
local prefix, id = ARGV[1], ARGV[2]
local f = redis.call('HMGET', KEYS[1], 'state', 'worker')
if not f[1] then
  redis.call('ZREM', prefix .. ':dead', id)
  redis.call('ZREM', prefix .. ':finished', id)
  return 0
end
if ARGV[3] ~= '' and f[2] ~= ARGV[3] then
  return 0
end
if not is_terminal(f[1]) then
  return -1
end
redis.call('DEL', KEYS[1], prefix .. ':reply:' .. id)
redis.call('ZREM', prefix .. ':dead', id)
redis.call('ZREM', prefix .. ':finished', id)
return 1
