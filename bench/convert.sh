#!/usr/bin/env bash
# Benchmark (issue #2): ducc convert vs. skopeo copy + umoci unpack of the same 3-layer Debian
# toolchain image, alternating in one run, plus the cost of a second tag that shares all but its
# top layer. Prints wall times, peak RSS and the ratios against the targets.
#
# usage: bench/convert.sh [WORKDIR]
#   BENCH_REGISTRY=host:port  reuse a registry that already holds bench/debian:{base,python,edited,big}
#   BENCH_ROUNDS=3            rounds per tool
# Without BENCH_REGISTRY it starts docker-registry on a free loopback port under WORKDIR and, if the
# images are missing, builds them with ../shared/bench/make-images.sh (debootstrap + apt: needs root).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/var/tmp/ducc-bench}
mkdir -p "$work"
py="$here/.venv/bin/python"
[ -x "$py" ] || { echo "run ./bootstrap.sh first" >&2; exit 2; }

registry_pid=""
cleanup() { [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true; }
trap cleanup EXIT

reg=${BENCH_REGISTRY:-}
if [ -z "$reg" ]; then
  port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  reg="127.0.0.1:$port"
  cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: "$reg"}
YML
  docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
  registry_pid=$!
  for _ in $(seq 100); do curl -fs "http://$reg/v2/" >/dev/null && break; sleep 0.1; done
fi
if ! curl -fs "http://$reg/v2/bench/debian/manifests/big" -H 'Accept: application/vnd.oci.image.manifest.v1+json' >/dev/null; then
  echo "building the benchmark images into $reg (debootstrap + apt; several minutes)" >&2
  bash "$here/../shared/bench/make-images.sh" "$work/images" "$reg" >&2
fi
exec "$py" "$here/bench/convert.py" --registry "$reg" --work "$work" --rounds "${BENCH_ROUNDS:-3}"
