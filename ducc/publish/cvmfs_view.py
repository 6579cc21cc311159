"""The ``cvmfs`` repository read only: ``/cvmfs/<repo>[/<subdir>]`` as its clients see it.

What the web app and every reader need, apart from the publisher (``ducc.publish.cvmfs``) and its
``cvmfs_server`` edge, so that a process that only reads (the web app) never loads what writes.
The layout and the reads are the directory view's (``ducc.layout``, ``ducc.publish.directory``); what
differs is that ``cvmfs_server`` remounts the repository while it publishes, so reads of several files
are repeated until the mount stayed the same throughout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ducc import layout
from ducc.errors import RepositoryUnusable
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish.directory import DirectoryView
from ducc.record import Record

T = TypeVar("T")

_SETTLE_ATTEMPTS = 20


def split_repository(text: str) -> tuple[str, str]:
    """``REPO[/subdir]`` → (repository, subdir); the sub-directory has no ``..``, no leading ``/``."""
    repository, _, subdir = text.strip().strip("/").partition("/")
    parts = [p for p in subdir.split("/") if p not in ("", ".")]
    if not repository or ".." in parts:
        raise RepositoryUnusable(f"invalid CVMFS repository {text!r}: expected REPO[/subdir]")
    if ":" in subdir:
        # Every layer, flat root and deletion lives under the sub-directory, and ``cvmfs_server ingest``
        # splits its -b and -d paths on ':' (it would delete a sibling tree).
        raise RepositoryUnusable(f"invalid CVMFS repository {text!r}: the sub-directory may not contain ':' "
                                 "(cvmfs_server ingest splits paths on it)")
    return repository, "/".join(parts)


class CvmfsView(DirectoryView):
    """``/cvmfs/<repo>[/<subdir>]`` read only (``mount`` stands for ``/cvmfs/<repo>``)."""

    def __init__(self, repository: str, *, subdir: str = "", mount: Path | None = None) -> None:
        self.repository = repository
        self.subdir = subdir
        self.mount = mount if mount is not None else Path("/cvmfs") / repository
        super().__init__(self.mount / subdir if subdir else self.mount, repository)

    @property
    def name(self) -> str:
        return self.repository + (f"/{self.subdir}" if self.subdir else "")

    # ``cvmfs_server`` remounts ``/cvmfs/<repo>`` when it opens or publishes a transaction: for a
    # moment the mount point is the bare directory under it. A read of several files that straddles
    # a remount could mix two states (a record's manifest.json without its config.json), so reads
    # of more than one file are repeated until the mount stayed the same throughout.
    def read_record(self, ref: Reference, platform: Platform) -> Record | None:
        return self._settled(lambda: DirectoryView.read_record(self, ref, platform))

    def read_record_at(self, link: str) -> Record | None:
        return self._settled(lambda: DirectoryView.read_record_at(self, link))

    def _leads_to(self, link: Path) -> Path:
        """A variant link (a tag published for several platforms) read as a client without ``CVMFS_ARCH``
        reads it: it leads to the default platform's flat root. Each platform's own link is listed too,
        under ``.multiarch/<platform>/``."""
        target = os.readlink(link)
        if layout.is_variant(target):
            return (link.parent / layout.expand_variant(target)).resolve()
        return link.resolve()

    def _settled(self, read: Callable[[], T]) -> T:
        """``read()``, again until the mount (its device) did not change while it ran."""
        for _ in range(_SETTLE_ATTEMPTS):
            before = _device(self.mount)
            result = read()
            if _device(self.mount) == before:
                return result
            time.sleep(0.05)
        return result


def _device(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None
