"""A fault-injecting HTTP proxy in front of a real registry.

Rules match requests by method and a regex on the path, act a number of
times, then step aside. Every request is recorded (method, path, headers), so
tests can assert what the client did (only a HEAD, no Authorization leaked).
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from ducc.model.reference import Reference


@dataclass
class Rule:
    method: str | None
    path: re.Pattern[str]
    action: str  # status | truncate | corrupt | redirect | paginate | slow | swallow | relative_location | stall
    times: int
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    keep_bytes: int = 0
    location: Callable[[str], str] | None = None
    seconds: float = 0.0  # stall: how long the answer waits (a registry that does not answer in time)
    body: bytes = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'  # status: the error body sent

    def matches(self, method: str, path: str) -> bool:
        return self.times != 0 and (self.method in (None, method)) and bool(self.path.search(path))


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_any(self) -> None:
                proxy.handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- rules -------------------------------------------------------------------------

    def add(self, action: str, path: str, *, method: str | None = "GET", times: int = 1, **kwargs: object) -> Rule:
        rule = Rule(method, re.compile(path), action, times, **kwargs)  # type: ignore[arg-type]
        with self.lock:
            self.rules.append(rule)
        return rule

    def requests(self, method: str | None = None, path: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if (method is None or s.method == method) and re.search(path, s.path)]

    def _rule_for(self, method: str, path: str, headers: dict[str, str]) -> Rule | None:
        with self.lock:
            self.seen.append(Seen(method, path, headers))
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    return rule
        return None

    # -- handling ----------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        rule = self._rule_for(h.command, h.path, dict(h.headers.items()))
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        if rule is not None and rule.action == "status":
            self._answer(h, rule)
            return
        if rule is not None and rule.action == "redirect":
            assert rule.location is not None
            h.send_response(307)
            h.send_header("Location", rule.location(h.path))
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if rule is not None and rule.action == "paginate":
            self._paginate(h, rule)
            return
        if rule is not None and rule.action == "stall":
            time.sleep(rule.seconds)
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
        headers["Host"] = self.host
        conn.request(h.command, h.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if rule is not None and rule.action == "swallow":
            # the registry did the work, but the client hears rule.status: a reply lost on the way back
            conn.close()
            self._answer(h, rule)
            return
        h.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() in ("connection", "transfer-encoding", "content-length"):
                continue
            if k.lower() == "location":
                v = v.replace(self.upstream, self.host)
                if rule is not None and rule.action == "relative_location":
                    parts = urlsplit(v)
                    v = parts.path + (f"?{parts.query}" if parts.query else "")
            h.send_header(k, v)
        announced = response.getheader("Content-Length")
        if rule is not None and rule.action == "corrupt" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if rule is not None and rule.action == "truncate":
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(data[: rule.keep_bytes])
            h.wfile.flush()
            h.close_connection = True
            return
        h.send_header("Content-Length", announced if h.command == "HEAD" and announced else str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            if rule is not None and rule.action == "slow":
                # keep_bytes per 0.1 s: a slow link, so tests can act in the middle of a download
                for offset in range(0, len(data), max(1, rule.keep_bytes)):
                    h.wfile.write(data[offset : offset + rule.keep_bytes])
                    h.wfile.flush()
                    time.sleep(0.1)
            else:
                h.wfile.write(data)
        conn.close()


    def _answer(self, h: BaseHTTPRequestHandler, rule: Rule) -> None:
        """The ``status`` answer: an error body with the rule's status (``swallow`` sends it after the registry has done the work)."""
        payload = rule.body
        h.send_response(rule.status)
        for k, v in rule.headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(payload)

    def _paginate(self, h: BaseHTTPRequestHandler, rule: Rule) -> None:
        """Serve the registry's tag list in pages of ``rule.keep_bytes`` tags, with ``Link`` headers,
        like registries that paginate (distribution 3, Docker Hub, Harbor)."""
        import json
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        conn.request("GET", parts.path, headers={k: v for k, v in h.headers.items() if k.lower() == "authorization"})
        upstream = conn.getresponse()
        body = json.loads(upstream.read())
        conn.close()
        tags = sorted(body.get("tags") or [])
        last = query.get("last", [""])[0]
        page_size = rule.keep_bytes
        remaining = [t for t in tags if t > last]
        page = remaining[:page_size]
        payload = json.dumps({"name": body.get("name"), "tags": page}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if len(remaining) > page_size:
            h.send_header("Link", f'<{parts.path}?last={page[-1]}&n={page_size}>; rel="next"')
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)


class RecordingServer:
    """A plain HTTP server that serves blobs fetched from a registry and records request headers
    (the "object storage" a registry redirects blob downloads to)."""

    def __init__(self, upstream: str) -> None:
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.seen.append({k: v for k, v in self.headers.items()})
                conn = http.client.HTTPConnection(upstream, timeout=60)
                conn.request("GET", self.path, headers={"Authorization": outer.upstream_auth} if outer.upstream_auth else {})
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.upstream_auth = ""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def via(proxy: FaultProxy, ref: Reference) -> Reference:
    """``ref`` reached through ``proxy`` (same repository, tag and digest)."""
    return Reference(proxy.host, ref.repository, ref.tag, ref.digest)
