#!/bin/sh
# Example script worker `hello`: answers with a greeting, its arguments and where it ran.
#   bgnode do hello '{"name":"Ada"}' --wait
# A script worker reads its arguments (JSON) on stdin and prints its result on stdout.
args=$(cat)
printf '{"greeting":"hello from %s","args":%s,"task":"%s","attempt":%s}\n' \
  "$BG_NODE" "${args:-null}" "$BG_TASK_ID" "$BG_ATTEMPT"
