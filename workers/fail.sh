#!/bin/sh
# Example script worker `fail`: always fails. A non-zero exit fails the attempt, and the tail of
# stderr becomes the task's error.
#   bgnode do fail --wait    # prints: error: task … failed: exit code 3: something went wrong
echo "something went wrong" >&2
exit 3
