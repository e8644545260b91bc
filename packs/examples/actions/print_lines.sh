#!/bin/sh
# Odd lines to stderr, even lines to stdout: "stderr -> Line: 1", "stdout -> Line: 2", ...
count="${PARAM_COUNT:-10}"
delay="${PARAM_DELAY:-0.5}"
i=1
while [ "$i" -le "$count" ]; do
  if [ $((i % 2)) -eq 1 ]; then
    echo "stderr -> Line: $i" >&2
  else
    echo "stdout -> Line: $i"
  fi
  i=$((i + 1))
  [ "$i" -le "$count" ] && sleep "$delay"
done
exit 0
