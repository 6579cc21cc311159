#!/usr/bin/env bash
# Benchmark (issue #9): ducc convert of the 3-layer Debian toolchain image into a CVMFS repository
# through the cvmfs_server stand-in (tests/support/cvmfs_server; it mounts overlayfs: run as root),
# then the same with cvmfs_server replaced by a command that only reads its input (ducc's own stream
# production), and the cvmfs_server calls of a moved tag and of an unchanged tag. Prints wall times,
# peak RSS and call counts beside DUCC's figures recorded on a real stratum 0.
#
# usage: bench/cvmfs.sh [WORKDIR]      (BENCH_REGISTRY=host:port to reuse a registry; BENCH_ROUNDS=2)
set -euo pipefail
. "$(dirname "$0")/common.sh"
"$py" "$here/bench/cvmfs.py" --registry "$reg" --work "$work" --rounds "${BENCH_ROUNDS:-2}"
