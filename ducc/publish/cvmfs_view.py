"""The ``cvmfs`` repository read only: ``/cvmfs/<repo>[/<subdir>]`` as its clients see it.

What the web app and every reader need, apart from the publisher (``ducc.publish.cvmfs``) and its
``cvmfs_server`` edge, so that a process that only reads (the web app) never loads what writes.
The reads are ``ducc.publish.reader.MountedTree``'s over the mount, with what CVMFS changes in them:
``cvmfs_server`` remounts the repository while it publishes, so reads of several files are repeated
until the mount stayed the same throughout (``settle_on``), and a tag published for several platforms
has a variant link at its public path (``variants``). Nothing is shared with the directory backend
but that reader.
"""

from __future__ import annotations

from pathlib import Path

from ducc.errors import RepositoryUnusable
from ducc.publish.reader import MountedTree, ReadThrough


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


class CvmfsView(ReadThrough):
    """``/cvmfs/<repo>[/<subdir>]`` read only (``mount`` stands for ``/cvmfs/<repo>``)."""

    def __init__(self, repository: str, *, subdir: str = "", mount: Path | None = None) -> None:
        self.repository = repository
        self.subdir = subdir
        self.mount = mount if mount is not None else Path("/cvmfs") / repository
        self.root = (self.mount / subdir if subdir else self.mount).resolve()
        self._tree = MountedTree(self.root, settle_on=self.mount, variants=True)

    def tree(self) -> MountedTree:
        return self._tree

    @property
    def name(self) -> str:
        return self.repository + (f"/{self.subdir}" if self.subdir else "")

    def revision(self) -> int | None:
        return None  # what the mount shows has no revision; the publisher reads the server's
