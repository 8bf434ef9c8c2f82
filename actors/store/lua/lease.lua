-- Take or renew a lease: succeed when the key is free or already ours.
-- KEYS[1] lease key; ARGV[1] holder, ARGV[2] ttl in ms
-- Returns {1, holder} when renewed, {2, holder} when taken anew (it had expired or never
-- existed), {0, current holder} when someone else holds it; then Redis's `TIME` (seconds,
-- microseconds), which anchors the caller's clock.
local t = redis.call('TIME')
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if cur == false then
    return {2, ARGV[1], t[1], t[2]}
  end
  return {1, ARGV[1], t[1], t[2]}
end
return {0, cur, t[1], t[2]}
