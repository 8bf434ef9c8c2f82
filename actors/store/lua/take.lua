-- Take a batch from the inbox into the processing list, for the ingress lease holder only.
-- Clients LPUSH (or RPUSH) envelopes on `{prefix}:inbox`; the holder blocks on it with BLMOVE
-- into `{prefix}:inbox:taking` (one message at most, the oldest). This script moves messages
-- from `taking`, then from the inbox (oldest first), into `{prefix}:inbox:processing`, each
-- prefixed with an id of its own and a space (`{id} {message}`): the id is fixed once, here,
-- so a message without an `id` is stored under the same id however often it is processed
-- again. Nothing new is taken while the processing list holds messages: those are answered
-- first (left by a holder that died between taking and settling them, or by a failed store).
-- ARGV[1] key prefix, ARGV[2] holder (`node:generation`), ARGV[3] most messages in a batch
-- Returns {0, {}} when the caller does not hold the ingress lease (nothing moved), else {1,
-- entries}: the head of the processing list, at most ARGV[3] entries.
local prefix, holder, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('GET', prefix .. ':ingress') ~= holder then
  return {0, {}}
end
local processing = prefix .. ':inbox:processing'
if redis.call('LLEN', processing) == 0 then
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local hi, lo = math.floor(ms / 65536), ms % 65536
  local sources = {prefix .. ':inbox:taking', prefix .. ':inbox'}
  local moved = 0
  for _, source in ipairs(sources) do
    while moved < n do
      local msg = redis.call('RPOP', source)
      if not msg then
        break
      end
      -- A UUIDv7-shaped id: Redis's time in ms, then a sequence that never repeats.
      local seq = redis.call('INCR', prefix .. ':inbox:seq')
      local id = string.format('%08x-%04x-7000-8000-%012x', hi, lo, seq)
      redis.call('RPUSH', processing, id .. ' ' .. msg)
      moved = moved + 1
    end
  end
end
return {1, redis.call('LRANGE', processing, 0, n - 1)}
