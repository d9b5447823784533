#!/usr/bin/env bash
# make bench-converge: control-plane speed on the separate-tier cluster (1 load
# balancer, 2 API hosts) reached over SSH as a sudo user: the cluster
# Molecule scenario's hosts, fresh. Times a first converge, a no-op re-run and a
# `--check --diff` run of site.yml, prints each wall time, the ratio
# no-op/first and the 10 slowest tasks of the no-op (profile_tasks).
# Uses the cluster scenario's container names: not at the same time as its test.
set -euo pipefail
cd "$(dirname "$0")/.."
export MOLECULE_DISTRO="${MOLECULE_DISTRO:-debian12}"
export MOLECULE_EPHEMERAL_DIRECTORY="$PWD/.cache/bench-converge"
logs="$PWD/.cache/bench-converge-logs"
mkdir -p "$logs"

molecule destroy -s cluster >"$logs/destroy.log" 2>&1
trap 'molecule destroy -s cluster >>"$logs/destroy.log" 2>&1 || true' EXIT
echo "bench-converge: creating the cluster scenario's hosts (log: $logs)"
molecule create -s cluster >"$logs/create.log" 2>&1
molecule prepare -s cluster >"$logs/prepare.log" 2>&1

# The environment Molecule gives its own ansible-playbook runs.
export ANSIBLE_CONFIG="$MOLECULE_EPHEMERAL_DIRECTORY/ansible.cfg"
export ANSIBLE_ROLES_PATH="$PWD/roles" ANSIBLE_COLLECTIONS_PATH="$PWD/collections"
export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks PROFILE_TASKS_TASK_OUTPUT_LIMIT=10
export ANSIBLE_NOCOLOR=1

timed() {
  local label="$1"
  shift
  local start end
  start="$(date +%s.%N)"
  ansible-playbook -i "$MOLECULE_EPHEMERAL_DIRECTORY/inventory" molecule/shared/converge.yml "$@" >"$logs/$label.log" 2>&1 || {
    tail -40 "$logs/$label.log" >&2
    echo "bench-converge: the $label run failed" >&2
    exit 1
  }
  end="$(date +%s.%N)"
  python3 -c "print(round($end - $start, 1))"
}

recap() { grep -E '^\S+ +: ok=' "$logs/$1.log" | sed 's/^/    /'; }

first="$(timed first)"
noop="$(timed noop)"
check="$(timed check --check --diff)"

printf '\nbench-converge: 3-host cluster over SSH (deploy + sudo, %s)\n' "$MOLECULE_DISTRO"
printf '  first converge   %6.1f s\n' "$first"
printf '  no-op re-run     %6.1f s   (%.2f x first)\n' "$noop" "$(python3 -c "print($noop / $first)")"
printf '  --check --diff   %6.1f s\n' "$check"
echo "  no-op recap:"
recap noop
echo "  check recap:"
recap check
echo "  10 slowest tasks of the no-op:"
sed -n '/^TASKS RECAP/,$p' "$logs/noop.log" | grep -E -- '-{3,}' | head -10 | sed 's/^/    /'
