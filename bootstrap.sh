#!/usr/bin/env bash
# Sets up this checkout on a fresh Debian 12 machine: the system packages ducc and its tests use,
# then a virtualenv (.venv) with ducc installed in editable mode. Safe to run again: it only adds
# what is missing.
set -euo pipefail
cd "$(dirname "$0")"

# docker-registry: the real registry the tests run; skopeo + umoci: independent oracles;
# charliecloud + bubblewrap: run flat roots unprivileged; redis-server: the queue;
# debootstrap: builds the real Debian images of the benchmarks; wrk: the webhook load benchmark;
# buildah: builds the service image from the Containerfile (tests/integration/test_container_image.py);
# podman: reads the podman store ducc writes, as an additional image store (tests/integration/test_podman_store.py).
APT_PACKAGES="docker-registry skopeo umoci charliecloud bubblewrap redis-server debootstrap python3-venv wrk curl buildah podman"
missing=()
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "bootstrap: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The real CernVM-FS 2.12 server, the CVMFS tests' test bed: installed (no repository made) by
# ../shared/cvmfs/setup.sh where it can run (root, /dev/fuse). Elsewhere those tests skip and say why.
CVMFS_SETUP=../shared/cvmfs/setup.sh
if [ -f "$CVMFS_SETUP" ]; then
  if [ "$(id -u)" = 0 ] && [ -c /dev/fuse ]; then
    bash "$CVMFS_SETUP" | tail -n 1
  else
    echo "bootstrap: not installing CernVM-FS (needs root and /dev/fuse): the real-server tests will skip"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "bootstrap: ready ($(.venv/bin/ducc --version))"
