#!/usr/bin/env bash
# Run Molecule scenarios in parallel lanes: each argument is one lane, a
# space-separated list of scenario[:distro] run one after the other (distro
# default: debian12). Lanes run at the same time; every line is prefixed with
# its scenario. Each run gets its own ephemeral directory, so the same
# scenario on two distros can run at once. Exits non-zero if any run failed,
# after every lane has finished.
#   scripts/molecule-lanes.sh "rolling default:debian12" "cluster default:debian13"
set -uo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/molecule-lanes"

run_lane() {
  local item scenario distro status=0
  for item in $1; do
    scenario="${item%%:*}"
    distro="debian12"
    [ "$item" != "$scenario" ] && distro="${item#*:}"
    echo "=== molecule test -s $scenario ($distro)"
    started=$SECONDS
    if ! MOLECULE_DISTRO="$distro" MOLECULE_EPHEMERAL_DIRECTORY="$cache/$scenario-$distro" \
      molecule test -s "$scenario" 2>&1 | sed -u "s/^/[$scenario $distro] /"; then
      echo "=== FAILED: molecule test -s $scenario ($distro)"
      status=1
    fi
    echo "=== molecule test -s $scenario ($distro): $((SECONDS - started)) s"
  done
  return "$status"
}

pids=()
for lane in "$@"; do
  run_lane "$lane" &
  pids+=("$!")
done
failed=0
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
exit "$failed"
