"""The store inside a CernVM-FS repository: a ``Committer`` (``ducc.publish.podman.committer``) that writes
through ``cvmfs_server`` (docs/podman.md, "CernVM-FS").

What CernVM-FS 2.12 keeps decides the shape (``tests/integration/test_podman_store.py`` checks it on
the real server): a 0/0 character device (overlay's whiteout) cannot be made through a transaction's
union mount, but ``cvmfs_server ingest`` of a tar holding one publishes it; ``trusted.overlay.opaque``
set in a transaction reaches clients when the repository has ``CVMFS_INCLUDE_XATTRS=true``. So:

- ``place`` of a layer tree (``overlay/<id>``: ``diff``, ``link``, ``lower``) ingests it as a tar at
  once (its own catalog; whiteouts as character-device entries), and notes the directories that carry
  the opaque attribute in staging;
- ``write``, ``remove``, ``place`` of anything else (the ``l/`` symlinks) and those opaque attributes
  wait, and are written in one transaction when ``exclusive`` ends: one revision holds the indexes
  and everything they name, so readers see the store before or after the change, never during it.

A layer ingested by a change that then fails is a tree no index names: ``gc`` removes it, as it does
the debris of a crash in a directory store. ``exclusive`` holds the repository's own writer lock
(``Publisher.transaction``), so the store's commands never meet a conversion's on the repository.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from ducc.errors import PublishError
from ducc.publish import Publisher
from ducc.publish.podman.committer import scratch
from ducc.publish.podman.whiteout import OPAQUE_VALUE, OPAQUE_XATTR
from ducc.tree import Event, discard_tree, remove_tree, walk

if TYPE_CHECKING:
    from ducc.publish.cvmfs_server import CvmfsServer

log = logging.getLogger(__name__)

Change = Callable[[Path], None]  # one change written into the open transaction, given the store's root there


class CvmfsCommitter:
    """The store at ``store`` (relative to the repository root) of ``server``'s repository, which
    ``publisher`` publishes; trees are built under ``staging_root`` (a local directory outside the mount)."""

    def __init__(self, publisher: Publisher, server: CvmfsServer, store: PurePosixPath, staging_root: Path) -> None:
        if store.is_absolute() or ".." in store.parts or not store.parts:
            raise PublishError(f"podman store {store}: must be a directory inside the repository")
        self._publisher = publisher
        self._server = server
        self._store = store
        self._staging_root = staging_root
        self._changes: list[Change] | None = None  # while ``exclusive`` is held

    @property
    def root(self) -> Path:
        """The published store (the mount shows the published revision between transactions)."""
        return self._server.mount / self._store

    def staging(self) -> AbstractContextManager[Path]:
        return scratch(self._staging_root)

    def place(self, staged: Path, relative: PurePosixPath) -> None:
        if os.path.lexists(self.root / relative):
            return
        if staged.is_dir() and not staged.is_symlink():
            opaque = self._ingest(staged, relative)
            self._pending().extend(_opaque(relative / rel) for rel in opaque)
        elif staged.is_symlink():
            target = os.readlink(staged)
            self._pending().append(lambda root: _symlink(root / relative, target))
        else:
            data = staged.read_bytes()
            self._pending().append(lambda root: _write(root / relative, data))

    def write(self, relative: PurePosixPath, data: bytes) -> None:
        self._pending().append(lambda root: _write(root / relative, data))

    def remove(self, relative: PurePosixPath) -> None:
        if os.path.lexists(self.root / relative):  # nothing published there: no transaction for it
            self._pending().append(lambda root: _remove(root / relative))

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The repository's writer lock; the waiting changes are published in one transaction at the end
        (none waiting: no transaction). A failure aborts it and drops them."""
        with self._publisher.transaction():
            self._sweep()
            self._changes = []
            try:
                yield
                if self._changes:
                    self._publish(self._changes)
            finally:
                self._changes = None

    # -- steps --------------------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Staging a killed writer left: the store's trees are built only under ``exclusive``, which is held
        now, so whatever is there is debris."""
        try:
            leftovers = os.listdir(self._staging_root)
        except FileNotFoundError:
            return
        for name in leftovers:
            discard_tree(self._staging_root / name, "podman store staging left by a killed writer")

    def _pending(self) -> list[Change]:
        if self._changes is None:
            raise PublishError("podman store: a change outside the committer's exclusive() block")
        return self._changes

    def _ingest(self, staged: Path, relative: PurePosixPath) -> list[str]:
        """Ingest the tree ``staged`` at ``relative`` (one revision, its own catalog); the directories in it
        (relative to it) that carry the opaque attribute."""
        opaque: list[str] = []

        def stream(out: BinaryIO) -> None:
            opaque.extend(write_overlay_tar(staged, out))

        self._server.ingest(stream, str(self._store / relative), catalog=True)
        log.info("podman store: ingested %s into %s", relative, self._server.repository)
        return opaque

    def _publish(self, changes: list[Change]) -> None:
        lease = str(self._store) if self._server.gateway else None
        self._server.transaction(lease)
        try:
            root = self._server.mount / self._store
            for change in changes:
                change(root)
            self._server.publish()
        except BaseException:
            try:
                self._server.abort(missing_ok=True)
            except PublishError as exc:
                log.error("podman store: could not abort the failed transaction on %s: %s",
                          self._server.repository, exc)
            raise


def write_overlay_tar(root: Path, out: BinaryIO) -> list[str]:
    """Write the tree under ``root`` as a plain tar to ``out``, whiteouts (0/0 character devices) as
    character-device entries, and return the directories (relative, ``""`` for ``root``) that carry
    the opaque attribute, which a tar cannot give ``ingest``. One iterative walk (any depth); files with
    several names are hardlinks within one directory (what a CVMFS catalog keeps), copies elsewhere."""
    opaque: list[str] = []
    first: dict[tuple[int, int], tuple[str, str]] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for visit in walk(root, sort=True):
            if visit.event is Event.ENTER:
                try:
                    if os.getxattr(visit.fd, OPAQUE_XATTR) == OPAQUE_VALUE:
                        opaque.append(visit.rel)
                except OSError:
                    pass
                continue
            if visit.event is not Event.ENTRY or visit.st is None:
                continue
            st, name = visit.st, visit.rel
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(visit.name, dir_fd=visit.fd)
                tar.addfile(info)
            elif stat.S_ISCHR(st.st_mode):
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                key, directory = (st.st_dev, st.st_ino), name.rpartition("/")[0]
                earlier = first.get(key) if st.st_nlink > 1 else None
                if earlier is not None and earlier[0] == directory:
                    info.type, info.linkname = tarfile.LNKTYPE, earlier[1]
                    tar.addfile(info)
                    continue
                if st.st_nlink > 1 and earlier is None:
                    first[key] = (directory, name)
                info.size = st.st_size
                fd = os.open(visit.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=visit.fd)
                with os.fdopen(fd, "rb") as source:
                    tar.addfile(info, source)
            else:
                raise PublishError(f"podman store: {name} in {root} is neither a file, a directory, a symlink "
                                   "nor a whiteout")
    return opaque


def _opaque(relative: PurePosixPath) -> Change:
    return lambda root: os.setxattr(root / relative, OPAQUE_XATTR, OPAQUE_VALUE, follow_symlinks=False)


def _symlink(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(path):
        os.symlink(target, path)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _remove(path: Path) -> None:
    if os.path.lexists(path):
        remove_tree(path)
