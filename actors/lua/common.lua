-- Shared by every script (prepended at build time).
-- Pending sets are scored so that ZPOPMIN yields the highest priority first and, among equal
-- priorities, the oldest task first: score = created_ms - priority * 10^13, priority in -100..100.
-- The score is formatted as an integer: Lua's default number format would round it.
local function pending_score(priority, created)
  return string.format('%.0f', (tonumber(created) or 0) - (tonumber(priority) or 0) * 1e13)
end
