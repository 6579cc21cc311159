#!/usr/bin/env bash
# Benchmark (issue #2): ducc convert vs. skopeo copy + umoci unpack of the same 3-layer Debian
# toolchain image, alternating in one run, plus the cost of a second tag that shares all but its
# top layer. Prints wall times, peak RSS and the ratios against the targets.
#
# usage: bench/convert.sh [WORKDIR]      (BENCH_REGISTRY=host:port to reuse a registry; BENCH_ROUNDS=3)
set -euo pipefail
. "$(dirname "$0")/common.sh"
"$py" "$here/bench/convert.py" --registry "$reg" --work "$work" --rounds "${BENCH_ROUNDS:-3}"
