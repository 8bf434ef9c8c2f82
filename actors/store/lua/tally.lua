-- Record a sample of the cluster's counters (`{prefix}:stats`) in `{prefix}:tally`, a sorted set
-- scored by Redis's time in ms whose members are `{ms} {counters as JSON}`, at most one sample
-- per ARGV[2] ms (however many nodes ask), keeping ARGV[3] ms of them. Throughput over the last
-- minute or hour is the difference between the counters now and the oldest sample in that time.
-- ARGV[1] key prefix, ARGV[2] least gap between samples (ms), ARGV[3] how long samples are kept
-- (ms)
-- Returns 1 when it recorded a sample, 0 when the latest is too recent.
local prefix = ARGV[1]
local key = prefix .. ':tally'
local now = redis_ms()
local last = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
if last[2] and tonumber(now) - tonumber(last[2]) < tonumber(ARGV[2]) then
  return 0
end
local stats = redis.call('HGETALL', prefix .. ':stats')
local counts = {}
for i = 1, #stats, 2 do
  counts[stats[i]] = tonumber(stats[i + 1])
end
local text = '{}'
if #stats > 0 then
  text = cjson.encode(counts)
end
redis.call('ZADD', key, now, now .. ' ' .. text)
redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.0f', tonumber(now) - tonumber(ARGV[3])))
return 1
