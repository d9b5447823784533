#!/usr/bin/env bash
# Run Molecule scenarios for `make molecule`: the lanes at the same time, each
# lane's scenarios one after another, then the scenarios that must run alone
# (timed checks that a busy 2-core machine would skew). A scenario is
# NAME or NAME:DISTRO (debian12 when not given).
#   molecule-lanes.sh --lane "default:debian12 methods" --lane "cluster ssh" --alone "rolling"
# Each scenario's output goes to .cache/molecule-logs/NAME-DISTRO.log and is
# printed whole when it fails; a line per scenario says how it ended and in
# how long. Exits non-zero when any scenario failed.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=.cache/molecule-logs
mkdir -p "$logs"

run_scenario() {
  local name="${1%%:*}" distro=debian12 start rc
  [[ "$1" == *:* ]] && distro="${1#*:}"
  start=$SECONDS
  MOLECULE_DISTRO="$distro" molecule test -s "$name" >"$logs/$name-$distro.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    echo "=== molecule test -s $name ($distro): passed in $((SECONDS - start)) s"
  else
    cat "$logs/$name-$distro.log"
    echo "=== molecule test -s $name ($distro): FAILED (rc $rc) after $((SECONDS - start)) s"
  fi
  return "$rc"
}

run_lane() {
  local scenario failed=0
  for scenario in $1; do
    run_scenario "$scenario" || failed=1
  done
  return "$failed"
}

lanes=()
alone=""
while [ $# -gt 0 ]; do
  case "$1" in
    --lane) lanes+=("$2"); shift 2 ;;
    --alone) alone="$2"; shift 2 ;;
    *) echo "usage: $0 [--lane 'SCENARIO...']... [--alone 'SCENARIO...']" >&2; exit 2 ;;
  esac
done

failed=0
pids=()
for lane in "${lanes[@]}"; do
  run_lane "$lane" &
  pids+=("$!")
done
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
run_lane "$alone" || failed=1
exit "$failed"
