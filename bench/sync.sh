#!/usr/bin/env bash
# Benchmark (issue #4): `ducc sync` of a wishlist of BENCH_ENTRIES (default 600) images, tags of the
# real Debian images pushed under many names, when nothing changed (target <= 30 s on 2 cores),
# then after one tag moved (exactly that image must be reconverted).
#
# usage: bench/sync.sh [WORKDIR]        (BENCH_REGISTRY=host:port to reuse a registry)
set -euo pipefail
. "$(dirname "$0")/common.sh"
"$py" "$here/bench/sync.py" --registry "$reg" --work "$work" --entries "${BENCH_ENTRIES:-600}"
