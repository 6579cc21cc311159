"""Reading from a registry: what a reference resolves to, manifests, blobs, tag lists.

Promises (HTTP, credentials, retries and deadlines are ``ducc.registry.transport``'s):

- Nothing a registry sends is read past a limit: a manifest
  ``MAX_MANIFEST_BYTES``, a config read whole ``MAX_CONFIG_BYTES``, a tag page
  ``MAX_TAG_PAGE_BYTES``. A blob is read up to the size its manifest declares
  plus one byte, then refused. Tag lists follow at most ``max_tag_pages``
  pages and ``max_tags`` tags; a longer one is an error, never cut short.
- Manifests are verified against the digest they were asked by, and against
  ``Docker-Content-Digest``; a config read whole is verified against its
  digest. Layers are verified by the caller while streaming (see
  ``ducc.verify``): nothing here holds a layer in memory.
- A blob download is one transfer under the transport's watchdog, so its
  deadline, ``abort()`` and its ``heartbeat`` (a job's cancel check, called
  even while no byte arrives) reach it. A download that breaks off is resumed
  (``Range``) from the same budget of attempts as its first request.
- Every request asks for ``repository:<repo>:pull``, except a manifest ``HEAD``
  made for a push (``head_manifest(ref, "pull,push")``): one token then serves
  the whole push.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urljoin

from ducc.errors import DigestMismatch, InvalidManifest, NotFound, RegistryError, RegistryUnavailable
from ducc.model import mediatypes
from ducc.model.digest import Digest
from ducc.model.limits import DEFAULT_MAX_TAG_PAGES, DEFAULT_MAX_TAGS
from ducc.model.manifest import Index, Manifest, parse_manifest
from ducc.model.reference import Reference
from ducc.registry.retry import Attempts
from ducc.registry.transport import STREAM_ERRORS, Transport, transport_reason

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20
MAX_TAG_PAGE_BYTES = 16 << 20
MAX_TAG_PAGES = DEFAULT_MAX_TAG_PAGES
MAX_TAGS = DEFAULT_MAX_TAGS


class BlobStream:
    """An open blob download. A transfer that breaks off is resumed where it stopped (``Range``; a
    registry that ignores it is read past the bytes already delivered), from the blob's budget of
    attempts; when that is spent ``read`` raises ``RegistryUnavailable``.

    With ``size`` (the manifest's word) nothing past ``size + 1`` bytes is ever read: the byte after
    the declared size is refused at once (``DigestMismatch``, permanent), whatever ``Content-Length``
    says or if there is none. The whole download, resumptions included, is one transfer under the
    transport's watchdog (its deadline, the ``heartbeat``, an abort)."""

    def __init__(self, transport: Transport, ref: Reference, digest: Digest, what: str, attempts: Attempts,
                 size: int | None = None, heartbeat: Callable[[], object] | None = None) -> None:
        self._transport = transport
        self._ref = ref
        self._digest = digest
        self._what = what
        self._attempts = attempts
        self._offset = 0
        self._bound = size
        self._transfer = transport.watchdog.start(what, size or 0, heartbeat)
        try:
            self._response = transport.request("GET", ref, f"blobs/{digest}", what=what, stream=True,
                                               attempts=attempts, transfer=self._transfer)
        except BaseException:
            self._transfer.finish()
            raise
        length = self._response.headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None
        if self.size is not None and size is not None and self.size > size:
            self.close()
            raise DigestMismatch(what, f"{size} bytes", f"{self.size} bytes (Content-Length)")
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
                    f"download of {self._what} broke off at byte {self._offset}: {transport_reason(exc, self._transport.timeout)}")
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
        return DigestMismatch(self._what, f"{self._bound} bytes", f"more than {self._bound} bytes")

    def _resume(self, error: RegistryUnavailable) -> None:
        self._response.close()
        self._transfer.release()
        if not self._attempts.left:
            raise error
        delay = self._transport.retry.delay(self._attempts.used - 1)
        log.info("%s; resuming in %.1fs (attempt %d/%d)", error, delay, self._attempts.used + 1,
                 self._attempts.policy.attempts)
        self._transfer.wait(delay, self._transport.sleep)
        response = self._transport.request(
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


class Puller:
    """Reads images from registries through one ``Transport``; thread-safe for concurrent downloads."""

    def __init__(self, transport: Transport, *, max_tag_pages: int = MAX_TAG_PAGES, max_tags: int = MAX_TAGS) -> None:
        self.transport = transport
        self.max_tag_pages = max_tag_pages
        self.max_tags = max_tags

    def resolve(self, ref: Reference) -> Digest:
        """The digest the registry serves for ``ref`` now (a HEAD; falls back to GET)."""
        if ref.digest:
            return ref.digest
        return self.head_manifest(ref, "pull")

    def served(self, ref: Reference) -> Digest | None:
        """What the registry serves at ``ref`` (tag or digest) now, from one HEAD; None only when it
        answers that manifest request with 404. Anything else raises, as ``resolve`` does: an outage,
        a timeout, a 5xx or 429 after retries (``RegistryUnavailable``), an authentication failure
        (``AuthenticationError``) never reads as "gone"."""
        try:
            return self.head_manifest(ref, "pull")
        except NotFound:
            return None

    def head_manifest(self, ref: Reference, actions: str) -> Digest:
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
        stream = BlobStream(self.transport, ref, digest, f"blob {digest} of {ref.name}", Attempts(self.transport.retry),
                            size, heartbeat)
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
            response = self.transport.request("GET", ref, "", url=url, what=f"tags of {ref.name}",
                                              limit=MAX_TAG_PAGE_BYTES)
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
