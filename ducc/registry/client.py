"""Reading and writing images in registries (OCI distribution spec), over ``ducc.registry.transport``.

Promises (the transport's own, about HTTP, credentials, limits, deadlines and
retries, are in ``ducc.registry.transport``):

- Nothing a registry sends is read past a limit: a manifest
  ``MAX_MANIFEST_BYTES``, a tag page ``MAX_TAG_PAGE_BYTES``. A blob is read up
  to the size its manifest declares plus one byte, then refused. Tag lists
  follow at most ``max_tag_pages`` pages and ``max_tags`` tags.
- A blob download is one transfer under the transport's watchdog; its
  ``heartbeat`` (a job's cancel check) is called while it downloads, even while
  no byte arrives. A download that breaks off is resumed here (``Range``), from
  the same budget of attempts as its first request.
- Manifests are verified against the digest they were asked by, and against
  ``Docker-Content-Digest``. Blobs are verified by the caller while streaming
  (see ``ducc.verify``): the client never holds a layer in memory.
- Pushing follows the spec's upload flow and the ``Location`` the registry
  gives; an upload holds at most one chunk in memory, and a blob is visible only
  once its closing ``PUT ?digest=`` succeeded (the registry verifies it there).
  An upload ``Location`` on another host gets no credentials.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlencode, urljoin, urlsplit

import requests

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
from ducc.registry.transfer import TransferLimits as TransferLimits  # the composition root builds one
from ducc.registry.transport import STREAM_ERRORS, Attempts, Transport, transport_reason
from ducc.registry.transport import RetryPolicy as RetryPolicy  # the composition root builds one

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20
MAX_TAG_PAGE_BYTES = 16 << 20
MAX_TAG_PAGES = 1000
MAX_TAGS = 100_000
BlobOutcome = Literal["present", "mounted", "uploaded"]
UPLOAD_CHUNK_SIZE = 64 << 20  # larger blobs go up in PATCH chunks of this size (bounded memory, proxy body limits)


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
        self._transfer = client.transport.watchdog.start(what, size or 0, heartbeat)
        try:
            self._response = client.transport.request("GET", ref, f"blobs/{digest}", what=what, stream=True,
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
            except STREAM_ERRORS as exc:
                self._transfer.check()  # stopped by the watchdog: its reason, not the socket's
                error = RegistryUnavailable(
                    f"download of {self._what} broke off at byte {self._offset}: {transport_reason(exc, self._client.transport.timeout)}")
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
        self._transfer.wait(delay, self._client.transport.sleep)
        response = self._client.transport.request(
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
        self.transport = Transport(keychain=keychain, insecure=insecure, retry=retry, timeout=timeout,
                                   session=session, sleep=sleep, limits=limits)
        self.retry = retry
        self.max_tag_pages = max_tag_pages
        self.max_tags = max_tags
        self.upload_chunk_size = max(1, upload_chunk_size)

    def base_url(self, host: str) -> str:
        return self.transport.base_url(host)

    def abort(self) -> None:
        """Stop every transfer now and refuse every later one (``Transport.abort``)."""
        self.transport.abort()

    def _realm_refusal(self, realm: str, host: str, with_credentials: bool) -> str | None:
        """Why the token realm a registry named must not be asked, or None (``Transport.realm_refusal``)."""
        return self.transport.realm_refusal(realm, host, with_credentials)

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
        response = self.transport.request(
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
        response = self.transport.request(
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
        url: str | None = f"{self.transport.base_url(ref.api_host)}/v2/{ref.repository}/tags/list?n={page_size}"
        seen: set[str] = set()
        while url and url not in seen:
            if len(seen) >= self.max_tag_pages:
                raise RegistryError(f"tags of {ref.name}: more than {self.max_tag_pages} pages "
                                    "(DUCC_MAX_TAG_PAGES); the registry's Link chain does not end")
            seen.add(url)
            response = self.transport.request("GET", ref, "", url=url, what=f"tags of {ref.name}", limit=MAX_TAG_PAGE_BYTES)
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
            self.transport.request(
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
        response = self.transport.request(
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
        response = self.transport.request("POST", ref, path, what=what, actions="pull,push")
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
            response = self.transport.request("PATCH", ref, "", url=url, what=what, actions="pull,push",
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
        response = self.transport.request("PUT", ref, "", url=target, what=what, actions="pull,push", **kwargs)
        response.close()
        announced = response.headers.get("Docker-Content-Digest", "")
        if response.status_code != 201:
            raise RegistryError(f"{what}: HTTP {response.status_code} instead of 201 Created",
                                status=response.status_code)
        if announced.startswith("sha256:") and announced != str(digest):
            raise DigestMismatch(f"{what} (Docker-Content-Digest)", digest, announced)

    def _cancel_upload(self, ref: Reference, url: str) -> None:
        """Best effort, one attempt: the spec asks clients to DELETE a session they give up on."""
        headers = self.transport.authorization(ref, "pull,push", url)
        try:
            self.transport.send("DELETE", url, f"cancel of upload session {urlsplit(url).path}",
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
