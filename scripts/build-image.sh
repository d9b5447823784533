#!/usr/bin/env bash
# Build the systemd-enabled Debian test image used by the lab and by Molecule.
#
#   scripts/build-image.sh [debian12|debian13]
#
# The image is tagged ansible-lb-systemd:<distro>. It is rebuilt only when it
# is missing or when the build inputs (this script, images/Dockerfile) change:
# the hash of those inputs is stored as an image label.
#
# Two ways to build, picked automatically:
#   * a registry answers (docker pull debian:<release> works): docker build
#     from images/Dockerfile, FROM debian:<release>;
#   * no registry: debootstrap a minbase root file system and docker import it
#     (docker import cannot set STOPSIGNAL: containers are started with
#     --stop-signal SIGRTMIN+3 instead).
# FORCE_DEBOOTSTRAP=1 skips the registry probe.
set -euo pipefail

distro="${1:-debian12}"
case "$distro" in
  debian12) release=bookworm ;;
  debian13) release=trixie ;;
  *)
    echo "build-image: unknown distro '$distro' (allowed: debian12, debian13)" >&2
    exit 2
    ;;
esac

here="$(cd "$(dirname "$0")/.." && pwd)"
image="ansible-lb-systemd:${distro}"
# Where debootstrap downloads from: DEBIAN_MIRROR, else the Debian archive
# this controller's own apt sources use, else debootstrap's default.
controller_mirror() {
  {
    sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
    sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null
  } | grep -E '/debian/?$' | head -n 1 || true
}
mirror="${DEBIAN_MIRROR:-$(controller_mirror)}"
# Packages every test host gets. Keep it close to a minimal cloud VM: what the
# roles need beyond this they must install themselves.
packages="systemd,systemd-sysv,dbus,sudo,python3,iproute2,procps,ca-certificates,curl,netbase"

inputs_hash="$(cat "$here/scripts/build-image.sh" "$here/images/Dockerfile" | sha256sum | cut -c1-16)"

current="$(docker image inspect -f '{{ index .Config.Labels "lab.inputs" }}' "$image" 2>/dev/null || true)"
if [ "$current" = "$inputs_hash" ]; then
  echo "build-image: $image is up to date ($inputs_hash)"
  exit 0
fi

registry_answers() {
  [ "${FORCE_DEBOOTSTRAP:-0}" = 1 ] && return 1
  timeout 30 docker pull -q "debian:${release}" >/dev/null 2>&1
}

if registry_answers; then
  echo "build-image: building $image from debian:${release} (registry answered)"
  docker build -q -t "$image" \
    --build-arg "RELEASE=${release}" \
    --build-arg "PACKAGES=${packages//,/ }" \
    --label "lab.inputs=${inputs_hash}" \
    -f "$here/images/Dockerfile" "$here/images" >/dev/null
else
  command -v debootstrap >/dev/null || {
    echo "build-image: no registry answers and debootstrap is missing (apt-get install debootstrap)" >&2
    exit 1
  }
  echo "build-image: building $image with debootstrap from ${mirror:-the default mirror of debootstrap} (no registry)"
  rootfs="$(mktemp -d /var/tmp/lab-rootfs.XXXXXX)"
  # mktemp makes it 0700, and the archive's "." gives the image's / that
  # mode: with the vfs storage driver (Docker inside a test host) no user but
  # root could then run anything.
  chmod 0755 "$rootfs"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include="$packages" "$release" "$rootfs" ${mirror:+"$mirror"} \
    >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    exit 1
  }
  rm -f "$rootfs.log"
  # Same clean-up as images/Dockerfile: no getty on a container console, an
  # empty machine-id so each container gets its own, and a small apt cache.
  chroot "$rootfs" systemctl mask getty@tty1.service console-getty.service \
    systemd-firstboot.service >/dev/null 2>&1 || true
  : >"$rootfs/etc/machine-id"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  if [ -n "$mirror" ]; then echo "deb $mirror $release main" >"$rootfs/etc/apt/sources.list"; fi
  tar -C "$rootfs" -c . | docker import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change 'ENV container=docker' \
    --change "LABEL lab.inputs=${inputs_hash}" \
    - "$image" >/dev/null
fi
echo "build-image: built $image"
