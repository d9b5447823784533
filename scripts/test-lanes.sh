#!/usr/bin/env bash
# Run test steps for `make test` and `make molecule`: the lanes at the same
# time, each lane's steps one after another, then the steps that must run
# alone (--alone; make test runs rolling so). A step is
# make:TARGET (lint, unit, input), or a Molecule scenario NAME or NAME:DISTRO
# (debian12 when not given), with its own ephemeral directory
# (.cache/molecule/NAME-DISTRO), so one scenario can run on two distros at
# once.
#   test-lanes.sh --lane "make:lint default:debian12" --lane "cluster tls" --alone "rolling"
# Each step's output goes to .cache/test-logs/STEP.log and is printed whole
# when it fails; a line per step says how it ended and in how long. Exits
# non-zero when any step failed.
set -uo pipefail
shopt -s extglob
cd "$(dirname "$0")/.." || exit 2
logs=.cache/test-logs
mkdir -p "$logs"
# The steps of this run, one log name a line (run_step appends, summarize reads).
: >"$logs/steps"

# Copy a Molecule log from stdin to stdout, and write to $1 how long each of
# its actions took ("create 31 s, prepare 48 s, ..."): each action runs from
# its "➜ ACTION: Executing" line to the next one.
phases() {
  local line action="" started=$SECONDS out=""
  while IFS= read -r line; do
    printf '%s\n' "$line"
    if [[ "$line" == *"➜ "*": "*Executing* ]]; then
      line=${line//$'\e'\[*([0-9;])m/}
      [[ "$line" =~ ➜\ ([a-z_]+):\ Executing$ ]] || continue
      [ -n "$action" ] && out+="$action $((SECONDS - started)) s, "
      action="${BASH_REMATCH[1]}"
      started=$SECONDS
    fi
  done
  [ -n "$action" ] && out+="$action $((SECONDS - started)) s"
  printf '%s\n' "$out" >"$1"
}

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
    # COLUMNS: Molecule wraps its framed output at the terminal's width (80
    # in a log); wide, pytest's "FAILED file::test - message" stays one line.
    COLUMNS=1000 MOLECULE_DISTRO="$distro" MOLECULE_EPHEMERAL_DIRECTORY="$PWD/.cache/molecule/$name-$distro" \
      molecule test -s "$name" 2>&1 | phases "$logs/$name-$distro.phases" >"$logs/$name-$distro.log"
    rc=${PIPESTATUS[0]}
    name="$name-$distro"
    label="$label [$(cat "$logs/$name.phases")]"
  fi
  echo "$name" >>"$logs/steps"
  rm -f "$logs/$name.failed"
  if [ "$rc" = 0 ]; then
    echo "=== $label: passed in $((SECONDS - start)) s"
  else
    cat "$logs/$name.log"
    touch "$logs/$name.failed"
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

# One closing line for every pytest run of every step (unit, input, each
# scenario's testinfra verify): the sums of their summary lines.
summarize() {
  local passed=0 failed=0 step_failed line n log step plain
  while read -r step; do
    log="$logs/$step.log"
    [ -f "$log" ] || continue
    # The log without colours, read once for both its summary and its failures.
    plain=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
    step_failed=0
    while read -r line; do
      n=$(grep -oE '[0-9]+ passed' <<<"$line" | cut -d' ' -f1)
      passed=$((passed + ${n:-0}))
      while read -r n; do
        step_failed=$((step_failed + ${n:-0}))
      done < <(grep -oE '[0-9]+ (failed|errors?)' <<<"$line" | cut -d' ' -f1)
    # pytest's summary line, also inside Molecule's framed output (colours
    # and a "│" before it): "=== 2 failed, 8 passed in 374.03s ===".
    done < <(grep -E '(^|[│= ])[0-9]+ (passed|failed|errors?)(, [0-9]+ [a-z]+)* in [0-9.]+s' <<<"$plain")
    # A step that failed outside pytest (lint, a converge) counts as one.
    if [ "$step_failed" = 0 ] && [ -f "${log%.log}.failed" ]; then
      step_failed=1
    fi
    failed=$((failed + step_failed))
    # Which tests failed: pytest's short summary (-r), named by step, so the
    # end of the output says it even when a CI log keeps only its tail.
    grep -oE '(FAILED|ERROR) [^ ]+::[^ ]+( - .{0,200})?' <<<"$plain" | sed "s/^/$step: /" || true
  done <"$logs/steps"
  echo "$passed passed, $failed failed"
}
summarize
exit "$failed"
