"""The store following the repository: the ``ImageSink`` (``ducc.publish.sinks``) of podman's store.

One image per name: the store holds the images published for one platform (``DUCC_PLATFORM``, the
one podman runs on the nodes), under ``store_name`` of their reference; what is published for any
other platform is not its business. The repository is written first and the store told afterwards;
an image the store misses (a crash in between, a failure of the store) or holds under another
manifest is added the next time the image is converted or found unchanged (docs/podman.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ducc.errors import RepositoryUnusable
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish import TreeReader
from ducc.publish.podman.committer import Committer
from ducc.publish.podman.metadata import names_of
from ducc.publish.podman.store import PodmanStore, store_name
from ducc.publish.sinks import Published
from ducc.record import Record


class Mirror:
    """Podman's store, written through ``committer`` (a directory, or a CVMFS repository), holding what the
    repository publishes for ``platform``."""

    def __init__(self, committer: Committer, platform: Platform) -> None:
        self.store = PodmanStore(committer)
        self.platform = platform

    @property
    def name(self) -> str:
        return f"podman store {self.store.root}"

    def holds(self, ref: Reference, platform: Platform, record: Record) -> bool:
        # Another platform's image, or a record without its config (written by CVMFS's DUCC: the store
        # needs the diff ids), is none of the store's business; ducc's next conversion of the tag adds it.
        return platform != self.platform or record.config is None or self.store.holds(store_name(ref), record)

    def published(self, ref: Reference, platform: Platform, record: Record, view: TreeReader) -> str | None:
        if self.holds(ref, platform, record):
            return None
        name = store_name(ref)
        image = self.store.add(name, record, view.layer_source)
        return f"added {name} as image {image.id[:12]}"

    def unpublished(self, ref: Reference, platform: Platform) -> str | None:
        name = store_name(ref)
        if platform != self.platform or name not in names_of(self.store.indexes().images.values()):
            return None
        gone = self.store.remove([name])
        return f"removed {name}" + (f" (image {gone[0][:12]} with it)" if gone else "")

    def collect(self, published: Published) -> str | None:
        def keep() -> set[str]:
            return {store_name(ref) for ref, platform in published() if platform == self.platform}

        collected = self.store.gc(keep)
        if not (collected.images or collected.layers or collected.debris):
            return None
        return (f"dropped {len(collected.images)} images and {len(collected.layers)} layers no longer published, "
                f"{len(collected.debris)} leftovers")


def check(path: Path) -> None:
    """The store can be written here: ``path`` can be created and written, and the process is root (its
    whiteouts are 0/0 character devices and ``trusted.*`` attributes). RepositoryUnusable otherwise,
    one line."""
    if os.geteuid() != 0:
        raise RepositoryUnusable(f"podman store {path}: writing it takes root (its whiteouts are 0/0 character "
                                 "devices and trusted.* attributes); unset DUCC_PODMAN_STORE or run as root")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise RepositoryUnusable(f"podman store {path}: cannot be created or written: "
                                 f"{exc.strerror or exc}") from exc


def check_cvmfs(path: Path, repository: str) -> None:
    """The store can be written inside the CVMFS repository ``repository``: the process is root, and the
    repository keeps extended attributes (``CVMFS_INCLUDE_XATTRS=true`` in its ``server.conf``, where that
    file is on this machine): without them the opaque directories of the layers would reach no client,
    and the lower layers would show through. RepositoryUnusable otherwise, one line."""
    if os.geteuid() != 0:
        raise RepositoryUnusable(f"podman store {path}: writing it takes root (its whiteouts are 0/0 character "
                                 "devices and trusted.* attributes); unset DUCC_PODMAN_STORE or run as root")
    conf = Path("/etc/cvmfs/repositories.d") / repository / "server.conf"
    try:
        text = conf.read_text()
    except OSError:
        return  # a gateway publisher keeps it elsewhere: ducc doctor's business
    settings = dict(line.strip().partition("=")[::2] for line in text.splitlines() if "=" in line)
    if settings.get("CVMFS_INCLUDE_XATTRS", "").strip().strip("\"'").lower() != "true":
        raise RepositoryUnusable(f"podman store {path}: {repository} must keep extended attributes for the "
                                 f"layers' opaque directories: set CVMFS_INCLUDE_XATTRS=true in {conf}")
