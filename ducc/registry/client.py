"""The registry HTTP API (OCI distribution spec) over ``requests``.

Promises:

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
  manifest ``MAX_MANIFEST_BYTES``, a token ``MAX_TOKEN_BYTES``, a tag page
  ``MAX_TAG_PAGE_BYTES``, an error body ``MAX_ERROR_BYTES`` (the rest is
  dropped); bodies are asked for in identity encoding, and one sent compressed
  anyway is inflated only up to the limit. A blob is read up to the size its
  manifest declares plus one byte, then refused. Tag lists follow at most
  ``max_tag_pages`` pages and ``max_tags`` tags.
- Every transfer has a deadline that grows with its size
  (``ducc.registry.transfer``); one past it is cut off and is temporary, not
  retried in place. ``abort()`` (Ctrl-C) stops every transfer at once, and a
  blob's ``heartbeat`` (a job's cancel check) is called while it downloads,
  even while no byte arrives.
- Every request is retried on connection errors, timeouts, 5xx and 429 with
  exponential backoff; ``Retry-After`` is honoured. Exhausted retries raise
  ``RegistryUnavailable`` (temporary). 401/403 raise ``AuthenticationError``,
  404 ``NotFound`` (both permanent). This is ducc's one retry policy: a blob
  download that breaks off is resumed here (``Range``), from the same budget
  of attempts, so nothing above the client retries registry requests.
- Manifests are verified against the digest they were asked by, and against
  ``Docker-Content-Digest``. Blobs are verified by the caller while streaming
  (see ``ducc.verify``): the client never holds a layer in memory.
- Pushing follows the spec's upload flow and the ``Location`` the registry
  gives; an upload holds at most one chunk in memory, and a blob is visible only
  once its closing ``PUT ?digest=`` succeeded (the registry verifies it there).
  An upload ``Location`` on another host gets no credentials.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import io
import ipaddress
import logging
import os
import random
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import urllib3

from ducc import __version__
from ducc.errors import (
    AuthenticationError,
    DigestMismatch,
    InvalidManifest,
    NotFound,
    RegistryError,
    RegistryUnavailable,
)
from ducc.model import mediatypes
from ducc.model.digest import Digest
from ducc.model.manifest import Index, Manifest, parse_manifest
from ducc.model.reference import Reference
from ducc.registry.auth import ANONYMOUS, Keychain
from ducc.registry.challenge import parse_challenges
from ducc.registry.transfer import Transfer, Watchdog, WatchedAdapter, sending
from ducc.registry.transfer import TransferLimits as TransferLimits  # the composition root builds one

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20
MAX_TOKEN_BYTES = 1 << 20
MAX_TAG_PAGE_BYTES = 16 << 20
MAX_ERROR_BYTES = 64 << 10  # an error body is only quoted: the rest is dropped, never an error itself
MAX_BODY_BYTES = 1 << 20  # any other answer (upload sessions, pushes): registries send nothing or a few bytes
MAX_REDIRECTS = 10
MAX_TAG_PAGES = 1000
MAX_TAGS = 100_000
_REDIRECTS = (301, 302, 303, 307, 308)
BlobOutcome = Literal["present", "mounted", "uploaded"]
UPLOAD_CHUNK_SIZE = 64 << 20  # larger blobs go up in PATCH chunks of this size (bounded memory, proxy body limits)
_STREAM_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    OSError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay * 4)
        backoff = min(self.base_delay * 2.0**attempt, self.max_delay)
        return backoff * (0.5 + random.random() / 2)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, float(parsed.timestamp()) - time.time())


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


class Attempts:
    """The attempts one operation may still make under a RetryPolicy (shared by its requests)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.used = 0

    @property
    def left(self) -> bool:
        return self.used < self.policy.attempts


class BlobStream:
    """An open blob download. A transfer that breaks off is resumed where it stopped (``Range``; a
    registry that ignores it is read past the bytes already delivered), from the blob's budget of
    attempts; when that is spent ``read`` raises ``RegistryUnavailable``.

    With ``size`` (the manifest's word) nothing past ``size + 1`` bytes is ever read: the byte after
    the declared size is refused at once (``DigestMismatch``, permanent), whatever ``Content-Length``
    says or if there is none. The whole download, resumptions included, is one transfer under the
    client's watchdog (its deadline, the ``heartbeat``, an abort)."""

    def __init__(self, client: RegistryClient, ref: Reference, digest: Digest, what: str, attempts: Attempts,
                 size: int | None = None, heartbeat: Callable[[], object] | None = None) -> None:
        self._client = client
        self._ref = ref
        self._digest = digest
        self._what = what
        self._attempts = attempts
        self._offset = 0
        self._bound = size
        self._transfer = client.watchdog.start(what, size or 0, heartbeat)
        try:
            self._response = client._request("GET", ref, f"blobs/{digest}", what=what, stream=True,
                                             attempts=attempts, transfer=self._transfer)
        except BaseException:
            self._transfer.finish()
            raise
        length = self._response.headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None
        if self.size is not None and size is not None and self.size > size:
            self.close()
            raise DigestMismatch(f"{what}: size", f"{size} bytes", f"{self.size} bytes (Content-Length)")
        if size is None and self.size is not None:
            self._transfer.expect(self.size)

    def read(self, n: int = -1, /) -> bytes:
        if self._bound is not None:
            room = self._bound + 1 - self._offset
            n = room if n < 0 else min(n, room)
            if n <= 0:
                raise self._too_large()
        while True:
            try:
                data: bytes = self._response.raw.read(n if n >= 0 else None, decode_content=False) or b""
            except _STREAM_ERRORS as exc:
                self._transfer.check()  # stopped by the watchdog: its reason, not the socket's
                error = RegistryUnavailable(
                    f"download of {self._what} broke off at byte {self._offset}: {transport_reason(exc, self._client.timeout)}")
                self._resume(error)
                continue
            self._transfer.check()  # a shut-down socket reads as the end of the body: it is not
            if not data:
                self._transfer.release()  # the connection is back in the pool
            self._offset += len(data)
            self._transfer.received = self._offset
            if self._bound is not None and self._offset > self._bound:
                raise self._too_large()
            return data

    def _too_large(self) -> DigestMismatch:
        return DigestMismatch(f"{self._what}: size", f"{self._bound} bytes", f"more than {self._bound} bytes")

    def _resume(self, error: RegistryUnavailable) -> None:
        self._response.close()
        self._transfer.release()
        if not self._attempts.left:
            raise error
        delay = self._client.retry.delay(self._attempts.used - 1)
        log.info("%s; resuming in %.1fs (attempt %d/%d)", error, delay, self._attempts.used + 1,
                 self._attempts.policy.attempts)
        self._transfer.wait(delay, self._client._sleep)
        response = self._client._request(
            "GET", self._ref, f"blobs/{self._digest}", what=self._what, stream=True, attempts=self._attempts,
            headers={"Range": f"bytes={self._offset}-"}, transfer=self._transfer,
        )
        if response.status_code == 206:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
            if start != str(self._offset):
                response.close()
                raise RegistryUnavailable(f"{self._what}: resumed at {start or '?'} instead of byte {self._offset}")
        else:  # the whole blob again: skip what was delivered (the digest check covers the rest)
            skip = self._offset
            while skip:
                chunk = response.raw.read(min(skip, 1 << 20), decode_content=False)
                self._transfer.check()
                if not chunk:
                    response.close()
                    raise error
                skip -= len(chunk)
        self._response = response

    def close(self) -> None:
        try:
            self._response.close()
        finally:
            self._transfer.finish()


class RegistryClient:
    """One client per process; thread-safe for concurrent downloads."""

    def __init__(
        self,
        *,
        keychain: Keychain = ANONYMOUS,
        insecure: Iterable[str] = (),
        retry: RetryPolicy = RetryPolicy(),
        timeout: tuple[float, float] = (10.0, 60.0),
        session: requests.Session | None = None,
        sleep: Callable[[float], None] | None = None,
        upload_chunk_size: int = UPLOAD_CHUNK_SIZE,
        limits: TransferLimits = TransferLimits(),
        max_tag_pages: int = MAX_TAG_PAGES,
        max_tags: int = MAX_TAGS,
    ) -> None:
        self.keychain = keychain
        self.insecure = frozenset(insecure)
        self.retry = retry
        self.timeout = timeout
        self.watchdog = Watchdog(limits)
        self.max_tag_pages = max_tag_pages
        self.max_tags = max_tags
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = f"ducc/{__version__}"
        self._session.headers["Accept-Encoding"] = "identity"  # a body's size on the wire is its size
        for scheme in ("http://", "https://"):
            self._session.mount(scheme, WatchedAdapter())
        self._sleep = sleep  # between attempts; None: wait on the transfer (a cancel or Ctrl-C ends the wait)
        self.upload_chunk_size = max(1, upload_chunk_size)
        self._authorization: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    # -- transport -----------------------------------------------------------------------

    def base_url(self, host: str) -> str:
        return f"{'http' if self.plain_http(host) else 'https'}://{host}"

    def plain_http(self, host: str) -> bool:
        """Whether ``host`` is reached over plain HTTP: loopback, or listed as insecure (Docker's rule)."""
        return is_loopback(host) or host in self.insecure

    def abort(self) -> None:
        """Stop every transfer now and refuse every later one (the process is interrupted): the threads
        reading from registries raise ``TransferInterrupted`` (a ``KeyboardInterrupt``) within a fraction
        of a second."""
        self.watchdog.abort()

    def _send(
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
            except _STREAM_ERRORS as exc:
                transfer.check()
                last = RegistryUnavailable(f"{what}: registry {host} unreachable: {transport_reason(exc, self.timeout)}")
            else:
                if response.status_code != 429 and response.status_code < 500:
                    if not stream or response.status_code >= 400:
                        _consume(response, transfer, limit if response.status_code < 400 else MAX_ERROR_BYTES, what)
                    return response
                retry_after = _retry_after(response)
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
                transfer.wait(delay, self._sleep)
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

    def _request(
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
            request_headers = dict(headers or {})
            token = self._authorization.get((host, scope))
            if token and ours:
                request_headers["Authorization"] = token
            response = self._send(method, url, what, attempts=attempts, headers=request_headers, **kwargs)
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

    def _authenticate(self, host: str, scope: str, header: str, what: str) -> None:
        try:
            challenges = parse_challenges(header)
        except ValueError as exc:
            raise AuthenticationError(f"{what}: unreadable WWW-Authenticate header: {exc}") from exc
        credentials = self.keychain.credentials(host)
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.realm:
                refused = self._realm_refusal(challenge.realm, host, credentials is not None)
                if refused:
                    raise AuthenticationError(f"{what}: token realm {_safe_url(challenge.realm)} refused: {refused}")
                params: dict[str, str | list[str]] = {k: v for k, v in challenge.params.items() if k in ("service",)}
                # A challenge may name several scopes, space-separated (a cross-repository mount needs
                # pull on the source too); token services expect one ``scope`` parameter each.
                params["scope"] = challenge.params.get("scope", scope).split() or [scope]
                auth = (credentials.username, credentials.password) if credentials else None
                response = self._send("GET", challenge.realm, f"token for {host}", params=params, auth=auth,
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

    def _realm_refusal(self, realm: str, host: str, with_credentials: bool) -> str | None:
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

    # -- reading -------------------------------------------------------------------------

    def resolve(self, ref: Reference) -> Digest:
        """The digest the registry serves for ``ref`` now (a HEAD; falls back to GET)."""
        if ref.digest:
            return ref.digest
        return self._head_manifest(ref, "pull")

    def served(self, ref: Reference) -> Digest | None:
        """What the registry serves at ``ref`` (tag or digest) now, from one HEAD; None only when it
        answers that manifest request with 404. Anything else raises, as ``resolve`` does: an outage,
        a timeout, a 5xx or 429 after retries (``RegistryUnavailable``), an authentication failure
        (``AuthenticationError``) never reads as "gone"."""
        try:
            return self._head_manifest(ref, "pull")
        except NotFound:
            return None

    def _head_manifest(self, ref: Reference, actions: str) -> Digest:
        """What the registry serves at ``ref``'s selector, from one HEAD with the token scope ``actions``."""
        response = self._request(
            "HEAD",
            ref,
            f"manifests/{ref.selector}",
            what=f"manifest of {ref}",
            actions=actions,
            headers={"Accept": ", ".join(mediatypes.MANIFEST_ACCEPT)},
        )
        header = response.headers.get("Docker-Content-Digest")
        response.close()
        if header:
            try:
                return Digest.parse(header)
            except ValueError:
                pass
        return self.get_manifest(ref).digest  # a registry that does not say: read it and hash it

    def get_manifest(self, ref: Reference, selector: str | None = None) -> Manifest | Index:
        """The manifest or index at ``selector`` (default: ``ref``'s digest or tag), verified."""
        selector = selector or ref.selector
        response = self._request(
            "GET",
            ref,
            f"manifests/{selector}",
            what=f"manifest {ref.name}:{selector}" if ":" not in selector else f"manifest {ref.name}@{selector}",
            headers={"Accept": ", ".join(mediatypes.MANIFEST_ACCEPT)},
            limit=MAX_MANIFEST_BYTES,
        )
        with response:
            raw = response.content
        actual = Digest.of(raw)
        if selector.startswith("sha256:") and Digest.parse(selector) != actual:
            raise DigestMismatch(f"manifest {ref.name}", selector, actual)
        announced = response.headers.get("Docker-Content-Digest", "")
        if announced.startswith("sha256:") and announced != str(actual):
            raise DigestMismatch(f"manifest {ref} (Docker-Content-Digest)", announced, actual)
        return parse_manifest(raw, response.headers.get("Content-Type"))

    @contextmanager
    def open_blob(self, ref: Reference, digest: Digest, size: int | None = None,
                  heartbeat: Callable[[], object] | None = None) -> Iterator[BlobStream]:
        """Stream a blob; the caller verifies it (``VerifyingReader``) while consuming it. With ``size``
        (the manifest's) nothing past it is read; ``heartbeat`` is called about every second while the
        download lasts, bytes or not, and whatever it raises (a job's cancel) ends the download with it."""
        stream = BlobStream(self, ref, digest, f"blob {digest} of {ref.name}", Attempts(self.retry), size, heartbeat)
        try:
            yield stream
        finally:
            stream.close()

    def get_blob(self, ref: Reference, digest: Digest, limit: int = MAX_CONFIG_BYTES) -> bytes:
        """A small blob (a config) read whole and verified."""
        with self.open_blob(ref, digest) as stream:
            data = bytearray()
            while chunk := stream.read(min(1 << 16, limit + 1 - len(data))):
                data += chunk
                if len(data) > limit:
                    raise InvalidManifest(f"blob {digest} is larger than {limit} bytes")
        actual = Digest.of(bytes(data))
        if actual != digest:
            raise DigestMismatch(f"blob of {ref.name}", digest, actual)
        return bytes(data)

    def list_tags(self, ref: Reference, page_size: int = 1000) -> list[str]:
        """Every tag of ``ref.repository``, following ``Link`` pagination; a registry whose pages or tags
        do not end within ``max_tag_pages`` pages or ``max_tags`` tags is a permanent ``RegistryError``
        (a list cut short would read as tags gone)."""
        tags: list[str] = []
        url: str | None = f"{self.base_url(ref.api_host)}/v2/{ref.repository}/tags/list?n={page_size}"
        seen: set[str] = set()
        while url and url not in seen:
            if len(seen) >= self.max_tag_pages:
                raise RegistryError(f"tags of {ref.name}: more than {self.max_tag_pages} pages "
                                    "(DUCC_MAX_TAG_PAGES); the registry's Link chain does not end")
            seen.add(url)
            response = self._request("GET", ref, "", url=url, what=f"tags of {ref.name}", limit=MAX_TAG_PAGE_BYTES)
            with response:
                try:
                    body = response.json()
                except ValueError as exc:
                    raise RegistryError(f"tags of {ref.name}: response is not JSON") from exc
            if not isinstance(body, dict):
                raise RegistryError(f"tags of {ref.name}: response is not a JSON object")
            tags.extend(t for t in (body.get("tags") or []) if isinstance(t, str))
            if len(tags) > self.max_tags:
                raise RegistryError(f"tags of {ref.name}: more than {self.max_tags} tags (DUCC_MAX_TAGS)")
            next_link = response.links.get("next", {}).get("url")
            url = urljoin(url, next_link) if next_link else None
        return tags

    # -- writing -------------------------------------------------------------------------
    #
    # The push flow of the OCI distribution spec: HEAD a blob; POST an upload session
    # (optionally a cross-repository mount); PUT the blob whole, or PATCH it in chunks and
    # PUT the digest; PUT the manifest last. Every request follows the most recent
    # ``Location`` the registry gave, absolute or relative. All of it asks for
    # ``repository:<repo>:pull,push``, so one token serves the whole push.

    def manifest_digest(self, ref: Reference) -> Digest | None:
        """What ``ref``'s tag serves now, from one HEAD (``pull,push`` scope); None if nothing (404)."""
        try:
            return self._head_manifest(ref, "pull,push")  # a digest-pinned target is checked too
        except NotFound:
            return None

    def blob_exists(self, ref: Reference, digest: Digest) -> bool:
        """True if ``ref.repository`` serves the blob (a HEAD); mounts and uploads are not tried."""
        try:
            self._request(
                "HEAD", ref, f"blobs/{digest}", what=f"blob {digest} of {ref.name}", actions="pull,push"
            ).close()
        except NotFound:
            return False
        return True

    def push_blob(
        self, ref: Reference, digest: Digest, data: bytes | Path, *, mount_from: str | None = None
    ) -> BlobOutcome:
        """Make the blob available in ``ref.repository``: ``"present"`` if it already was (one HEAD),
        else what ``upload_blob`` did."""
        if self.blob_exists(ref, digest):
            return "present"
        return self.upload_blob(ref, digest, data, mount_from=mount_from)

    def upload_blob(
        self, ref: Reference, digest: Digest, data: bytes | Path, *, mount_from: str | None = None
    ) -> BlobOutcome:
        """Upload a blob (no existence check): ``"mounted"`` or ``"uploaded"``.

        With ``mount_from`` (a repository of the same registry) the registry is asked to link its
        copy first; when it answers 202 instead, the blob goes up through the session it opened.
        Blobs up to ``upload_chunk_size`` go in one PUT, larger ones in PATCH chunks (at least the
        registry's ``OCI-Chunk-Min-Length``); a 413 to a whole PUT is retried in chunks. A session
        the registry lost (404, or 416 for a chunk out of step) is started again once, as the spec
        says. On failure the open session is cancelled, and nothing is visible: a blob counts only
        once its closing digest PUT succeeded.
        """
        what = f"upload of blob {digest} to {ref.name}"
        chunked = False
        restarted = False
        while True:
            try:
                session = self._start_upload(ref, digest, mount_from, what)
            except AuthenticationError:
                if not mount_from:
                    raise
                # a token without pull on the source repository: upload instead of mounting
                log.info("%s: mount from %s refused; uploading", what, mount_from)
                mount_from = None
                continue
            if session is None:
                return "mounted"
            try:
                self._send_blob(ref, digest, data, session, what, chunked=chunked)
            except RegistryError as exc:
                self._cancel_upload(ref, session.url)
                # 404: the registry forgot the session; 416: it holds other bytes than we sent (a chunk
                # it took whose answer was lost, then retried). Either way the spec says: start again.
                if exc.status in (404, 416) and not restarted:
                    restarted, mount_from = True, None
                    log.info("%s: the upload session is lost (HTTP %s); starting again", what, exc.status)
                    continue
                if exc.status == 413 and not chunked:
                    chunked, mount_from = True, None
                    log.info("%s: too large for one request; uploading in chunks", what)
                    continue
                raise
            except Exception:
                self._cancel_upload(ref, session.url)
                raise
            return "uploaded"

    def mount_blob(self, ref: Reference, digest: Digest, from_repository: str) -> bool:
        """Link a blob the registry already holds in another repository; False if it would need an upload
        (the session the registry opened for that upload is cancelled)."""
        what = f"mount of blob {digest} from {from_repository} into {ref.name}"
        session = self._start_upload(ref, digest, from_repository, what)
        if session is None:
            return True
        self._cancel_upload(ref, session.url)
        return False

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Digest:
        """PUT a manifest at ``ref``'s tag (or digest); returns its digest, checked against the registry's."""
        digest = Digest.of(raw)
        response = self._request(
            "PUT", ref, f"manifests/{ref.tag or ref.digest}", what=f"manifest of {ref}", actions="pull,push",
            headers={"Content-Type": media_type}, data=raw,
        )
        announced = response.headers.get("Docker-Content-Digest", "")
        response.close()
        if announced.startswith("sha256:") and announced != str(digest):
            raise DigestMismatch(f"manifest {ref} as stored by the registry", digest, announced)
        return digest

    def _start_upload(self, ref: Reference, digest: Digest, mount_from: str | None, what: str) -> _Upload | None:
        """POST an upload session; None if the registry mounted the blob instead (201)."""
        path = "blobs/uploads/"
        if mount_from:
            path += "?" + urlencode({"mount": str(digest), "from": mount_from})
        response = self._request("POST", ref, path, what=what, actions="pull,push")
        response.close()
        if response.status_code == 201 and mount_from:
            return None
        location = response.headers.get("Location")
        if response.status_code != 202 or not location:
            raise RegistryError(
                f"{what}: the registry answered HTTP {response.status_code} "
                + ("without an upload Location" if not location else "instead of 202 Accepted"),
                status=response.status_code,
            )
        minimum = response.headers.get("OCI-Chunk-Min-Length", "")
        return _Upload(urljoin(response.url, location), int(minimum) if minimum.isdigit() else 0)

    def _send_blob(self, ref: Reference, digest: Digest, data: bytes | Path, session: _Upload, what: str,
                   *, chunked: bool) -> None:
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        with _open_blob(data) as body:
            if not chunked and size <= self.upload_chunk_size:
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
                self._finish_upload(ref, digest, session.url, what, headers=headers, data=body)
                return
            url = self._patch_chunks(ref, body, size, session, what)
        self._finish_upload(ref, digest, url, what, headers={"Content-Length": "0"})

    def _patch_chunks(self, ref: Reference, body: BinaryIO, size: int, session: _Upload, what: str) -> str:
        """PATCH ``body`` in order, each chunk to the latest Location; returns where to PUT the digest."""
        chunk_size = max(self.upload_chunk_size, session.min_chunk)
        url, offset = session.url, 0
        while offset < size:
            body.seek(offset)
            chunk = body.read(chunk_size)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                "Content-Length": str(len(chunk)),
            }
            response = self._request("PATCH", ref, "", url=url, what=what, actions="pull,push",
                                     headers=headers, data=chunk)
            response.close()
            if response.status_code != 202:
                raise RegistryError(f"{what}: HTTP {response.status_code} to a chunk", status=response.status_code)
            url = urljoin(url, response.headers.get("Location") or url)
            offset += len(chunk)
        return url

    def _finish_upload(self, ref: Reference, digest: Digest, url: str, what: str, **kwargs: Any) -> None:
        """The closing PUT with ``?digest=``: the registry verifies the bytes and makes the blob visible."""
        target = url + ("&" if urlsplit(url).query else "?") + f"digest={digest}"
        response = self._request("PUT", ref, "", url=target, what=what, actions="pull,push", **kwargs)
        response.close()
        announced = response.headers.get("Docker-Content-Digest", "")
        if response.status_code != 201:
            raise RegistryError(f"{what}: HTTP {response.status_code} instead of 201 Created",
                                status=response.status_code)
        if announced.startswith("sha256:") and announced != str(digest):
            raise DigestMismatch(f"{what} (Docker-Content-Digest)", digest, announced)

    def _cancel_upload(self, ref: Reference, url: str) -> None:
        """Best effort, one attempt: the spec asks clients to DELETE a session they give up on."""
        headers = {}
        token = self._authorization.get((ref.api_host, f"repository:{ref.repository}:pull,push"))
        if token and urlsplit(url).netloc == ref.api_host:
            headers["Authorization"] = token
        try:
            self._send("DELETE", url, f"cancel of upload session {urlsplit(url).path}",
                       attempts=Attempts(RetryPolicy(attempts=1)), headers=headers).close()
        except RegistryError as exc:
            log.info("%s", exc)


@dataclass(frozen=True)
class _Upload:
    """An open upload session: where to send the next request, and the registry's minimum chunk."""

    url: str
    min_chunk: int = 0


@contextmanager
def _open_blob(data: bytes | Path) -> Iterator[BinaryIO]:
    if isinstance(data, Path):
        with data.open("rb") as body:
            yield body
    else:
        yield io.BytesIO(data)


def _consume(response: requests.Response, transfer: Transfer, limit: int, what: str) -> None:
    """Read ``response``'s body into it (``.content``, ``.json()`` then work), never more than ``limit``
    bytes from the socket. A body in identity encoding over ``limit`` is refused
    (``RegistryError``), an error body (4xx) cut short; a body the registry compressed although
    identity was asked for is inflated up to ``limit`` only."""
    length = response.headers.get("Content-Length", "")
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
    except _STREAM_ERRORS as exc:
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
