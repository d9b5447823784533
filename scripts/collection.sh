#!/usr/bin/env bash
# The repository as the collection lbapi.nginx_api (galaxy.yml).
#   scripts/collection.sh build    build .cache/dist/lbapi-nginx_api-<version>.tar.gz
#                                  and install it into .cache/installed (what the
#                                  default scenario converges with, by FQCN)
#   scripts/collection.sh sanity   ansible-test sanity on the built collection
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(awk '/^version:/ {print $2}' galaxy.yml)
TARBALL=.cache/dist/lbapi-nginx_api-$VERSION.tar.gz

build() {
  rm -rf .cache/dist .cache/installed
  ansible-galaxy collection build --force --output-path .cache/dist . >/dev/null
  # --no-deps: the dependencies come with the pinned `ansible` package.
  ansible-galaxy collection install --no-deps --force -p .cache/installed "$TARBALL" >/dev/null 2>&1
  echo "collection: built and installed $TARBALL"
}

sanity() {
  # ansible-test lists a collection's files with git when a repository
  # encloses it, so the copy it tests lives outside this clone. It is built
  # from the files as they are now (never an earlier build in .cache/dist).
  work=$(mktemp -d /tmp/lbapi-sanity.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  ansible-galaxy collection build --force --output-path "$work/dist" . >/dev/null
  ansible-galaxy collection install --no-deps --force -p "$work" "$work/dist/lbapi-nginx_api-$VERSION.tar.gz" >/dev/null 2>&1
  # ansible-test bootstraps pip in its venvs with a script from
  # ci-files.testing.ansible.com; where that host is unreachable, a stand-in
  # in its cache installs the same pip version from the package index.
  pip_version=$(python3 - <<'PYTHON'
import re, pathlib, ansible_test
source = (pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
print(re.search(r"pip='([0-9.]+)'", source).group(1))
PYTHON
)
  cache="$HOME/.ansible/test/cache"
  stand_in="$cache/get_pip_${pip_version//./_}.py"
  if [ ! -f "$stand_in" ] && ! curl -fsS -m 10 -o /dev/null "https://ci-files.testing.ansible.com/ansible-test/get-pip-$pip_version.py"; then
    mkdir -p "$cache"
    pip download -q --no-deps "pip==$pip_version" -d "$cache"
    cat > "$stand_in" <<PYTHON
# Stand-in for ansible-test's get-pip.py (scripts/collection.sh): installs pip
# $pip_version from its wheel, downloaded from the package index. get-pip's
# --no-setuptools and --no-wheel mean "only pip", as here.
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pip-$pip_version-py3-none-any.whl"))
from pip._internal.cli.main import main  # noqa: E402

args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--upgrade", "--force-reinstall", *args]))
PYTHON
  fi
  python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  (cd "$work/ansible_collections/lbapi/nginx_api" && ansible-test sanity --local --python "$python" --color no)
}

"${1:?build or sanity}"
