-- Settle inbox messages that were stored or refused: remove each from the processing list and,
-- for a refused one, keep its rejection on `{prefix}:rejected` (the newest ARGV[2] are kept).
-- A rejection is kept only when this call removed the message, so a message settled twice (a
-- frozen holder and its successor both processed it) is listed once.
-- ARGV[1] key prefix, ARGV[2] how many rejections are kept; then per message:
--   the processing entry, its rejection as JSON ('' when it was stored)
-- Returns per message 1 removed, 0 it was not there (settled already).
local prefix, keep = ARGV[1], tonumber(ARGV[2])
local processing = prefix .. ':inbox:processing'
local rejected = prefix .. ':rejected'
local out = {}
local trim = false
for i = 3, #ARGV, 2 do
  local removed = redis.call('LREM', processing, 1, ARGV[i])
  if removed > 0 and ARGV[i + 1] ~= '' then
    redis.call('RPUSH', rejected, ARGV[i + 1])
    trim = true
  end
  out[#out + 1] = removed
end
if trim then
  redis.call('LTRIM', rejected, -keep, -1)
end
return out
