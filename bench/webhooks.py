"""Load and latency benchmark of the web app (see webhooks.sh)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests

HERE = Path(__file__).resolve().parent.parent
PAYLOAD = HERE.parent / "shared" / "reference" / "payloads" / "distribution-2.8-real-manifest-push.json"
TOKEN = "bench-token-" + os.urandom(6).hex()
sys.path.insert(0, str(HERE))

from ducc.service import keys  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--web-workers", type=int, default=2)
    args = parser.parse_args()
    work = args.work / "webhooks"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    redis_port, web_port = free_port(), free_port()
    redis_proc = start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                        "yes", "--appendfsync", os.environ.get("BENCH_APPENDFSYNC", "everysec"), "--dir", str(work)], dict(os.environ), work / "redis.log")
    env = {**os.environ, "DUCC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "DUCC_WEBHOOK_TOKEN": TOKEN,
           "DUCC_ALLOW": "127.0.0.1:*/bench/*", "DUCC_ROOT": str(work / "root"), "DUCC_CACHE_DIR": "off",
           "DUCC_LISTEN": f"127.0.0.1:{web_port}", "DUCC_LOG_LEVEL": "INFO"}
    web = start([str(HERE / ".venv/bin/ducc"), "web", "--workers", str(args.web_workers)], env, work / "web.log")
    try:
        wait_http(f"http://127.0.0.1:{web_port}/healthz")
        client = redis.Redis(port=redis_port, decode_responses=True)
        # -- load --------------------------------------------------------------------------
        body = json.loads(PAYLOAD.read_text())["body"]
        event = body["events"][0]
        event["id"], event["target"]["tag"], event["request"]["host"] = "__ID__", "__TAG__", "__HOST__"
        event["target"]["repository"] = "bench/load"
        template = work / "payload.json"
        template.write_text(json.dumps(body))
        load_env = {**os.environ, "BENCH_PAYLOAD": str(template), "BENCH_TOKEN": TOKEN, "BENCH_IMAGE_HOST": "127.0.0.1:5000"}
        wrk = subprocess.run(["wrk", "-t", "2", "-c", str(args.connections), "-d", f"{args.seconds}s", "--latency",
                              "-s", str(HERE / "bench/webhooks.lua"), f"http://127.0.0.1:{web_port}"],
                             env=load_env, capture_output=True, text=True)
        match = re.search(r"RESULT requests=(\d+) non2xx=(\d+) errors=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+)", wrk.stdout)
        if not match:
            raise SystemExit(f"wrk failed:\n{wrk.stdout}\n{wrk.stderr}")
        total, non2xx, errors, duration_us, p50, p99 = map(int, match.groups())
        ok = total - non2xx - errors
        rate = ok / (duration_us / 1e6)
        time.sleep(1)  # requests still in flight when wrk stopped reading are answered by now
        counts = {k: int(v) for k, v in client.hgetall(keys.METRICS_REQUESTS).items()}
        accepted = counts.get("registry|accepted", 0)
        coalesced = counts.get("registry|coalesced", 0)
        queued = client.llen(keys.INCOMING)
        records = joined = 0
        for key in client.scan_iter(keys.JOB_PREFIX + "*", count=1000):
            if not key.endswith(":events"):
                records += 1
                joined += bool(client.hget(key, "coalesced_into"))
        print(f"load: {args.seconds}s, {args.connections} connections, gunicorn with {args.web_workers} workers, wrk on the same "
              f"2 cores, Redis appendfsync {os.environ.get('BENCH_APPENDFSYNC', 'everysec')}")
        print(f"  {ok} events accepted ({rate:.0f}/s), {non2xx} non-2xx, {errors} socket errors; latency p50 {p50 / 1000:.1f} ms, p99 {p99 / 1000:.1f} ms")
        # wrk stops reading at the deadline: up to one request per connection was answered after it stopped
        in_flight = accepted + coalesced - ok
        accounted = (0 <= in_flight <= args.connections and records == accepted + coalesced
                     and joined == coalesced and queued == accepted)
        print(f"  accounted for: {accepted} enqueued + {coalesced} coalesced = {accepted + coalesced} "
              f"({ok} answers seen by wrk + {in_flight} answered after it stopped reading); {records} job records, "
              f"{joined} of them coalesced; {queued} jobs waiting in the queue -> {'ALL' if accounted else 'MISMATCH'}")
        print(f"  target >= 500 events/s: {'MET' if rate >= 500 else 'MISSED'};  p99 <= 50 ms: {'MET' if p99 <= 50_000 else 'MISSED'}")
    finally:
        stop(web)
    # -- push to published: a fresh Redis database and web app, so no load-test job is in the way --
    latency_env = {**env, "DUCC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/1", "DUCC_LISTEN": f"127.0.0.1:{free_port()}"}
    web = start([str(HERE / ".venv/bin/ducc"), "web", "--workers", "2"], latency_env, work / "web-latency.log")
    try:
        wait_http(f"http://{latency_env['DUCC_LISTEN']}/healthz")
        print(latency(args, work, latency_env, int(latency_env["DUCC_LISTEN"].rsplit(":", 1)[1])))
    finally:
        stop(web)
        stop(redis_proc)


def latency(args: argparse.Namespace, work: Path, env: dict[str, str], web_port: int) -> str:
    from tests.support.processes import start_registry

    notify = start_registry(work / "notifying", notifications={"endpoints": [{
        "name": "ducc", "url": f"http://127.0.0.1:{web_port}/webhooks/registry", "timeout": "2s", "threshold": 5,
        "backoff": "1s", "headers": {"Authorization": [f"Bearer {TOKEN}"]}}]})
    worker = start([str(HERE / ".venv/bin/ducc"), "worker", "--concurrency", "1"], env, work / "worker.log")
    try:
        deadline = time.monotonic() + 60
        while "ready." not in (work / "worker.log").read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise SystemExit("worker did not start")
            time.sleep(0.1)
        target = f"{notify.host}/bench/debian:base"
        started = time.monotonic()
        subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                        f"docker://{args.registry}/bench/debian:base", f"docker://{target}"], check=True)
        pushed = time.monotonic()
        link = Path(env["DUCC_ROOT"]) / notify.host / "bench/debian:base"
        while not (link / "usr/bin").exists():
            if time.monotonic() - pushed > 120:
                raise SystemExit("not published within 120 s")
            time.sleep(0.05)
        published = time.monotonic()
    finally:
        stop(worker)
        notify.stop()
    took = published - pushed
    return (f"push-to-published, 1-layer Debian base image (95 MB gzip): {took:.1f}s after the push completed "
            f"({published - started:.1f}s from the start of the push)   target <= 10 s: {'MET' if took <= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
