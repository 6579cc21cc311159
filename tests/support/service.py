"""Real service processes for tests: redis-server, ``ducc worker``, ``ducc serve``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.processes import free_port, stop_process, wait_for_port


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen
    directory: Path
    password: str | None = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, password=self.password)

    def stop(self) -> None:
        stop_process(self.process)


def start_redis(directory: Path, password: str | None = None) -> RedisServer:
    """A redis-server on a free loopback port; with ``password``, it demands it (given on its standard
    input, never in its arguments). ``url`` never contains the password."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run ./bootstrap.sh")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [binary, "-", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "no", "--loglevel", "warning"],
        stdin=subprocess.PIPE, stdout=open(directory / "redis.log", "ab"), stderr=subprocess.STDOUT,
    )
    assert process.stdin is not None
    process.stdin.write(f'requirepass "{password}"\n'.encode() if password else b"")
    process.stdin.close()
    wait_for_port(port, process=process)
    return RedisServer(f"redis://127.0.0.1:{port}/0", process, directory, password)


@dataclass
class DuccProcess:
    """A ``ducc`` subcommand running as its own process, its output in a log file."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def start(self) -> DuccProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ducc", *self.argv], env=self.env,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ducc {' '.join(self.argv)} exited:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{text!r} not seen in the log of ducc {' '.join(self.argv)}:\n{self.log()[-3000:]}")

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def ducc_cli(*args: str, env: dict[str, str], cwd: Path | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``ducc ARGS`` run to its end as its own process, its output captured as text."""
    return subprocess.run([sys.executable, "-m", "ducc", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def service_env(root: Path, redis_url: str | None, state: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "DUCC_ROOT": str(root), "DUCC_CACHE_DIR": "off", "DUCC_STATE_DIR": str(state),
           "DUCC_JOB_RETRY_BASE": "1", "DUCC_RETRY_ATTEMPTS": "2", "DUCC_LOG_LEVEL": "INFO", **extra}
    if redis_url:
        env["DUCC_REDIS_URL"] = redis_url
    else:
        env.pop("DUCC_REDIS_URL", None)
    return env
