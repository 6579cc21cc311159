"""Writing to a registry: blobs (uploads and mounts), manifests, and whole thin images.

``Pusher`` follows the push flow of the OCI distribution spec: HEAD a blob;
POST an upload session (optionally a cross-repository mount); PUT the blob
whole, or PATCH it in chunks and PUT the digest; PUT the manifest last. Every
request follows the most recent ``Location`` the registry gave, absolute or
relative, and asks for ``repository:<repo>:pull,push``, so one token serves
the whole push. HTTP, credentials, retries and deadlines are
``ducc.registry.transport``'s.

Promises:

- An upload holds at most one chunk in memory, and a blob is visible only once
  its closing ``PUT ?digest=`` succeeded (the registry verifies it there). An
  upload ``Location`` on another host gets no credentials. A session given up
  is cancelled (``DELETE``, best effort).
- ``push_thin_image`` sends nothing twice. If the target tag already serves the
  thin manifest's digest, the whole push is one manifest ``HEAD``. Otherwise
  each blob costs one ``HEAD`` if the repository has it, a mount if
  ``mount_from`` names another repository of the same registry that has it, and
  an upload only if neither.
- The manifest is ``PUT`` last, after every blob is in place: a failure at any
  step leaves the tag exactly as it was (absent, or serving the previous image).
- Errors keep their class from ``ducc.errors`` (``AuthenticationError`` and
  ``NotFound`` are permanent, ``RegistryUnavailable`` is temporary, so the queue
  retries it); those of a thin push start with ``thin image <target>:``. No
  secret is ever part of one.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

from ducc.errors import AuthenticationError, DigestMismatch, NotFound, RegistryError, RegistryUnavailable
from ducc.model.digest import Digest
from ducc.model.reference import Reference
from ducc.registry.pull import Puller
from ducc.registry.retry import Attempts, RetryPolicy
from ducc.registry.transport import Transport
from ducc.thin import ThinImage

log = logging.getLogger(__name__)

BlobOutcome = Literal["present", "mounted", "uploaded"]
UPLOAD_CHUNK_SIZE = 64 << 20  # larger blobs go up in PATCH chunks of this size (bounded memory, proxy body limits)


class Pusher:
    """Writes blobs and manifests to registries through one ``Transport``."""

    def __init__(self, transport: Transport, puller: Puller, *, upload_chunk_size: int = UPLOAD_CHUNK_SIZE) -> None:
        self.transport = transport
        self._puller = puller  # what a tag serves before it is written
        self.upload_chunk_size = max(1, upload_chunk_size)

    def manifest_digest(self, ref: Reference) -> Digest | None:
        """What ``ref``'s tag serves now, from one HEAD (``pull,push`` scope); None if nothing (404)."""
        try:
            return self._puller.head_manifest(ref, "pull,push")  # a digest-pinned target is checked too
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


class Destination(Protocol):
    """What ``push_thin_image`` writes through: a ``Pusher``, or the ``RegistryClient`` that holds one."""

    def manifest_digest(self, ref: Reference) -> Digest | None: ...

    def push_blob(
        self, ref: Reference, digest: Digest, data: bytes | Path, *, mount_from: str | None = None
    ) -> BlobOutcome: ...

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Digest: ...


@dataclass(frozen=True)
class ThinPush:
    """What a push did. ``reference`` is the target pinned to the digest it now serves."""

    reference: Reference
    digest: Digest
    changed: bool  # False: the tag already served this thin image (one HEAD, nothing sent)
    uploaded: tuple[Digest, ...] = ()
    mounted: tuple[Digest, ...] = ()
    present: tuple[Digest, ...] = ()

    def __str__(self) -> str:
        return str(self.reference)  # registry/repository:tag@sha256:...


def push_thin_image(
    client: Destination, target: Reference, thin: ThinImage, mount_from: Reference | None = None
) -> ThinPush:
    """Make ``target`` (a tag) serve ``thin``; see the module promises.

    ``mount_from`` is a repository where the same blobs may already be, such as the
    previous thin image of the same source; it is used only on ``target``'s registry.
    """
    digest = thin.manifest_digest
    if target.digest is not None and target.digest != digest:
        raise ValueError(f"thin image {target}: the reference pins {target.digest}, but the thin image is {digest}")
    tag = Reference(target.registry, target.repository, target.tag, None if target.tag else digest, target.scheme)
    source = None
    if mount_from is not None and mount_from.api_host == tag.api_host and mount_from.repository != tag.repository:
        source = mount_from.repository
    try:
        if client.manifest_digest(tag) == digest:
            log.info("thin image %s already serves %s: nothing to push", tag, digest.short)
            return ThinPush(tag.with_digest(digest), digest, changed=False)
        outcomes: dict[str, list[Digest]] = {"uploaded": [], "mounted": [], "present": []}
        for blob_digest, blob in thin.blobs.items():
            outcomes[client.push_blob(tag, blob_digest, blob, mount_from=source)].append(blob_digest)
        client.push_manifest(tag, thin.manifest, thin.media_type)
    except RegistryError as exc:
        raise _about(tag, exc) from exc
    log.info("thin image %s pushed as %s (%d blobs uploaded, %d mounted, %d present)", tag, digest.short,
             len(outcomes["uploaded"]), len(outcomes["mounted"]), len(outcomes["present"]))
    return ThinPush(
        tag.with_digest(digest), digest, changed=True, uploaded=tuple(outcomes["uploaded"]),
        mounted=tuple(outcomes["mounted"]), present=tuple(outcomes["present"]),
    )


def _about(target: Reference, exc: RegistryError) -> RegistryError:
    """The same kind of error, saying which thin image it was about."""
    message = f"thin image {target}: {exc}"
    if isinstance(exc, RegistryUnavailable):
        return RegistryUnavailable(message, status=exc.status, retry_after=exc.retry_after)
    return type(exc)(message, status=exc.status)
