"""Real server processes for tests, each on a free loopback port, stopped when the test session ends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ten seconds."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition, what: str, timeout: float = 120.0, interval: float = 0.2):
    """Poll ``condition`` until it returns something true, and return that; TimeoutError(``what``) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError(what)


def bytes_written(pids: list[int]) -> int:
    """What the processes ``pids`` have written so far: the ``wchar`` of /proc/PID/io, every write call to
    files, pipes and sockets alike, all threads included. A process that is gone counts as nothing."""
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/io").read_text().splitlines()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in lines if line.startswith("wchar:"))
    return total


def _processes_where(field: int, value: int) -> list[int]:
    """The pids whose ``/proc/PID/stat`` has ``value`` at ``field`` (counted after the command's name:
    1 is the parent pid, 2 the process group)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[field]) == value:
            found.append(int(stat.parent.name))
    return found


def process_group(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (a process started with ``start_new_session`` leads one)."""
    return _processes_where(2, pgid)


def children(pid: int) -> list[int]:
    """The direct children of process ``pid``."""
    return _processes_where(1, pid)


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Registry:
    """A running ``docker-registry`` (CNCF distribution) process."""

    host: str
    process: subprocess.Popen
    directory: Path
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        stop_process(self.process)


def registry_binary() -> str:
    found = shutil.which("docker-registry") or shutil.which("registry")
    if not found:
        raise RuntimeError("docker-registry is not installed: run ./bootstrap.sh (apt package docker-registry)")
    return found


def start_registry(directory: Path, *, username: str | None = None, password: str | None = None,
                   notifications: dict | None = None, token: dict | None = None) -> Registry:
    """Start a registry storing under ``directory``; with Basic auth (htpasswd) if a username is given,
    with Bearer-token auth if ``token`` (realm, service, issuer, rootcertbundle) is given."""
    import json

    import bcrypt

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(directory / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "ducc-tests"},
    }
    if username:
        hashed = bcrypt.hashpw((password or "").encode(), bcrypt.gensalt(rounds=5)).decode()
        (directory / "htpasswd").write_text(f"{username}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "ducc-test", "path": str(directory / "htpasswd")}}
    if token:
        config["auth"] = {"token": token}
    if notifications:
        config["notifications"] = notifications
    config_path = directory / "config.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log = open(directory / "registry.log", "ab")
    process = subprocess.Popen(
        [registry_binary(), "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
    )
    wait_for_port(port, process=process)
    registry = Registry(f"127.0.0.1:{port}", process, directory, username, password)
    # The API answers once storage is ready.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{registry.url}/v2/", timeout=2).status_code in (200, 401):
                return registry
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    registry.stop()
    raise TimeoutError("registry did not answer /v2/")


def blocked_on_a_lock(pid: int) -> bool:
    """Whether a thread of process ``pid`` waits for an flock (the kernel lists waiters with ``->``)."""
    with open("/proc/locks") as fh:  # "2: -> FLOCK  ADVISORY  WRITE <pid> <dev:inode> 0 EOF"
        for fields in (line.split() for line in fh):
            if "->" in fields and "FLOCK" in fields and fields[fields.index("FLOCK") + 3] == str(pid):
                return True
    return False
