#!/usr/bin/env bash
# Measures each figure of the performance targets on one build, back to back, and prints them as
# one table beside the target each one is held to.
#
#   benches/targets.sh [ROUNDS] [HARNESS]
#
# Each round runs `benches/throughput.rs` (20,000 no-op tasks, a private redis-server) for:
#   - the drain on one node;
#   - the drain on three nodes;
#   - raw `PUBLISH` and the inbox;
#   - paced at half of that round's one-node drain rate (RATE=N in the environment fixes it);
#   - the drain with BACKLOG tasks pending (1,000,000 by default; BACKLOG=0 leaves it out).
# HARNESS, a folder with BullMQ's bench.js and its `npm install`, adds one round of
# `benches/bullmq.sh` per round. ROUNDS defaults to 1. BGNODE_REDIS__EVENT_LEVEL=final in the
# environment reaches the nodes. The machine's speed drifts, so compare builds with alternating
# runs of `throughput.rs` itself, not with two runs of this script an hour apart.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-1}
harness=${2:-}
backlog=${BACKLOG:-1000000}

cargo build --release --bench throughput --bin bgnode >&2
# The bench binary cargo built (under CARGO_TARGET_DIR when that is set).
bench=$(cargo bench --bench throughput --no-run 2>&1 |
  sed -nE 's/.*\(([^()]*\/release\/deps\/throughput-[0-9a-f]+)\).*/\1/p' | tail -1)
[ -x "$bench" ] || { echo "cannot find the throughput bench cargo built" >&2; exit 2; }

# The figures of one run of the bench, as `name=value` words.
#   rate: tasks/s; redis: Redis µs per task; node: the nodes' µs per task, all together;
#   p50, p99: paced latency (ms); bytes: Redis memory per pending task.
figures() {
  "$bench" "$@" 2>/dev/null | awk '
    /^(drain|paced): [0-9]+ no-op tasks in .* = [0-9]+ tasks\/s/ {
      for (i = 1; i <= NF; i++) if ($i == "=") rate = $(i + 1)
      tasks = $2
    }
    /^paced: .* tasks\/s \(--rate\)/ {
      for (i = 1; i <= NF; i++) { if ($i == "p50") p50 = $(i + 1); if ($i == "p99") p99 = $(i + 1) }
      for (i = 1; i <= NF; i++) if ($i == "=") tasks = $(i + 1)
      rate = "paced"
    }
    /^(drain|paced): redis-server used/ {
      for (i = 1; i <= NF; i++) if ($(i + 1) == "µs" && $(i + 2) == "per") redis = $i
      gsub(/[(,]/, "", redis)
    }
    /^(drain|paced): node [^ ]+: [0-9]+ tasks/ {
      for (i = 1; i <= NF; i++) if ($(i + 1) == "s" && $(i + 2) == "of") cpu += $i
    }
    /^backlog: / {
      for (i = 1; i <= NF; i++) if ($(i + 1) == "bytes") bytes = $i
    }
    END {
      if (tasks > 0 && cpu > 0) node = sprintf("%.1f", cpu / tasks * 1e6)
      printf "rate=%s redis=%s node=%s p50=%s p99=%s bytes=%s\n", rate, redis, node, p50, p99, bytes
    }'
}

# The value of `name` in a line of figures.
get() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

declare -A seen
add() { seen[$1]="${seen[$1]:+${seen[$1]} / }$2"; }

for r in $(seq "$rounds"); do
  echo "round $r of $rounds" >&2
  one=$(figures --mode drain)
  [ -n "$(get rate "$one")" ] || { echo "the one-node drain printed no rate; run the bench by hand" >&2; exit 1; }
  add drain "$(get rate "$one")"
  add redis "$(get redis "$one")"
  add node "$(get node "$one")"
  three=$(figures --mode drain --nodes 3)
  add three "$(get rate "$three")"
  add publish "$(get rate "$(figures --mode drain --ingress publish)")"
  add inbox "$(get rate "$(figures --mode drain --ingress inbox)")"
  rate=${RATE:-$(( $(get rate "$one") / 2 ))}
  paced=$(figures --mode paced --rate "$rate")
  add paced_rate "$rate"
  add p50 "$(get p50 "$paced")"
  add p99 "$(get p99 "$paced")"
  add paced_redis "$(get redis "$paced")"
  if [ "$backlog" -gt 0 ]; then
    deep=$(figures --mode drain --backlog "$backlog")
    add backlog "$(get rate "$deep")"
    add bytes "$(get bytes "$deep")"
  fi
  if [ -n "$harness" ]; then
    add bullmq "$(benches/bullmq.sh "$harness" 1 2>/dev/null | sed -nE 's/^round 1: .*\(([0-9.]+x)\)$/\1/p')"
  fi
done

row() { printf '| %s | %s | %s |\n' "$1" "$2" "${3:-not measured}"; }
echo "| figure | target | measured |"
echo "|---|---|---|"
row "drain, one node (tasks/s)" "≥ 50,000" "${seen[drain]}"
row "drain, three nodes (tasks/s)" "no slower than one" "${seen[three]}"
row "Redis CPU per drained task (µs)" "≤ 12" "${seen[redis]}"
row "node CPU per drained task (µs)" "≤ 12" "${seen[node]}"
row "raw PUBLISH (tasks/s)" "≥ 40,000" "${seen[publish]}"
row "inbox (tasks/s)" "≥ 40,000" "${seen[inbox]}"
row "paced at (tasks/s)" "half the drain" "${seen[paced_rate]}"
row "paced p50 (ms)" "" "${seen[p50]}"
row "paced p99 (ms)" "< 5" "${seen[p99]}"
row "Redis CPU per paced task (µs)" "≤ 25" "${seen[paced_redis]}"
row "drain with ${backlog/#0/no} tasks pending (tasks/s)" "within 20% of the drain" "${seen[backlog]:-}"
row "Redis memory per pending task (bytes)" "≤ 250" "${seen[bytes]:-}"
row "drain against BullMQ's" "≥ 3×" "${seen[bullmq]:-}"
