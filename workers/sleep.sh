#!/bin/sh
# Example script worker `sleep`: waits {"seconds": N} (default 1), then reports it.
#   bgnode do sleep '{"seconds":2}' --wait
args=$(cat)
secs=$(printf '%s' "$args" | sed -n 's/.*"seconds"[[:space:]]*:[[:space:]]*\([0-9.]*\).*/\1/p')
secs=${secs:-1}
sleep "$secs"
printf '{"slept":%s}\n' "$secs"
