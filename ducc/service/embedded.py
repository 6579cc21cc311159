"""``ducc serve``: the whole service on one machine in one command.

Runs, as child processes it supervises: an embedded Redis (``redis-server`` on
a unix socket under ``DUCC_STATE_DIR``, with an append-only file written before
every answer, so an accepted request survives any process crash; fsynced every
second, or on every write with ``DUCC_REDIS_FSYNC=always``) unless
``DUCC_REDIS_URL`` is set; a worker; beat (the nightly wishlist sync and reconciliation); and the
web app under gunicorn on ``DUCC_LISTEN``. A child that dies is restarted;
SIGTERM/SIGINT stop everything in order. Children die with the supervisor
(PR_SET_PDEATHSIG), so nothing is left behind whatever happens to it.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ducc.settings import Settings

log = logging.getLogger("ducc.serve")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        log.info("starting %s", self.name)
        self.process = subprocess.Popen(self.argv, env=self.env, preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()


def redis_config(state: Path, socket: Path, fsync: str) -> list[str]:
    return [
        "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
        "--dir", str(state), "--appendonly", "yes", "--appendfsync", fsync,
        "--save", "", "--daemonize", "no", "--loglevel", "warning",
    ]


def start_redis(settings: Settings) -> tuple[Child, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (./bootstrap.sh installs it) and DUCC_REDIS_URL is not set")
    state = settings.embedded_redis_dir
    state.mkdir(parents=True, exist_ok=True)
    child = Child("redis", [binary, *redis_config(state, settings.embedded_redis_socket, settings.redis_fsync)], dict(settings.env))
    child.start()
    url = settings.embedded_redis_url
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError("the embedded redis-server exited at start; see its messages above")
        try:
            if redis.Redis.from_url(url).ping():
                return child, url
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError("the embedded redis-server did not answer within 30s")


def serve(settings: Settings, *, root: Path, wishlist: Path | None, web: bool = True) -> int:
    env = dict(settings.env)
    env["DUCC_ROOT"] = str(root.resolve())
    if wishlist is not None:
        env["DUCC_WISHLIST"] = str(wishlist.resolve())
    children: list[Child] = []
    if not settings.redis_url:
        redis_child, url = start_redis(settings)
        children.append(redis_child)
        env["DUCC_REDIS_URL"] = url
        # The embedded Redis has no password (its socket is private to this user): none is sent to it.
        for name in ("DUCC_REDIS_PASSWORD", "DUCC_REDIS_PASSWORD_FILE"):
            env.pop(name, None)
        log.info("embedded Redis at %s (data in %s)", url, settings.embedded_redis_dir)
    ducc = [sys.executable, "-m", "ducc"]
    services = [Child("worker", [*ducc, "worker"], env), Child("beat", [*ducc, "beat"], env)]
    if web:
        services.append(Child("web", [*ducc, "web"], env))
    for child in services:
        child.start()
    children.extend(services)
    log.info("ducc is serving %s%s", root, f" on http://{settings.listen}" if web else "")

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            time.sleep(0.5)
            for child in children:
                if child.alive() or stopping:
                    continue
                code = child.process.returncode if child.process else None
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                if len(child.restarts) > 5:
                    log.error("%s keeps dying (exit %s); stopping the service", child.name, code)
                    stopping = True
                    break
                log.error("%s exited with %s; restarting it", child.name, code)
                child.start()
    finally:
        for child in reversed(children):  # web, beat, worker first; Redis last
            child.stop()
    log.info("ducc stopped")
    return 0
