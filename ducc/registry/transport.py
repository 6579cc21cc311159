"""One request to a registry: the one place in ducc that talks HTTP.

``Transport.request`` sends one request to a registry's API, answers its
auth challenge and turns an error status into a typed error; ``Transport.send``
is the bare request beneath it, for a URL that is not a registry's API (a token
realm, an upload session given up), and returns any status it gets after its
retries. Both promise:

- Plain HTTP only for loopback hosts and the hosts in ``insecure`` (Docker's
  rule); HTTPS everywhere else.
- Credentials are sent only after a challenge, only to the challenging host or
  to the token realm it named, and to a realm only over HTTPS (plain HTTP only
  on the host of a registry that is itself reached over plain HTTP), never to a
  link-local, unspecified or multicast address. Redirects are followed here
  (GET and HEAD, at most ``MAX_REDIRECTS``; a loop is a permanent error) and
  drop ``Authorization`` when they leave the host, which is how blob downloads
  reach object storage.
- Nothing a registry sends is read past a limit, whatever its headers say: a
  token ``MAX_TOKEN_BYTES``, an error body ``MAX_ERROR_BYTES`` (the rest is
  dropped), any other body the ``limit`` its caller names (``MAX_BODY_BYTES``
  by default). Bodies are asked for in identity encoding, and one sent
  compressed anyway is inflated only up to the limit. A ``stream`` response is
  handed over unread: its reader bounds it.
- Every request is one transfer with a deadline that grows with its size
  (``ducc.registry.transfer``); one past it is cut off and is temporary, not
  retried in place. ``abort()`` (Ctrl-C) stops every transfer at once.
- Every request is retried on connection errors, timeouts, 5xx and 429 with
  exponential backoff; ``Retry-After`` is honoured. Exhausted retries raise
  ``RegistryUnavailable`` (temporary). ``request`` raises
  ``AuthenticationError`` for 401/403, ``NotFound`` for 404 (both permanent),
  ``RegistryError`` for other 4xx. This is where ducc's one retry policy
  (``ducc.registry.retry``) is applied: nothing above the transport retries
  registry requests (a blob download resumes from the same ``Attempts``, see
  ``ducc.registry.pull``).
"""

from __future__ import annotations

import base64
import http.client
import io
import ipaddress
import logging
import os
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ducc import __version__
from ducc.errors import AuthenticationError, NotFound, RegistryError, RegistryUnavailable
from ducc.model.reference import Reference
from ducc.registry.auth import ANONYMOUS, Keychain
from ducc.registry.challenge import parse_challenges
from ducc.registry.retry import Attempts, RetryPolicy, asked_delay
from ducc.registry.transfer import Transfer, TransferLimits, Watchdog, WatchedAdapter, sending

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 1 << 20
MAX_ERROR_BYTES = 64 << 10  # an error body is only quoted: the rest is dropped, never an error itself
MAX_BODY_BYTES = 1 << 20  # any other answer (upload sessions, pushes): registries send nothing or a few bytes
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)
STREAM_ERRORS = (  # what a request or a body read raises when the connection fails or breaks off
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    OSError,
)


def transport_reason(exc: BaseException, timeout: tuple[float, float] | None = None) -> str:
    """Why a request never got an answer, in a few words (``connection refused``, ``name does not
    resolve``, ``timed out``...), from the chain of errors ``requests`` and ``urllib3`` wrap around it."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        error = todo.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, socket.gaierror) or isinstance(error, urllib3.exceptions.NameResolutionError):
            return "name does not resolve"
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake failed: {error.reason or error}"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, ConnectionResetError):
            return "connection reset"
        if isinstance(error, http.client.IncompleteRead):
            return "the connection closed before the end of the body"
        if isinstance(error, (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)) and not \
                isinstance(error, urllib3.exceptions.NewConnectionError):
            return f"no connection within {timeout[0]:g}s" if timeout else "connection timed out"
        if isinstance(error, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
            return f"no answer within {timeout[1]:g}s" if timeout else "read timed out"
        if isinstance(error, OSError) and error.errno is not None and error.strerror:
            return error.strerror[0].lower() + error.strerror[1:]
        todo += [e for e in (getattr(error, "reason", None), error.__cause__, error.__context__, *error.args)
                 if isinstance(e, BaseException)]
    text = str(exc)
    return f"{exc.__class__.__name__}: {text[:200]}" if text else exc.__class__.__name__


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Transport:
    """Requests to registries with ducc's retry policy, credentials, limits and deadlines. One per
    client; thread-safe for concurrent downloads (the tokens it caches are shared)."""

    def __init__(
        self,
        *,
        keychain: Keychain = ANONYMOUS,
        insecure: Iterable[str] = (),
        retry: RetryPolicy = RetryPolicy(),
        timeout: tuple[float, float] = (10.0, 60.0),
        session: requests.Session | None = None,
        sleep: Callable[[float], None] | None = None,
        limits: TransferLimits = TransferLimits(),
    ) -> None:
        self.keychain = keychain
        self.insecure = frozenset(insecure)
        self.retry = retry
        self.timeout = timeout
        self.watchdog = Watchdog(limits)
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = f"ducc/{__version__}"
        self._session.headers["Accept-Encoding"] = "identity"  # a body's size on the wire is its size
        for scheme in ("http://", "https://"):
            self._session.mount(scheme, WatchedAdapter())
        self.sleep = sleep  # between attempts; None: wait on the transfer (a cancel or Ctrl-C ends the wait)
        self._authorization: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def base_url(self, host: str) -> str:
        """``host``'s API root: ``http://`` where ``plain_http`` says so, else ``https://``."""
        return f"{'http' if self.plain_http(host) else 'https'}://{host}"

    def plain_http(self, host: str) -> bool:
        """Whether ``host`` is reached over plain HTTP: loopback, or listed as insecure (Docker's rule)."""
        return is_loopback(host) or host in self.insecure

    def abort(self) -> None:
        """Stop every transfer now and refuse every later one (the process is interrupted): the threads
        reading from registries raise ``TransferInterrupted`` (a ``KeyboardInterrupt``) within a fraction
        of a second."""
        self.watchdog.abort()

    def send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        attempts: Attempts | None = None,
        transfer: Transfer | None = None,
        stream: bool = False,
        limit: int = MAX_BODY_BYTES,
        **kwargs: Any,
    ) -> requests.Response:
        """One request with retries on transport errors, 5xx and 429; other statuses are returned.

        ``attempts`` is the budget of the operation this request belongs to (a blob download and
        its resumptions share one); by default the request has a budget of its own. The body is read
        here, up to ``limit`` bytes (an error body up to ``MAX_ERROR_BYTES``), unless ``stream``: then
        a successful response is returned unread, and ``transfer`` (whose owner finishes it) must be given.
        A request belongs to ``transfer``, or to a transfer of its own: one past its deadline, or
        stopped, raises why at once and is not retried."""
        budget = attempts or Attempts(self.retry)
        own = transfer is None
        watched = transfer or self.watchdog.start(what, _body_size(kwargs.get("data")))
        try:
            return self._attempt(method, url, what, budget, watched, stream, limit, **kwargs)
        finally:
            if own:
                watched.finish()

    def _attempt(self, method: str, url: str, what: str, budget: Attempts, transfer: Transfer, stream: bool,
                 limit: int, **kwargs: Any) -> requests.Response:
        host = urlsplit(url).netloc
        last: RegistryUnavailable | None = None
        while budget.left:
            attempt = budget.used
            budget.used += 1
            retry_after = None
            transfer.check()
            try:
                with sending(transfer):
                    response = self._follow(method, url, what, **kwargs)
            except STREAM_ERRORS as exc:
                transfer.check()
                last = RegistryUnavailable(f"{what}: registry {host} unreachable: {transport_reason(exc, self.timeout)}")
            else:
                if response.status_code != 429 and response.status_code < 500:
                    if not stream or response.status_code >= 400:
                        _consume(response, transfer, limit if response.status_code < 400 else MAX_ERROR_BYTES, what)
                    return response
                retry_after = asked_delay(response)
                last = RegistryUnavailable(
                    f"{what}: registry {host} answered HTTP {response.status_code}",
                    status=response.status_code,
                    retry_after=retry_after,
                )
                response.close()
                transfer.release()
            if budget.left:
                delay = self.retry.delay(attempt, retry_after)
                log.info("%s; retrying in %.1fs (attempt %d/%d)", last, delay, attempt + 2, self.retry.attempts)
                transfer.wait(delay, self.sleep)
            if "data" in kwargs and hasattr(kwargs["data"], "seek"):
                kwargs["data"].seek(0)
        if last is None:
            raise RegistryUnavailable(f"{what}: no attempts left")
        tries = f"{budget.used} attempt{'s' if budget.used != 1 else ''}"
        raise RegistryUnavailable(f"{last} ({tries})", status=last.status, retry_after=last.retry_after)

    def _follow(self, method: str, url: str, what: str, *, headers: dict[str, str] | None = None,
                auth: tuple[str, str] | None = None, params: Any = None, **kwargs: Any) -> requests.Response:
        """One request and the redirects of a GET or HEAD, at most ``MAX_REDIRECTS`` of them; returns the
        first answer that is not a redirect, unread. Credentials (``Authorization``, ``auth``) go no
        further than the host they were meant for, nor from HTTPS to plain HTTP."""
        headers = dict(headers or {})
        origin = urlsplit(url)
        for _ in range(MAX_REDIRECTS + 1):
            response = self._session.request(method, url, timeout=self.timeout, stream=True, allow_redirects=False,
                                             headers=headers, auth=auth, params=params, **kwargs)
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECTS or method not in ("GET", "HEAD") or not location:
                return response
            response.close()  # unread: its connection is closed, never reused
            url, params = urljoin(response.url, location), None
            target = urlsplit(url)
            if target.netloc != origin.netloc or (origin.scheme == "https" and target.scheme != "https"):
                headers.pop("Authorization", None)
                auth = None
        raise RegistryError(f"{what}: more than {MAX_REDIRECTS} redirects (a redirect loop), last to {_safe_url(url)}",
                            status=response.status_code)

    def request(
        self,
        method: str,
        ref: Reference,
        path: str,
        *,
        what: str,
        actions: str = "pull",
        url: str | None = None,
        headers: dict[str, str] | None = None,
        attempts: Attempts | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """A request to ``ref``'s registry that answers auth challenges once, then maps errors.

        ``url`` may point elsewhere (an upload ``Location``): credentials go only to the registry's host.
        """
        host = ref.api_host
        scope = f"repository:{ref.repository}:{actions}"
        url = url or f"{self.base_url(host)}/v2/{ref.repository}/{path}"
        ours = urlsplit(url).netloc == host
        for authenticated in (False, True):
            request_headers = {**(headers or {}), **self.authorization(ref, actions, url)}
            response = self.send(method, url, what, attempts=attempts, headers=request_headers, **kwargs)
            if response.status_code == 401 and not authenticated and ours:
                challenge = response.headers.get("WWW-Authenticate", "")
                response.close()
                self._authenticate(host, scope, challenge, what)
                if hasattr(kwargs.get("data"), "seek"):
                    kwargs["data"].seek(0)  # the refused attempt consumed the body
                continue
            break
        status = response.status_code
        if status < 400:
            return response
        detail = _error_detail(response)
        response.close()
        if status in (401, 403):
            raise AuthenticationError(f"{what}: HTTP {status} {detail}".strip(), status=status)
        if status == 404:
            raise NotFound(f"{what}: not found {detail}".strip(), status=status)
        raise RegistryError(f"{what}: HTTP {status} {detail}".strip(), status=status)

    def authorization(self, ref: Reference, actions: str, url: str) -> dict[str, str]:
        """The ``Authorization`` header a request to ``url`` for ``actions`` on ``ref.repository`` carries
        now (from an answered challenge): none before one, and none for a ``url`` off the registry's host."""
        token = self._authorization.get((ref.api_host, f"repository:{ref.repository}:{actions}"))
        return {"Authorization": token} if token and urlsplit(url).netloc == ref.api_host else {}

    def _authenticate(self, host: str, scope: str, header: str, what: str) -> None:
        try:
            challenges = parse_challenges(header)
        except ValueError as exc:
            raise AuthenticationError(f"{what}: unreadable WWW-Authenticate header: {exc}") from exc
        credentials = self.keychain.credentials(host)
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.realm:
                refused = self.realm_refusal(challenge.realm, host, credentials is not None)
                if refused:
                    raise AuthenticationError(f"{what}: token realm {_safe_url(challenge.realm)} refused: {refused}")
                params: dict[str, str | list[str]] = {k: v for k, v in challenge.params.items() if k in ("service",)}
                # A challenge may name several scopes, space-separated (a cross-repository mount needs
                # pull on the source too); token services expect one ``scope`` parameter each.
                params["scope"] = challenge.params.get("scope", scope).split() or [scope]
                auth = (credentials.username, credentials.password) if credentials else None
                response = self.send("GET", challenge.realm, f"token for {host}", params=params, auth=auth,
                                      limit=MAX_TOKEN_BYTES)
                if response.status_code != 200:
                    response.close()
                    raise AuthenticationError(
                        f"{what}: token service {_safe_url(challenge.realm)} answered HTTP {response.status_code}"
                        + ("" if credentials else " (no credentials configured for this registry)"),
                        status=response.status_code,
                    )
                try:
                    body = response.json()
                    token = body.get("token") or body.get("access_token")
                except ValueError:
                    token = None
                if not token:
                    raise AuthenticationError(f"{what}: token service {_safe_url(challenge.realm)} returned no token")
                with self._lock:
                    self._authorization[(host, scope)] = f"Bearer {token}"
                return
            if challenge.scheme == "basic":
                if credentials is None:
                    raise AuthenticationError(f"{what}: registry {host} requires credentials; none configured")
                raw = f"{credentials.username}:{credentials.password}".encode()
                with self._lock:
                    self._authorization[(host, scope)] = "Basic " + base64.b64encode(raw).decode()
                return
        raise AuthenticationError(f"{what}: registry {host} asked for unsupported authentication")

    def realm_refusal(self, realm: str, host: str, with_credentials: bool) -> str | None:
        """Why the token realm a registry named must not be asked, or None.

        Never an address inside the machine's own network plumbing (link-local such as a cloud's
        metadata service, unspecified, multicast), with or without credentials. Credentials go over
        HTTPS only; plain HTTP only where the registry itself is reached over plain HTTP and the realm
        is on that same host (a test or lab registry and its token service)."""
        try:
            parts = urlsplit(realm)
            name = parts.hostname or ""
        except ValueError:
            return "not a URL"
        if parts.scheme not in ("http", "https") or not name:
            return "not an http(s) URL"
        for address in _addresses(name):
            if address.is_link_local or address.is_unspecified or address.is_multicast:
                return f"{name} is a link-local, unspecified or multicast address ({address})"
        if parts.scheme == "http" and with_credentials:
            registry = urlsplit(f"//{host}").hostname
            if not (self.plain_http(host) and name == registry):
                return "credentials go to a token service over HTTPS only"
        return None


def _consume(response: requests.Response, transfer: Transfer, limit: int, what: str) -> None:
    """Read ``response``'s body into it (``.content``, ``.json()`` then work), never more than ``limit``
    bytes from the socket. A body in identity encoding over ``limit`` is refused
    (``RegistryError``), an error body (4xx) cut short; a body the registry compressed although
    identity was asked for is inflated up to ``limit`` only."""
    # A HEAD answer has no body: its Content-Length is the size of what a GET would send (a blob's).
    length = response.headers.get("Content-Length", "") if response.request.method != "HEAD" else ""
    error = response.status_code >= 400
    if length.isdigit() and int(length) > limit and not error:
        response.close()
        raise RegistryError(f"{what}: the answer is larger than {limit} bytes ({length} announced)")
    transfer.expect(min(int(length), limit) if length.isdigit() else limit)
    data = bytearray()
    complete = False
    try:
        while len(data) <= limit:
            chunk = response.raw.read(min(1 << 16, limit + 1 - len(data)), decode_content=False)
            transfer.check()
            if not chunk:
                complete = True
                break
            data += chunk
            transfer.received = len(data)
        if complete:
            transfer.release()  # urllib3 put the connection back into the pool at the end of the body
    except STREAM_ERRORS as exc:
        transfer.check()
        response.close()
        raise RegistryUnavailable(f"{what}: download broke off: {transport_reason(exc)}") from exc
    if not complete:
        response.raw.close()  # the rest stays unread: this connection is never used again
        if not error:
            raise RegistryError(f"{what}: the answer is larger than {limit} bytes")
        del data[limit:]
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib framing
        try:
            inflated = inflate.decompress(bytes(data), limit + 1)
        except zlib.error as exc:
            raise RegistryError(f"{what}: unreadable {encoding} body: {exc}") from exc
        if len(inflated) > limit:
            if not error:
                raise RegistryError(f"{what}: the answer is larger than {limit} bytes ({encoding}-encoded)")
            inflated = inflated[:limit]
        data = bytearray(inflated)
    elif encoding not in ("", "identity") and not error:
        raise RegistryError(f"{what}: the registry sent a {encoding}-encoded body although identity was asked for")
    response._content = bytes(data)
    response._content_consumed = True  # type: ignore[attr-defined]  # so closing it returns the connection to the pool


def _body_size(data: object) -> int:
    """How many bytes a request sends (the transfer's deadline grows with them)."""
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    if isinstance(data, io.BytesIO):
        return len(data.getbuffer())
    fileno = getattr(data, "fileno", None)
    if fileno is not None:
        try:
            return os.fstat(fileno()).st_size
        except (OSError, ValueError):
            return 0
    return 0


def _safe_url(url: str) -> str:
    """``url`` without its query (a signed storage URL carries its signature there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else url


def _addresses(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses ``name`` stands for: itself if it is one, else what it resolves to (nothing if it
    does not resolve: the request then fails on its own)."""
    try:
        return [ipaddress.ip_address(name.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    found = []
    for info in infos:
        try:
            found.append(ipaddress.ip_address(str(info[4][0]).partition("%")[0]))
        except ValueError:
            continue
    return found


def _error_detail(response: requests.Response) -> str:
    """The registry's own error code and message, if it sent the spec's error body."""
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))[:300]
    except (ValueError, AttributeError):
        return ""
