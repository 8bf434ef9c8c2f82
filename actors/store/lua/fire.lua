-- Fire what is due in the scheduled set. One-shot tasks (delayed, or retrying) become runnable
-- here, atomically, so each fires once however many schedulers run. Recurring templates are
-- returned to the caller, which computes their next time and calls occur.lua.
-- KEYS[1] scheduled set
-- ARGV[1] key prefix, ARGV[2] most entries, ARGV[3] task channel, ARGV[4] events channel
-- Due means due by Redis's time now. Returns that time (ms), then {template id, due, every (ms
-- or ''), cron (or '')} per due template.
local prefix, now = ARGV[1], redis_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local templates = {}
for i = 1, #due, 2 do
  local id = due[i]
  local f = read_task(prefix, id, {'state', 'worker', 'priority', 'created', 'every', 'cron',
    'key', 'klimit'}, KEYS[1], ARGV[4], now) or {}
  local recurring = (f[5] and f[5] ~= '') or (f[6] and f[6] ~= '')
  if recurring and f[1] == 'scheduled' then
    templates[#templates + 1] = {id, due[i + 1], f[5] or '', f[6] or ''}
  elseif (not recurring) and (f[1] == 'scheduled' or f[1] == 'retrying') then
    redis.call('ZREM', KEYS[1], id)
    admit(prefix, id, {worker = f[2], priority = f[3], created = f[4], key = f[7], klimit = f[8]},
      ARGV[3], ARGV[4], now)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return {now, templates}
