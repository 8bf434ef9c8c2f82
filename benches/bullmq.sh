#!/usr/bin/env bash
# Runs bgnode's drain and BullMQ's in alternating rounds on the same machine and the same Redis
# build, and prints each round and the ratio of the medians.
#
#   benches/bullmq.sh HARNESS [ROUNDS] [TASKS]
#
# HARNESS is a folder holding BullMQ's bench.js (with `npm install` run in it); ROUNDS defaults
# to 3, TASKS to 20000. bgnode's figure is the `drain:` line of `benches/throughput.rs` (enqueue
# and drain together, one node); BullMQ's is its `process:` line (the drain alone, concurrency
# 50, after the jobs were added). Each BullMQ round gets a fresh redis-server of its own on a
# free port in a temporary folder, persistence off, as the bgnode bench starts its own.
# BGNODE_REDIS__EVENT_LEVEL=final in the environment reaches the bgnode nodes.
set -euo pipefail
cd "$(dirname "$0")/.."

harness=${1:?usage: benches/bullmq.sh HARNESS [ROUNDS] [TASKS]}
rounds=${2:-3}
tasks=${3:-20000}
[ -f "$harness/bench.js" ] || { echo "no bench.js in $harness" >&2; exit 2; }
[ -d "$harness/node_modules" ] || { echo "run npm install in $harness first" >&2; exit 2; }
command -v node >/dev/null || { echo "node is not installed" >&2; exit 2; }

cargo build --release --bench throughput --bin bgnode >&2
# The bench binary cargo built (under CARGO_TARGET_DIR when that is set).
bench=$(cargo bench --bench throughput --no-run 2>&1 |
  sed -nE 's/.*\(([^()]*\/release\/deps\/throughput-[0-9a-f]+)\).*/\1/p' | tail -1)
[ -x "$bench" ] || { echo "cannot find the throughput bench cargo built" >&2; exit 2; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# One BullMQ round: prints its drain rate (jobs/s).
bullmq_round() {
  local port dir rate
  port=$(free_port)
  dir=$(mktemp -d)
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
    --daemonize yes --logfile "$dir/log" >/dev/null
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  rate=$(cd "$harness" && REDIS_PORT=$port node bench.js "$tasks" 50 0 1000 |
    sed -nE 's/^process: .* = ([0-9]+) jobs\/s.*/\1/p')
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
  echo "$rate"
}

# One bgnode round: prints its drain rate (tasks/s).
bgnode_round() {
  "$bench" --mode drain --tasks "$tasks" 2>/dev/null |
    sed -nE 's/^drain: [0-9]+ no-op tasks in .* = ([0-9]+) tasks\/s.*/\1/p'
}

median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

ours=()
theirs=()
for r in $(seq "$rounds"); do
  b=$(bgnode_round)
  q=$(bullmq_round)
  [ -n "$b" ] && [ -n "$q" ] || { echo "round $r: a bench printed no rate" >&2; exit 1; }
  ours+=("$b")
  theirs+=("$q")
  echo "round $r: bgnode drain $b tasks/s, BullMQ drain $q jobs/s ($(awk "BEGIN {printf \"%.2f\", $b / $q}")x)"
done
b=$(printf '%s\n' "${ours[@]}" | median)
q=$(printf '%s\n' "${theirs[@]}" | median)
echo "median: bgnode $b tasks/s, BullMQ $q jobs/s: bgnode drains $(awk "BEGIN {printf \"%.2f\", $b / $q}")x BullMQ's rate"
