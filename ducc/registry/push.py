"""Push a thin image to a registry over the registry API alone (no Docker engine).

Promises:

- Nothing is sent twice. If the target tag already serves the thin manifest's
  digest, the whole push is one manifest ``HEAD``. Otherwise each blob costs one
  ``HEAD`` if the repository has it, a mount if ``mount_from`` names another
  repository of the same registry that has it, and an upload only if neither.
- The manifest is ``PUT`` last, after every blob is in place: a failure at any
  step leaves the tag exactly as it was (absent, or serving the previous image).
- Errors keep their class from ``ducc.errors`` (``AuthenticationError`` and
  ``NotFound`` are permanent, ``RegistryUnavailable`` is temporary, so the queue
  retries it) and their message starts with ``thin image <target>:``. No secret
  is ever part of one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ducc.errors import RegistryError, RegistryUnavailable
from ducc.model.digest import Digest
from ducc.model.reference import Reference
from ducc.registry.client import RegistryClient
from ducc.thin import ThinImage

log = logging.getLogger(__name__)


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
    client: RegistryClient, target: Reference, thin: ThinImage, mount_from: Reference | None = None
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
