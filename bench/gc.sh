#!/usr/bin/env bash
# Benchmark: `ducc gc` on a directory repository of BENCH_IMAGES (default 2000) small real
# images (two layers each, pushed to a real registry and converted by `ducc sync`), BENCH_SUPERSEDED
# (default 10 %) of them superseded by a new image under the same tag: times a gc with nothing to
# delete (first and later runs), one with the default grace (everything waits), a dry run and one
# that deletes (--grace 0), and checks that exactly the current images' trees are left.
#
# usage: bench/gc.sh [WORKDIR]        (BENCH_REGISTRY=host:port to reuse a registry)
set -euo pipefail
bench_debian=0
. "$(dirname "$0")/common.sh"
"$py" "$here/bench/gc.py" --registry "$reg" --work "$work" --images "${BENCH_IMAGES:-2000}" \
  --superseded "${BENCH_SUPERSEDED:-0.10}"
