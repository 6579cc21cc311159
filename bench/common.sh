# Sourced by the benchmarks with the caller's arguments: sets $here (the checkout), $work (WORKDIR, the
# first argument, default /var/tmp/ducc-bench), $py (the virtualenv's python) and $reg (host:port of a
# registry holding the real Debian images of ../shared/bench/make-images.sh). Reuses BENCH_REGISTRY if given; otherwise starts docker-registry on a free
# loopback port under $work and, if the images are missing, pushes the OCI layout kept under
# $DUCC_BENCH_IMAGES (default /var/tmp/ducc-bench/images) or builds it (debootstrap + apt: needs root),
# unless the caller set bench_debian=0 (it pushes images of its own).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${1:-/var/tmp/ducc-bench}
mkdir -p "$work"
py="$here/.venv/bin/python"
[ -x "$py" ] || { echo "run ./bootstrap.sh first" >&2; exit 2; }
registry_pid=""
cleanup_registry() { [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true; }
trap cleanup_registry EXIT
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
# A benchmark that builds its own images sets bench_debian=0 before sourcing this.
if [ "${bench_debian:-1}" = 1 ] && ! curl -fs "http://$reg/v2/bench/debian/manifests/big" -H 'Accept: application/vnd.oci.image.manifest.v1+json' >/dev/null; then
  images=${DUCC_BENCH_IMAGES:-/var/tmp/ducc-bench/images}
  if umoci ls --layout "$images/layout" 2>/dev/null | grep -qx big; then
    for t in base python edited big; do
      skopeo copy -q --dest-tls-verify=false "oci:$images/layout:$t" "docker://$reg/bench/debian:$t"
    done
  else
    echo "building the benchmark images into $images (debootstrap + apt; several minutes)" >&2
    bash "$here/../shared/bench/make-images.sh" "$images" "$reg" >&2
  fi
fi
