"""``RegistryClient``: one object for everything ducc does with registries, for the callers that
both read and write (a conversion reads its source and pushes its thin image with one client).

It holds a ``Transport`` (``ducc.registry.transport``: HTTP, credentials, limits, deadlines,
retries), a ``Puller`` (``ducc.registry.pull``: resolve, manifests, blobs, tags) and a ``Pusher``
(``ducc.registry.push``: uploads, mounts, manifests) sharing that transport, hence one token cache,
one watchdog and one retry policy. Each method is its part's; their promises are in those modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path

import requests

from ducc.model.digest import Digest
from ducc.model.manifest import Index, Manifest
from ducc.model.reference import Reference
from ducc.registry.auth import ANONYMOUS, Keychain
from ducc.registry.pull import MAX_CONFIG_BYTES, MAX_TAG_PAGES, MAX_TAGS, BlobStream, Puller
from ducc.registry.push import UPLOAD_CHUNK_SIZE, BlobOutcome, Pusher
from ducc.registry.retry import RetryPolicy as RetryPolicy  # the composition root builds one
from ducc.registry.transfer import TransferLimits as TransferLimits  # the composition root builds one
from ducc.registry.transport import Transport


class RegistryClient:
    """One client per process (per keychain); thread-safe for concurrent downloads."""

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
        self.puller = Puller(self.transport, max_tag_pages=max_tag_pages, max_tags=max_tags)
        self.pusher = Pusher(self.transport, self.puller, upload_chunk_size=upload_chunk_size)

    @property
    def retry(self) -> RetryPolicy:
        return self.transport.retry

    def base_url(self, host: str) -> str:
        return self.transport.base_url(host)

    def abort(self) -> None:
        self.transport.abort()

    # -- reading (``Puller``) --------------------------------------------------------------

    def resolve(self, ref: Reference) -> Digest:
        return self.puller.resolve(ref)

    def served(self, ref: Reference) -> Digest | None:
        return self.puller.served(ref)

    def get_manifest(self, ref: Reference, selector: str | None = None) -> Manifest | Index:
        return self.puller.get_manifest(ref, selector)

    def open_blob(self, ref: Reference, digest: Digest, size: int | None = None,
                  heartbeat: Callable[[], object] | None = None) -> AbstractContextManager[BlobStream]:
        return self.puller.open_blob(ref, digest, size, heartbeat)

    def get_blob(self, ref: Reference, digest: Digest, limit: int = MAX_CONFIG_BYTES) -> bytes:
        return self.puller.get_blob(ref, digest, limit)

    def list_tags(self, ref: Reference, page_size: int = 1000) -> list[str]:
        return self.puller.list_tags(ref, page_size)

    # -- writing (``Pusher``) --------------------------------------------------------------

    def manifest_digest(self, ref: Reference) -> Digest | None:
        return self.pusher.manifest_digest(ref)

    def blob_exists(self, ref: Reference, digest: Digest) -> bool:
        return self.pusher.blob_exists(ref, digest)

    def push_blob(self, ref: Reference, digest: Digest, data: bytes | Path, *,
                  mount_from: str | None = None) -> BlobOutcome:
        return self.pusher.push_blob(ref, digest, data, mount_from=mount_from)

    def upload_blob(self, ref: Reference, digest: Digest, data: bytes | Path, *,
                    mount_from: str | None = None) -> BlobOutcome:
        return self.pusher.upload_blob(ref, digest, data, mount_from=mount_from)

    def mount_blob(self, ref: Reference, digest: Digest, from_repository: str) -> bool:
        return self.pusher.mount_blob(ref, digest, from_repository)

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Digest:
        return self.pusher.push_manifest(ref, raw, media_type)
