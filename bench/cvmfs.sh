#!/usr/bin/env bash
# Benchmark: ducc convert of the 3-layer Debian toolchain image into a real CVMFS repository (a fresh
# one per round, made and removed with cvmfs_server mkfs/rmfs: run as root on a machine with
# CernVM-FS installed, see ../shared/cvmfs/README.md). Prints wall time, cvmfs_server calls and
# publishing calls, time inside cvmfs_server and peak RSS with children, beside DUCC's figures
# recorded on a real stratum 0 (DUCC cannot run here).
#
# usage: bench/cvmfs.sh [WORKDIR]   (BENCH_REGISTRY=host:port to reuse a registry; BENCH_ROUNDS=2;
#                                    BENCH_CVMFS_REPO=bench<name>.ducc.test; BENCH_BASELINE=DIR, a checkout
#                                    of other ducc code whose rounds alternate with this one's)
set -euo pipefail
. "$(dirname "$0")/common.sh"
"$py" "$here/bench/cvmfs.py" --registry "$reg" --work "$work" --rounds "${BENCH_ROUNDS:-2}" \
  --repository "${BENCH_CVMFS_REPO:-benchcvmfs.ducc.test}" ${BENCH_BASELINE:+--baseline "$BENCH_BASELINE"}
