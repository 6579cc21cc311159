"""A published layer (``layerfs``) → the overlay ``diff`` directory of the store (docs/podman.md).

One iterative walk of ``layerfs`` (``ducc.tree.walk``) while a ``Cursor`` follows it in the new tree, so
no depth is too deep. Regular files are hard-linked from ``layerfs`` (the layers are immutable, so a
shared inode is never written), copied when the store is on another filesystem (files that are one
inode in ``layerfs`` stay one inode among the copies). Directories, symlinks and copies keep mode,
owner and times. Whiteout markers become overlay's whiteouts (``ducc.publish.podman.whiteout``): a 0/0
character device needs CAP_MKNOD and the opaque attribute CAP_SYS_ADMIN (``trusted.*``), so only root
writes a store; anyone else gets a PermissionError that says so.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ducc.publish.podman.whiteout import OPAQUE_VALUE, OPAQUE_XATTR, is_marker, plan_directory
from ducc.tree import Cursor, Event, remove_at, walk
from ducc.unpack.flatten import copy_file
from ducc.unpack.policy import OPAQUE, WHITEOUT_PREFIX

_WHITEOUT_DEVICE = stat.S_IFCHR | 0o000


@dataclass
class DiffReport:
    entries: int = 0
    linked: int = 0
    copied: int = 0
    whiteouts: int = 0
    opaque: int = 0


def build_diff(layerfs: Path, dest: Path, lowers: Sequence[Path] = ()) -> DiffReport:
    """Write the overlay form of ``layerfs`` into ``dest`` (which must not exist); ``lowers`` are the
    ``layerfs`` of the layers below it, base first. On error ``dest`` holds debris the caller discards
    (it is always staged).

    A directory this layer brings where the layers below have none, holding whiteouts and nothing else
    at any depth, deletes nothing: ducc's flat root does not show it (``ducc.unpack.flatten``,
    docs/design.md §5), so the diff does not hold it either (a whiteout takes its place if the layers
    below have a file there)."""
    top = os.lstat(layerfs)
    os.mkdir(dest, 0o700)
    builder = _Builder(os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), lowers)
    try:
        builder.run(layerfs)
    except PermissionError as exc:
        if os.geteuid() != 0:
            raise PermissionError(exc.errno, "writing podman's store takes root: overlay whiteouts are "
                                  "0/0 character devices and trusted.* attributes", exc.filename) from exc
        raise
    finally:
        os.close(builder.root_fd)
    _own(str(dest), None, top)
    os.chmod(dest, stat.S_IMODE(top.st_mode))
    os.utime(dest, ns=(top.st_atime_ns, top.st_mtime_ns))
    return builder.report


@dataclass
class _Frame:
    """A directory being copied: whether it holds whiteouts, and anything else (at any depth)."""

    whiteouts: bool = False
    other: bool = False

    @property
    def only_whiteouts(self) -> bool:
        return self.whiteouts and not self.other


class _Builder:
    def __init__(self, root_fd: int, lowers: Sequence[Path]) -> None:
        self.root_fd = root_fd
        self.lowers = lowers
        self.frames: list[_Frame] = []
        self.report = DiffReport()
        self.copying = False  # once a link failed across filesystems, every file is copied
        self.copies: dict[tuple[int, int], str] = {}  # copied inode → its first path in the diff
        self.opaque_next: set[str] = set()  # directories a parent's plan made opaque
        self.entered: list[os.stat_result] = []  # lstat of the directories entered, innermost last

    def run(self, layerfs: Path) -> None:
        tree = walk(layerfs, sort=True)
        with Cursor.at(".", self.root_fd) as target:
            for visit in tree:
                if visit.event is Event.ENTER:
                    if visit.rel:
                        target.down(visit.name)
                    self.frames.append(_Frame(whiteouts=any(is_marker(n) for n in visit.names)))
                    self.enter(visit.fd, visit.rel, visit.names, target.fd)
                elif visit.event is Event.ENTRY:
                    assert visit.st is not None
                    if is_marker(visit.name):
                        tree.prune()  # ``enter`` made what the marker stands for; never copied
                        continue
                    self.entry(visit.name, visit.fd, visit.rel, visit.st, target.fd)
                    if visit.is_dir:
                        self.entered.append(visit.st)
                    else:
                        self.frames[-1].other = True
                elif visit.rel:  # LEAVE of a subdirectory: its mode, owner and times, now that it is full
                    target.up()
                    self.leave(visit.name, visit.rel, target.fd, self.entered.pop(), self.frames.pop())

    def leave(self, name: str, rel: str, target_fd: int, st: os.stat_result, frame: _Frame) -> None:
        """Finish the directory ``name`` just left, or drop it if it holds only whiteouts of nothing."""
        if frame.only_whiteouts:
            below = lower_kind(self.lowers, rel)
            if below != "directory":
                remove_at(target_fd, name)
                if below is not None:  # the layer replaced a lower file by this directory: it is gone
                    os.mknod(name, _WHITEOUT_DEVICE, os.makedev(0, 0), dir_fd=target_fd)
                self.frames[-1].whiteouts = True
                return
        _finish_dir(name, target_fd, st)
        if frame.only_whiteouts:
            self.frames[-1].whiteouts = True
        else:
            self.frames[-1].other = True

    def enter(self, fd: int, rel: str, names: tuple[str, ...], target_fd: int) -> None:
        """Apply the whiteout plan of the directory just entered (``fd`` in layerfs, ``target_fd`` in the diff)."""
        directories = set()
        for name in names:
            if WHITEOUT_PREFIX + name in names:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    directories.add(name)
        plan = plan_directory(names, directories)
        if plan.opaque or rel in self.opaque_next:
            self.opaque_next.discard(rel)
            os.setxattr(target_fd, OPAQUE_XATTR, OPAQUE_VALUE)
            self.report.opaque += 1
        for child in plan.opaque_children:
            self.opaque_next.add(f"{rel}/{child}" if rel else child)
        for device in plan.devices:
            os.mknod(device, _WHITEOUT_DEVICE, os.makedev(0, 0), dir_fd=target_fd)
            self.report.whiteouts += 1

    def entry(self, name: str, fd: int, rel: str, st: os.stat_result, target_fd: int) -> None:
        self.report.entries += 1
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=target_fd)
        elif stat.S_ISREG(st.st_mode):
            self.file(name, fd, rel, st, target_fd)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=fd), name, dir_fd=target_fd)
            _own(name, target_fd, st)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=target_fd, follow_symlinks=False)
        # ducc publishes no other kind of entry (devices and FIFOs are skipped when a layer is unpacked)

    def file(self, name: str, fd: int, rel: str, st: os.stat_result, target_fd: int) -> None:
        if not self.copying:
            try:
                os.link(name, name, src_dir_fd=fd, dst_dir_fd=target_fd, follow_symlinks=False)
                self.report.linked += 1
                return
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self.copying = True
        key = (st.st_dev, st.st_ino)
        first = self.copies.get(key)
        if first is not None:  # one inode in layerfs stays one inode in the diff
            os.link(first, name, src_dir_fd=self.root_fd, dst_dir_fd=target_fd, follow_symlinks=False)
            return
        copy_file(name, fd, target_fd, st)
        _own(name, target_fd, st)
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=target_fd)  # chown may have cleared set-id bits
        if st.st_nlink > 1:
            self.copies[key] = rel
        self.report.copied += 1


def lower_kind(lowers: Sequence[Path], rel: str) -> str | None:
    """What the merged view of ``lowers`` (base first) has at ``rel``: ``"directory"``, ``"other"`` or
    None (nothing), honouring whiteouts and opaque markers. A path too long to look up counts as a
    directory, which keeps what this layer has there."""
    parts = rel.split("/")
    try:
        for layer in reversed(lowers):
            directory = layer
            for index, part in enumerate(parts):
                if os.path.lexists(directory / (WHITEOUT_PREFIX + part)):
                    return None  # deleted here: lower layers are hidden
                candidate = directory / part
                try:
                    st = os.lstat(candidate)
                except FileNotFoundError:
                    if os.path.lexists(directory / OPAQUE):
                        return None
                    break  # not in this layer: look lower
                if index + 1 == len(parts):
                    return "directory" if stat.S_ISDIR(st.st_mode) else "other"
                if not stat.S_ISDIR(st.st_mode):
                    return None  # a file or a symlink shadows the rest of the path
                directory = candidate
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        return "directory"
    return None


def _own(name: str, dir_fd: int | None, st: os.stat_result) -> None:
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        os.chown(name, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)


def _finish_dir(name: str, dir_fd: int, st: os.stat_result) -> None:
    _own(name, dir_fd, st)
    os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd)
