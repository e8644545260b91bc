#!/bin/bash
steps="${PARAM_STEPS:-5}"
step_seconds="${PARAM_STEP_SECONDS:-2}"
tick=$(awk "BEGIN { print $step_seconds / 10 }")
echo "Building project in $steps steps"
for step in $(seq 1 "$steps"); do
  echo "[$step/$steps] compiling module_$step"
  for pct in 10 20 30 40 50 60 70 80 90 100; do
    printf '\r  progress: %3d%%' "$pct"
    sleep "$tick"
  done
  printf '\n'
  [ $((step % 3)) -eq 0 ] && echo "warning: module_$step uses a deprecated API" >&2
done
echo -e "\033[32mBuild succeeded\033[0m"
