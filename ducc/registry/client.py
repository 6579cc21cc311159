"""The registry HTTP API (OCI distribution spec) over ``requests``.

Promises:

- Plain HTTP only for loopback hosts and the hosts in ``insecure`` (Docker's
  rule); HTTPS everywhere else.
- Credentials are sent only after a challenge, only to the challenging host or
  to the token realm it named; ``requests`` drops ``Authorization`` on a
  redirect to another host, which is how blob downloads reach object storage.
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
import random
import socket
import ssl
import threading
import time
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

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20
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
    attempts; when that is spent ``read`` raises ``RegistryUnavailable``."""

    def __init__(self, client: RegistryClient, ref: Reference, digest: Digest, what: str, attempts: Attempts) -> None:
        self._client = client
        self._ref = ref
        self._digest = digest
        self._what = what
        self._attempts = attempts
        self._offset = 0
        self._response = client._request("GET", ref, f"blobs/{digest}", what=what, stream=True, attempts=attempts)
        length = self._response.headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None

    def read(self, n: int = -1, /) -> bytes:
        while True:
            try:
                data: bytes = self._response.raw.read(n if n >= 0 else None, decode_content=False) or b""
            except _STREAM_ERRORS as exc:
                error = RegistryUnavailable(
                    f"download of {self._what} broke off at byte {self._offset}: {transport_reason(exc, self._client.timeout)}")
                self._resume(error)
                continue
            self._offset += len(data)
            return data

    def _resume(self, error: RegistryUnavailable) -> None:
        self._response.close()
        if not self._attempts.left:
            raise error
        delay = self._client.retry.delay(self._attempts.used - 1)
        log.info("%s; resuming in %.1fs (attempt %d/%d)", error, delay, self._attempts.used + 1,
                 self._attempts.policy.attempts)
        self._client._sleep(delay)
        response = self._client._request(
            "GET", self._ref, f"blobs/{self._digest}", what=self._what, stream=True, attempts=self._attempts,
            headers={"Range": f"bytes={self._offset}-"},
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
                if not chunk:
                    response.close()
                    raise error
                skip -= len(chunk)
        self._response = response

    def close(self) -> None:
        self._response.close()


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
        sleep: Callable[[float], None] = time.sleep,
        upload_chunk_size: int = UPLOAD_CHUNK_SIZE,
    ) -> None:
        self.keychain = keychain
        self.insecure = frozenset(insecure)
        self.retry = retry
        self.timeout = timeout
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = f"ducc/{__version__}"
        self._sleep = sleep
        self.upload_chunk_size = max(1, upload_chunk_size)
        self._authorization: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    # -- transport -----------------------------------------------------------------------

    def base_url(self, host: str) -> str:
        plain = is_loopback(host) or host in self.insecure
        return f"{'http' if plain else 'https'}://{host}"

    def _send(
        self, method: str, url: str, what: str, *, attempts: Attempts | None = None, **kwargs: Any
    ) -> requests.Response:
        """One request with retries on transport errors, 5xx and 429; other statuses are returned.

        ``attempts`` is the budget of the operation this request belongs to (a blob download and
        its resumptions share one); by default the request has a budget of its own."""
        budget = attempts or Attempts(self.retry)
        host = urlsplit(url).netloc
        last: RegistryUnavailable | None = None
        while budget.left:
            attempt = budget.used
            budget.used += 1
            retry_after = None
            try:
                response = self._session.request(method, url, timeout=self.timeout, **kwargs)
            except _STREAM_ERRORS as exc:
                last = RegistryUnavailable(f"{what}: registry {host} unreachable: {transport_reason(exc, self.timeout)}")
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return response
                retry_after = _retry_after(response)
                last = RegistryUnavailable(
                    f"{what}: registry {host} answered HTTP {response.status_code}",
                    status=response.status_code,
                    retry_after=retry_after,
                )
                response.close()
            if budget.left:
                delay = self.retry.delay(attempt, retry_after)
                log.info("%s; retrying in %.1fs (attempt %d/%d)", last, delay, attempt + 2, self.retry.attempts)
                self._sleep(delay)
            if "data" in kwargs and hasattr(kwargs["data"], "seek"):
                kwargs["data"].seek(0)
        if last is None:
            raise RegistryUnavailable(f"{what}: no attempts left")
        tries = f"{budget.used} attempt{'s' if budget.used != 1 else ''}"
        raise RegistryUnavailable(f"{last} ({tries})", status=last.status, retry_after=last.retry_after)

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
                params: dict[str, str | list[str]] = {k: v for k, v in challenge.params.items() if k in ("service",)}
                # A challenge may name several scopes, space-separated (a cross-repository mount needs
                # pull on the source too); token services expect one ``scope`` parameter each.
                params["scope"] = challenge.params.get("scope", scope).split() or [scope]
                auth = (credentials.username, credentials.password) if credentials else None
                response = self._send("GET", challenge.realm, f"token for {host}", params=params, auth=auth)
                if response.status_code != 200:
                    response.close()
                    raise AuthenticationError(
                        f"{what}: token service {challenge.realm} answered HTTP {response.status_code}"
                        + ("" if credentials else " (no credentials configured for this registry)"),
                        status=response.status_code,
                    )
                try:
                    body = response.json()
                    token = body.get("token") or body.get("access_token")
                except ValueError:
                    token = None
                if not token:
                    raise AuthenticationError(f"{what}: token service {challenge.realm} returned no token")
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
        )
        with response:
            raw = _read_limited(response, MAX_MANIFEST_BYTES, f"manifest of {ref}")
        actual = Digest.of(raw)
        if selector.startswith("sha256:") and Digest.parse(selector) != actual:
            raise DigestMismatch(f"manifest {ref.name}", selector, actual)
        announced = response.headers.get("Docker-Content-Digest", "")
        if announced.startswith("sha256:") and announced != str(actual):
            raise DigestMismatch(f"manifest {ref} (Docker-Content-Digest)", announced, actual)
        return parse_manifest(raw, response.headers.get("Content-Type"))

    @contextmanager
    def open_blob(self, ref: Reference, digest: Digest) -> Iterator[BlobStream]:
        """Stream a blob; the caller verifies it (``VerifyingReader``) while consuming it."""
        stream = BlobStream(self, ref, digest, f"blob {digest} of {ref.name}", Attempts(self.retry))
        try:
            yield stream
        finally:
            stream.close()

    def get_blob(self, ref: Reference, digest: Digest, limit: int = MAX_CONFIG_BYTES) -> bytes:
        """A small blob (a config) read whole and verified."""
        with self.open_blob(ref, digest) as stream:
            data = bytearray()
            while chunk := stream.read(1 << 16):
                data += chunk
                if len(data) > limit:
                    raise InvalidManifest(f"blob {digest} is larger than {limit} bytes")
        actual = Digest.of(bytes(data))
        if actual != digest:
            raise DigestMismatch(f"blob of {ref.name}", digest, actual)
        return bytes(data)

    def list_tags(self, ref: Reference, page_size: int = 1000) -> list[str]:
        """Every tag of ``ref.repository``, following ``Link`` pagination."""
        tags: list[str] = []
        url: str | None = f"{self.base_url(ref.api_host)}/v2/{ref.repository}/tags/list?n={page_size}"
        seen = set()
        while url and url not in seen:
            seen.add(url)
            response = self._request("GET", ref, "", url=url, what=f"tags of {ref.name}")
            with response:
                try:
                    body = response.json()
                except ValueError as exc:
                    raise RegistryError(f"tags of {ref.name}: response is not JSON") from exc
            tags.extend(t for t in (body.get("tags") or []) if isinstance(t, str))
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
            self._session.request("DELETE", url, headers=headers, timeout=self.timeout).close()
        except _STREAM_ERRORS as exc:
            log.info("cancelling upload session %s failed: %s", urlsplit(url).path, exc)


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


def _read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    data = bytearray()
    try:
        for chunk in response.iter_content(1 << 16):
            data += chunk
            if len(data) > limit:
                raise InvalidManifest(f"{what} is larger than {limit} bytes")
    except _STREAM_ERRORS as exc:
        raise RegistryUnavailable(f"{what}: download broke off: {exc}") from exc
    return bytes(data)


def _error_detail(response: requests.Response) -> str:
    """The registry's own error code and message, if it sent the spec's error body."""
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))[:300]
    except (ValueError, AttributeError):
        return ""
