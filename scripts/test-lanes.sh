#!/usr/bin/env bash
# Run test steps for `make test` and `make molecule`: the lanes at the same
# time, each lane's steps one after another, then the steps that must run
# alone (timed checks that a busy 2-core machine would skew). A step is
# make:TARGET (lint, unit, input), or a Molecule scenario NAME or NAME:DISTRO
# (debian12 when not given), with its own ephemeral directory
# (.cache/molecule/NAME-DISTRO), so one scenario can run on two distros at
# once.
#   test-lanes.sh --lane "make:lint default:debian12" --lane "cluster ssh" --alone "rolling"
# Each step's output goes to .cache/test-logs/STEP.log and is printed whole
# when it fails; a line per step says how it ended and in how long. Exits
# non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=.cache/test-logs
mkdir -p "$logs"

run_step() {
  local name="$1" distro=debian12 label start rc
  start=$SECONDS
  if [[ "$name" == make:* ]]; then
    label="make ${name#make:}"
    make --no-print-directory "${name#make:}" >"$logs/${name#make:}.log" 2>&1
    rc=$?
    name="${name#make:}"
  else
    [[ "$name" == *:* ]] && distro="${name#*:}"
    name="${name%%:*}"
    label="molecule test -s $name ($distro)"
    MOLECULE_DISTRO="$distro" MOLECULE_EPHEMERAL_DIRECTORY="$PWD/.cache/molecule/$name-$distro" \
      molecule test -s "$name" >"$logs/$name-$distro.log" 2>&1
    rc=$?
    name="$name-$distro"
  fi
  if [ "$rc" = 0 ]; then
    echo "=== $label: passed in $((SECONDS - start)) s"
  else
    cat "$logs/$name.log"
    echo "=== $label: FAILED (rc $rc) after $((SECONDS - start)) s"
  fi
  return "$rc"
}

run_lane() {
  local step failed=0
  for step in $1; do
    run_step "$step" || failed=1
  done
  return "$failed"
}

lanes=()
alone=""
while [ $# -gt 0 ]; do
  case "$1" in
    --lane) lanes+=("$2"); shift 2 ;;
    --alone) alone="$2"; shift 2 ;;
    *) echo "usage: $0 [--lane 'STEP...']... [--alone 'STEP...']" >&2; exit 2 ;;
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
