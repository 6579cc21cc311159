"""The commands the Helm chart gives Kubernetes, run for real on this machine: the bundled Redis's start
script and probes (a real redis-server, its password from a file as the Secret mounts it), and the worker's
liveness probe against a real ``ducc worker`` started with the chart's arguments. Kubernetes' own part is
done as Kubernetes does it: ``$(VAR)`` in args and env values is expanded from earlier variables, and paths
of mounted volumes are replaced by directories of this test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support.helm import container, helm_binary, objects
from tests.support.processes import free_port, stop_process, wait_for_port
from tests.support.service import DuccProcess, service_env

PASSWORD = "Chart0Probe0Password0123456789ab"


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def sh(command: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def rendered_port():
    port = free_port()
    return objects(helm_binary(), "secrets.webhookToken=x", f"secrets.redisPassword={PASSWORD}", f"redis.port={port}"), port


@pytest.fixture
def chart_redis(rendered_port, tmp_path):
    """The chart's Redis container command, run with the password file where the Secret would be."""
    rendered, port = rendered_port
    redis_container = container(rendered[("StatefulSet", "t-ducc-redis")])
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "redis-password").write_text(PASSWORD)  # a Secret file holds the bare value
    data = tmp_path / "data"
    data.mkdir()

    def mounted(text: str) -> str:
        return text.replace("/run/secrets/redis", str(secret_dir)).replace("--dir /data", f"--dir {data}")

    command = [mounted(part) for part in redis_container["command"]]
    # Loopback only on a test machine; the pod listens on its own address.
    command[-1] = command[-1].replace(f"--port {port} ", f"--port {port} --bind 127.0.0.1 ")
    env = {"PATH": "/usr/bin:/bin"}
    log = open(tmp_path / "redis.log", "ab")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, process=process)
    probes = {name: [mounted(part) for part in redis_container[name]["exec"]["command"]]
              for name in ("readinessProbe", "livenessProbe")}
    yield process, port, probes, secret_dir, env
    stop_process(process)


def test_the_chart_redis_demands_the_password_and_never_shows_it(chart_redis):
    process, port, probes, secret_dir, env = chart_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    assert redis.Redis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{port}/0").ping()
    proc = Path(f"/proc/{process.pid}")
    assert PASSWORD.encode() not in (proc / "cmdline").read_bytes()
    assert PASSWORD.encode() not in (proc / "environ").read_bytes()
    # The script execs redis-server (Debian's is a link to redis-check-rdb): it is the container's process.
    assert (proc / "exe").resolve().name.startswith("redis-"), (proc / "exe").resolve()

    assert sh(probes["readinessProbe"], env).returncode == 0
    assert sh(probes["livenessProbe"], env).returncode == 0
    (secret_dir / "redis-password").write_text("not-the-password")
    assert sh(probes["readinessProbe"], env).returncode != 0, "a wrong password is not ready"
    assert sh(probes["livenessProbe"], env).returncode == 0, "but it is alive: no restart loop for a bad Secret"


def test_the_worker_liveness_probe_pings_exactly_this_worker(rendered_port, chart_redis, tmp_path):
    """The worker and its probe read the Redis password from the Secret's file: it is in no process's
    arguments or environment and in no log line, and the probe is answered by this worker only."""
    rendered, port = rendered_port
    _, _, _, secret_dir, _ = chart_redis
    worker = container(rendered[("Deployment", "t-ducc-worker")])
    pod_env = {"POD_NAME": "t-ducc-worker-5d9c-abcde"}
    for item in worker["env"]:  # in order, as Kubernetes expands them
        if "value" in item:
            pod_env[item["name"]] = expand(item["value"], pod_env)
    assert pod_env["DUCC_REDIS_URL"] == f"redis://t-ducc-redis:{port}/0"
    assert PASSWORD not in str(pod_env)
    password_file = pod_env["DUCC_REDIS_PASSWORD_FILE"].replace("/run/secrets/ducc", str(secret_dir))
    url = f"redis://127.0.0.1:{port}/0"  # the Service's name is the pod's business: loopback here
    args = [expand(arg, pod_env) for arg in worker["args"]]
    assert args[-2:] == ["--name", f"ducc@{pod_env['POD_NAME']}"]
    env = service_env(tmp_path / "repo", url, tmp_path / "state", DUCC_REDIS_PASSWORD_FILE=password_file)
    proc = DuccProcess(args, env, tmp_path / "worker.log").start()
    try:
        proc.wait_for_log("ready.")
        for pid in [proc.process.pid, *_children(proc.process.pid)]:
            for view in ("cmdline", "environ"):
                assert PASSWORD.encode() not in Path(f"/proc/{pid}/{view}").read_bytes(), f"{view} of {pid}"
        probe = worker["livenessProbe"]["exec"]["command"]
        probe_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DUCC_REDIS_URL": url,
                     "DUCC_REDIS_PASSWORD_FILE": password_file, "POD_NAME": pod_env["POD_NAME"],
                     "HOME": os.environ.get("HOME", "/root")}
        alive = sh(probe, probe_env)
        assert alive.returncode == 0, alive.stdout + alive.stderr
        assert f"ducc@{pod_env['POD_NAME']}" in alive.stdout
        other = sh(probe, {**probe_env, "POD_NAME": "t-ducc-worker-5d9c-zzzzz"})
        assert other.returncode != 0, "a probe must not be answered by another pod's worker"
        for output in (alive.stdout, alive.stderr, other.stdout, other.stderr, proc.log()):
            assert PASSWORD not in output
    finally:
        proc.stop()
    dead = sh(probe, probe_env)
    assert dead.returncode != 0, "a stopped worker fails its liveness probe"
    assert "Traceback" not in dead.stderr and "did not answer" in dead.stderr


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Celery's pool processes)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_children(int(child))]
    return found
