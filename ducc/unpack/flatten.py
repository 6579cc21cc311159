"""Layers (unpacked ``layerfs`` directories, base first) → one flat root with whiteouts applied.

The merge follows overlayfs, the semantics container runtimes give these
same layer directories: for each layer, directory by directory, an opaque
marker first clears what lower layers put there, then whiteouts delete, then
entries replace what they shadow (a directory merges into a directory and
replaces anything else). Nothing is ever resolved through a symlink, so a
flat root cannot reach outside itself. Whiteout markers never reach it.

Each layer is read with ``ducc.tree.walk`` while a ``Cursor`` follows it in
the flat root, so every name is reached from its directory's descriptor: the
depth of an image's tree and the length of its paths are no limit here (the
unpacker's budget is what bounds them).

Files are hardlinked from the layers when they share a filesystem (the flat
costs only metadata); otherwise copied. The layers are immutable, so a shared
inode is never written: anything added to a flat root later must replace a
path, never write into it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from ducc.tree import Cursor, Event, remove_at, walk
from ducc.unpack.policy import OPAQUE, WHITEOUT_PREFIX

_COPY_BUFFER = 1 << 20


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def copy_file(name: str, source_fd: int, target_fd: int, st: os.stat_result) -> None:
    """Copy the regular file ``name`` of the directory ``source_fd`` into ``target_fd`` (a new file),
    with its mode bits and times."""
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=source_fd)
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=target_fd)
        try:
            with os.fdopen(src, "rb", closefd=False) as reader, os.fdopen(dst, "wb", closefd=False) as writer:
                shutil.copyfileobj(reader, writer, _COPY_BUFFER)
            os.chmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


class _Frame:
    """A directory of the layer being merged: whether the flat root got it from this layer, and what its
    entries were so far (whiteouts, or directories holding only whiteouts; anything else)."""

    def __init__(self, created: bool) -> None:
        self.created = created
        self.whiteouts = False
        self.other = False

    def saw(self, *, whiteout: bool) -> None:
        if whiteout:
            self.whiteouts = True
        else:
            self.other = True

    @property
    def only_whiteouts(self) -> bool:
        return self.whiteouts and not self.other


class _Flattener:
    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.dir_meta: dict[str, tuple[int, int]] = {}  # rel -> (mode bits, mtime ns) of the flat's directories
        self.can_link = True

    def place_file(self, name: str, source_fd: int, target_fd: int, st: os.stat_result) -> None:
        if self.can_link:
            try:
                os.link(name, name, src_dir_fd=source_fd, dst_dir_fd=target_fd, follow_symlinks=False)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                self.can_link = exc.errno == errno.EMLINK
        copy_file(name, source_fd, target_fd, st)

    def merge(self, layer: Path) -> None:
        """Merge one layer into the flat root; the flat's cursor follows the layer's walk.

        A directory this layer brings (none was there) that holds whiteouts and nothing else, at any
        depth, deletes nothing and shows nothing: it is removed again when the walk leaves it. Whether
        it does is known then, from what its entries were (no second walk of its subtree)."""
        tree = walk(layer, sort=True)
        frames: list[_Frame] = []
        created = False
        with Cursor.at(self.dest) as flat:
            for visit in tree:
                if visit.event is Event.ENTER:
                    if visit.rel:
                        flat.down(visit.name)
                    frames.append(_Frame(created))
                    self.deletions(visit.names, flat.fd)
                elif visit.event is Event.LEAVE:
                    frame = frames.pop()
                    if not visit.rel:
                        continue
                    flat.up()
                    if frame.only_whiteouts and frame.created:
                        os.rmdir(visit.name, dir_fd=flat.fd)
                        del self.dir_meta[visit.rel]
                    frames[-1].saw(whiteout=frame.only_whiteouts)
                elif visit.name.startswith(WHITEOUT_PREFIX):
                    tree.prune()  # a marker, handled with its directory's deletions; never shown
                    frames[-1].saw(whiteout=True)
                else:
                    assert visit.st is not None
                    created = self.entry(visit.name, visit.rel, visit.fd, flat.fd, visit.st)
                    if not visit.is_dir:
                        frames[-1].saw(whiteout=False)

    def deletions(self, names: Sequence[str], flat_fd: int) -> None:
        """Opaque marker first (every lower child goes), then whiteouts, in the flat's directory."""
        if OPAQUE in names:
            for child in os.listdir(flat_fd):
                remove_at(flat_fd, child)
        for name in names:
            if name.startswith(WHITEOUT_PREFIX) and name != OPAQUE:
                remove_at(flat_fd, name[len(WHITEOUT_PREFIX):])

    def entry(self, name: str, rel: str, source_fd: int, flat_fd: int, st: os.stat_result) -> bool:
        """Place one entry of the layer; True if it is a directory the flat did not have."""
        existing = _lstat(name, flat_fd)
        if stat.S_ISDIR(st.st_mode):
            self.dir_meta[rel] = (stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                return False
            if existing is not None:
                remove_at(flat_fd, name)
            os.mkdir(name, 0o700, dir_fd=flat_fd)
            return True
        if existing is not None:
            remove_at(flat_fd, name)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=source_fd), name, dir_fd=flat_fd)
            os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=flat_fd, follow_symlinks=False)
        else:
            self.place_file(name, source_fd, flat_fd, st)
        return False

    def finish(self) -> None:
        """Directory modes and times, each directory once it is complete (a read-only one stays writable
        until everything under it is in place)."""
        for visit in walk(self.dest):
            if visit.event is not Event.LEAVE:
                continue
            meta = self.dir_meta.get(visit.rel)
            if meta is None:
                continue
            mode, mtime = meta
            if visit.rel:
                os.chmod(visit.name, mode, dir_fd=visit.fd)
                os.utime(visit.name, ns=(mtime, mtime), dir_fd=visit.fd, follow_symlinks=False)
            else:
                os.chmod(visit.fd, mode)
                os.utime(visit.fd, ns=(mtime, mtime))


def flatten(layers: Sequence[Path], dest: Path) -> None:
    """Merge ``layers`` (base first) into the empty directory ``dest``.

    ``dest`` should live on the same filesystem as the layers (then files are
    hardlinked). On error ``dest`` holds debris that the caller discards.
    """
    flattener = _Flattener(dest)
    for layer in layers:
        st = layer.stat()
        flattener.dir_meta[""] = (stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        flattener.merge(layer)
    flattener.finish()
