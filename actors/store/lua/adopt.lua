-- Adopt tasks another node hands over (queued, never started): run by the receiving node, so
-- ownership moves only by an atomic step of the new owner. A task is adopted only if the sender
-- still owns it under the epoch it named, it is not pinned to a node (see pinned_node), and its
-- worker is not paused (see is_paused).
-- KEYS[1] owned set of the sender, KEYS[2] owned set of the receiver, KEYS[3] the receiver's
-- liveness lease
-- ARGV[1] key prefix, ARGV[2] receiver node id, ARGV[3] the receiving incarnation (nothing is
-- adopted while another holds the lease, see fenced), ARGV[4..] id, epoch pairs
-- Returns the header ROW, then one row per adopted task (see ROW).
local out = {ROW}
if fenced(KEYS[3], ARGV[3]) then
  return out
end
for i = 4, #ARGV, 2 do
  local id, epoch = ARGV[i], ARGV[i + 1]
  local f = read_claimable(ARGV[1], id, KEYS[1], '', '0') or {}
  if f[STATE] == 'queued' and f[EPOCH] == epoch and not pinned_node(f[TARGET] or nil)
      and not is_paused(ARGV[1], f[TARGET + 1] or '') and redis.call('SREM', KEYS[1], id) == 1 then
    out[#out + 1] = take_ownership(ARGV[1], id, f, ARGV[2], KEYS[2], false)
  end
end
return out
