#!/usr/bin/env bash
# Benchmark (issue #5): the web app under gunicorn, loaded from a second process (wrk) on loopback with
# real registry notification payloads; then push-to-published latency of the 1-layer Debian base image
# through a real registry's notifications and a real worker.
#
# usage: bench/webhooks.sh [WORKDIR]   (BENCH_SECONDS=20 BENCH_CONNECTIONS=8 BENCH_WEB_WORKERS=2;
#                                       BENCH_REGISTRY=host:port to reuse a registry with bench/debian)
set -euo pipefail
command -v wrk >/dev/null || { echo "wrk is missing: run ./bootstrap.sh" >&2; exit 2; }
. "$(dirname "$0")/common.sh"
"$py" "$here/bench/webhooks.py" --registry "$reg" --work "$work" --seconds "${BENCH_SECONDS:-20}" \
  --connections "${BENCH_CONNECTIONS:-8}" --web-workers "${BENCH_WEB_WORKERS:-2}"
