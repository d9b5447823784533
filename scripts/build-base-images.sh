#!/usr/bin/env bash
# Build the base images the Compose variant's tests push to their private
# registry, without a registry: FROM the debootstrapped test image of the
# distro (scripts/build-image.sh), one per images/base/*.Dockerfile.
#
#   scripts/build-base-images.sh [debian13]
#
# Tagged lb-base-<name>:<distro>; rebuilt only when the test image or the
# Dockerfile changed (a hash of both is kept as an image label).
set -euo pipefail

distro="${1:-debian13}"
here="$(cd "$(dirname "$0")/.." && pwd)"
base="ansible-lb-systemd:${distro}"
base_id="$(docker image inspect -f '{{.Id}}' "$base")"

for dockerfile in "$here"/images/base/*.Dockerfile; do
  name="$(basename "$dockerfile" .Dockerfile)"
  image="lb-base-${name}:${distro}"
  inputs="$( (echo "$base_id"; cat "$dockerfile" "$0") | sha256sum | cut -c1-16)"
  current="$(docker image inspect -f '{{ index .Config.Labels "lab.inputs" }}' "$image" 2>/dev/null || true)"
  if [ "$current" = "$inputs" ]; then
    echo "build-base-images: $image is up to date ($inputs)"
    continue
  fi
  docker build -q -t "$image" --build-arg "BASE=$base" --label "lab.inputs=$inputs" \
    -f "$dockerfile" "$here/images/base" >/dev/null
  echo "build-base-images: built $image"
done
