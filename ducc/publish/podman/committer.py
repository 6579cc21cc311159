"""How the store's writer changes the store: three operations, each atomic for a reader (docs/podman.md).

``place`` puts a tree built in staging at a path of the store, ``write`` replaces a small file,
``remove`` deletes a path, ``exclusive`` keeps other writers out meanwhile; ``staging`` hands out the empty directories trees are built in, on the
store's filesystem (so ``layerfs`` files can be hard-linked and ``place`` is a rename). The writer
(``ducc.publish.podman.store``) never touches the store otherwise, so a CernVM-FS committer (one transaction
around the writer's calls) can take the directory's place.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path, PurePosixPath
from typing import Protocol

from ducc.tree import discard_tree, remove_tree

STAGING = ".ducc-staging"  # in the store's root: podman ignores names it does not know
WRITER_LOCK = ".ducc-writer.lock"


class Committer(Protocol):
    @property
    def root(self) -> Path:
        """Where the store is read (its indexes, to plan the next change)."""

    def staging(self) -> AbstractContextManager[Path]:
        """A context manager giving a new empty directory to build trees in; what is left there is discarded."""

    def place(self, staged: Path, relative: PurePosixPath) -> None:
        """Move ``staged`` (from ``staging``) to ``relative``; a path already there is kept and ``staged``
        discarded (what is placed is named by its content, so the same name holds the same tree)."""

    def write(self, relative: PurePosixPath, data: bytes) -> None:
        """Replace the file ``relative`` with ``data``: a reader sees the old file or the new one."""

    def remove(self, relative: PurePosixPath) -> None:
        """Delete ``relative`` (a tree, a file or a symlink); a missing path is nothing to do."""

    def exclusive(self) -> AbstractContextManager[None]:
        """Held around each change of the store: one writer at a time reads and replaces the indexes."""


@contextmanager
def scratch(area: Path) -> Iterator[Path]:
    """A new empty directory under ``area`` (made if missing), discarded with what is left in it on exit:
    the ``staging`` of every committer, each with its own ``area``."""
    area.mkdir(parents=True, exist_ok=True)
    path = area / secrets.token_hex(8)
    path.mkdir(0o700)
    try:
        yield path
    finally:
        discard_tree(path, "podman store staging")


class DirectoryCommitter:
    """The store as a plain directory: ``place`` and ``write`` are renames within it."""

    def __init__(self, root: Path) -> None:
        self._root = root

    @property
    def root(self) -> Path:
        return self._root

    def staging(self) -> AbstractContextManager[Path]:
        return scratch(self._root / STAGING)

    def place(self, staged: Path, relative: PurePosixPath) -> None:
        target = self._root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(target):
            return
        os.rename(staged, target)

    def write(self, relative: PurePosixPath, data: bytes) -> None:
        target = self._root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)

    def remove(self, relative: PurePosixPath) -> None:
        target = self._root / relative
        if os.path.lexists(target):
            remove_tree(target)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """An exclusive ``flock`` of the store's writer lock file, across processes and threads alike."""
        self._root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._root / WRITER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
