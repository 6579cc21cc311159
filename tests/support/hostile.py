"""A small registry over ``http.server`` on loopback that misbehaves on purpose.

It serves one image (a ``BuiltImage``: manifest by tag and by digest, its blobs) the way the
distribution API does, and lets a test replace the answer to any path with its own: what a real
registry cannot be made to do (a body that never ends, one byte a second, a redirect loop, an
endless ``Link`` chain, a token realm elsewhere). Every request is recorded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ducc.model.digest import Digest
from ducc.model.reference import Reference
from tests.support.images import BuiltImage

Answer = Callable[[BaseHTTPRequestHandler], None]


class HostileRegistry:
    def __init__(self, image: BuiltImage, repository: str = "team/app", tag: str = "1") -> None:
        self.image = image
        self.repository = repository
        self.tag = tag
        self.routes: list[tuple[str | None, re.Pattern[str], Answer]] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as written, as a registry sends them

            def log_message(self, *args: object) -> None:
                pass

            def handle_any(self) -> None:
                with outer.lock:
                    outer.seen.append((self.command, self.path, dict(self.headers.items())))
                    answer = next((a for m, p, a in outer.routes if m in (None, self.command) and p.search(self.path)),
                                  outer.serve)
                try:
                    answer(self)
                except (BrokenPipeError, ConnectionResetError):  # the client hung up: what ducc should do
                    self.close_connection = True

            do_GET = do_HEAD = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def ref(self) -> Reference:
        return Reference(self.host, self.repository, self.tag)

    def on(self, path: str, answer: Answer, method: str | None = None) -> None:
        """Answer requests whose path matches ``path`` (a regex) with ``answer`` instead."""
        with self.lock:
            self.routes.append((method, re.compile(path), answer))

    def requests(self, path: str = "", method: str | None = None) -> list[str]:
        with self.lock:
            return [p for m, p, _ in self.seen if re.search(path, p) and method in (None, m)]

    def serve(self, h: BaseHTTPRequestHandler) -> None:
        """What a well-behaved registry answers."""
        prefix = f"/v2/{self.repository}/"
        path = h.path.split("?")[0]
        body, media = None, "application/json"
        if path == "/v2/":
            body = b"{}"
        elif path in (prefix + f"manifests/{self.tag}", prefix + f"manifests/{self.image.digest}"):
            body, media = self.image.manifest, self.image.manifest_media_type
        elif path.startswith(prefix + "blobs/"):
            try:
                body = self.image.blobs.get(Digest.parse(path.rsplit("/", 1)[1]))
            except ValueError:
                body = None
            media = "application/octet-stream"
        if body is None:
            send(h, 404, b'{"errors":[{"code":"NOT_FOUND","message":"no such thing"}]}')
            return
        send(h, 200, body, {"Content-Type": media, "Docker-Content-Digest": str(self.image.digest)}
             if "/manifests/" in path else {"Content-Type": media})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def trickle(body: bytes, *, length: bool = True, headers: dict[str, str] | None = None,
            per_second: float = 1.0) -> Answer:
    """``body`` at ``per_second`` bytes a second: a link that never stalls long enough for a read timeout."""
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Length" if length else "Connection", str(len(body)) if length else "close")
        h.end_headers()
        h.wfile.flush()
        if h.command == "HEAD":
            return
        for i in range(len(body)):
            h.wfile.write(body[i:i + 1])
            h.wfile.flush()
            time.sleep(1 / per_second)
        h.close_connection = True
    return answer


def endless(chunk: bytes = b"\0" * 65536, headers: dict[str, str] | None = None, status: int = 200) -> Answer:
    """A body without ``Content-Length`` that never ends; ``sent`` counts what went out."""
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        while h.command != "HEAD":
            h.wfile.write(chunk)
            with answer_lock:
                sent[0] += len(chunk)
    answer_lock = threading.Lock()
    sent = [0]
    answer.sent = sent  # type: ignore[attr-defined]
    return answer


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes: the process's own high-water mark (ru_maxrss of exactly this child)


# Linux keeps a process's memory high-water mark across exec, and a forked child starts with its
# parent's: a ``ducc`` started straight from a pytest process that has grown (a test held a large file)
# would report pytest's size. So a small Python process starts ``ducc`` and reports that child's own
# ``wait4`` rusage, and its exit status, in a file; it passes SIGINT on.
_LAUNCHER = """
import json, os, signal, sys
report, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "ducc", *argv])
signal.signal(signal.SIGINT, lambda *_: os.kill(pid, signal.SIGINT))
while True:
    try:
        _, status, usage = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
with open(report, "w") as fh:
    json.dump({"code": os.waitstatus_to_exitcode(status), "maxrss": usage.ru_maxrss * 1024}, fh)
"""


def run_measured(args: list[str], env: dict[str, str], *, timeout: float = 120,
                 interrupt_after: Callable[[], bool] | None = None) -> Measured:
    """``python -m ducc ARGS`` as a child process, with its run time and peak memory (``wait4``'s rusage
    of that one process, started by a small launcher: see ``_LAUNCHER``). With ``interrupt_after``,
    SIGINT is sent once it returns True; ``seconds`` is then counted from the signal."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(report), *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        out: dict[str, bytes] = {}
        readers = [threading.Thread(target=lambda n=name, s=stream: out.__setitem__(n, s.read()), daemon=True)
                   for name, stream in (("out", proc.stdout), ("err", proc.stderr))]
        for reader in readers:
            reader.start()
        killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        killer.start()
        if interrupt_after is not None:
            while not interrupt_after():
                time.sleep(0.05)
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
        launcher_code = proc.wait()
        seconds = time.monotonic() - started
        killer.cancel()
        for reader in readers:
            reader.join()
        measured = json.loads(report.read_text()) if report.exists() else {"code": launcher_code, "maxrss": 0}
    return Measured(measured["code"], out["out"].decode(), out["err"].decode(), seconds, measured["maxrss"])


def ducc_env(root: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DUCC_ROOT": str(root), "DUCC_CACHE_DIR": "off", "DUCC_RETRY_ATTEMPTS": "2",
            "DUCC_LOG_LEVEL": "WARNING", **extra}
