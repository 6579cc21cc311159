"""Whole directory trees on disk, walked without recursion and without full paths.

The trees under a repository come from images, and an image may be hostile: thousands of nested
directories, names whose full path is far beyond ``PATH_MAX``. Everything that reads, measures,
copies or deletes such a tree goes through ``walk`` (and the ``Cursor`` it is built on): an explicit
stack of names instead of recursion, and every entry reached relative to the descriptor of its
directory (``openat``, ``dir_fd``), so neither Python's recursion limit nor ``PATH_MAX`` limits a
tree's depth. A walk holds one descriptor per cursor whatever the depth: going up reopens ``..``
and checks it is the very directory it came from.

Directories are never entered through a symlink (``O_NOFOLLOW``), so no walk leaves its tree.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeChanged(OSError):
    """A directory was moved away while it was being walked (``..`` is no longer where the walk came from)."""


def open_dir(name: str | Path, dir_fd: int | None = None) -> int:
    """A descriptor of the directory ``name`` (relative to ``dir_fd``), never through a symlink."""
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


class Cursor:
    """One open directory that moves down into a child and back up, holding one descriptor at any depth.

    ``fd`` is the current directory. ``down`` opens a child by name (not through a symlink); ``up``
    reopens ``..`` and checks it is the directory ``down`` came from (TreeChanged otherwise).
    ``close`` releases the descriptor; a cursor is also a context manager.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._trail: list[tuple[int, int]] = []  # (st_dev, st_ino) of each directory above

    @classmethod
    def at(cls, path: str | Path, dir_fd: int | None = None) -> Cursor:
        return cls(open_dir(path, dir_fd))

    @property
    def depth(self) -> int:
        return len(self._trail)

    def down(self, name: str) -> None:
        child = open_dir(name, self.fd)
        st = os.fstat(self.fd)
        os.close(self.fd)
        self.fd = child
        self._trail.append((st.st_dev, st.st_ino))

    def up(self) -> None:
        if not self._trail:
            raise ValueError("the cursor is at the top of its walk")
        parent = open_dir("..", self.fd)
        st = os.fstat(parent)
        expected = self._trail.pop()
        if (st.st_dev, st.st_ino) != expected:
            os.close(parent)
            raise TreeChanged(0, "a directory was moved while ducc walked it")
        os.close(self.fd)
        self.fd = parent

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Event(Enum):
    ENTER = "enter"  # now inside the directory ``rel`` ("" for the top): ``fd`` is it, ``names`` its content
    ENTRY = "entry"  # one name ``name`` in the directory ``fd``; ``st`` is its lstat
    LEAVE = "leave"  # done with the directory ``rel``: ``fd`` is its parent again ("" : the top, fd is the top)


@dataclass(frozen=True)
class Visit:
    event: Event
    fd: int
    rel: str
    name: str = ""
    st: os.stat_result | None = None
    names: tuple[str, ...] = ()

    @property
    def is_dir(self) -> bool:
        return self.st is not None and stat.S_ISDIR(self.st.st_mode)


class Walk:
    """Every entry under a directory, depth first, without recursion; iterate it for ``Visit``s.

    For each directory: ENTER (its names, listed once: the walk may change the directory), then for
    each name an ENTRY; after the ENTRY of a subdirectory the walk goes into it (unless ``prune()`` was
    called while handling that ENTRY) and comes back with a LEAVE. ``sort``: names in bytewise order.
    Descriptors in a Visit are valid only until the walk goes on. The top is ``path`` (relative to
    ``dir_fd`` if given); ``rel`` names are relative to it.
    """

    def __init__(self, path: str | Path, *, dir_fd: int | None = None, sort: bool = False) -> None:
        self._path = path
        self._dir_fd = dir_fd
        self._sort = sort
        self._pruned = False

    def prune(self) -> None:
        """Do not go into the directory of the ENTRY being handled."""
        self._pruned = True

    def __iter__(self) -> Iterator[Visit]:
        with Cursor.at(self._path, self._dir_fd) as cursor:
            names = self._list(cursor.fd)
            yield Visit(Event.ENTER, cursor.fd, "", names=names)
            stack: list[tuple[str, tuple[str, ...], int]] = [("", names, 0)]  # (rel, names, next index)
            while stack:
                rel, names, index = stack[-1]
                if index == len(names):
                    stack.pop()
                    if stack:
                        cursor.up()
                    yield Visit(Event.LEAVE, cursor.fd, rel, name=rel.rpartition("/")[2])
                    continue
                stack[-1] = (rel, names, index + 1)
                name = names[index]
                try:
                    st = os.stat(name, dir_fd=cursor.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while the walk was elsewhere: nothing to visit
                child = f"{rel}/{name}" if rel else name
                self._pruned = False
                yield Visit(Event.ENTRY, cursor.fd, child, name=name, st=st)
                if not stat.S_ISDIR(st.st_mode) or self._pruned:
                    continue
                cursor.down(name)
                child_names = self._list(cursor.fd)
                stack.append((child, child_names, 0))
                yield Visit(Event.ENTER, cursor.fd, child, name=name, names=child_names)

    def _list(self, fd: int) -> tuple[str, ...]:
        names = os.listdir(fd)
        if self._sort:
            names.sort(key=os.fsencode)
        return tuple(names)


def walk(path: str | Path, *, dir_fd: int | None = None, sort: bool = False) -> Walk:
    """A ``Walk`` of the tree at ``path`` (see there)."""
    return Walk(path, dir_fd=dir_fd, sort=sort)


@dataclass(frozen=True)
class TreeSize:
    """What a tree holds: its entries (directories, files, links; the top not counted) and the bytes of
    its regular files, each file counted once however many names it has inside the tree."""

    entries: int = 0
    bytes: int = 0

    def __add__(self, other: TreeSize) -> TreeSize:
        return TreeSize(self.entries + other.entries, self.bytes + other.bytes)


def measure(path: Path) -> TreeSize:
    """The size of the tree at ``path``, symlinks not followed; a missing tree is empty."""
    entries = size = 0
    seen: set[tuple[int, int]] = set()
    try:
        for visit in walk(path):
            if visit.event is not Event.ENTRY or visit.st is None:
                continue
            entries += 1
            st = visit.st
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                size += st.st_size
    except (FileNotFoundError, NotADirectoryError):
        if entries == 0:
            return TreeSize()
        raise
    return TreeSize(entries, size)


def _writable_dir(name: str, dir_fd: int, st: os.stat_result) -> None:
    """Let this process list and empty the directory ``name`` (published layers are read-only)."""
    if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
        os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd)


def remove_at(dir_fd: int, name: str) -> None:
    """``rm -rf`` of the entry ``name`` in the directory ``dir_fd``, at any depth, also as non-root on
    trees whose directories are read-only. A missing entry is nothing to do; any other failure raises."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    _writable_dir(name, dir_fd, st)
    tree = walk(name, dir_fd=dir_fd)
    for visit in tree:
        if visit.event is Event.ENTRY and visit.st is not None:
            if stat.S_ISDIR(visit.st.st_mode):
                _writable_dir(visit.name, visit.fd, visit.st)
            else:
                os.unlink(visit.name, dir_fd=visit.fd)
        elif visit.event is Event.LEAVE and visit.rel:
            os.rmdir(visit.name, dir_fd=visit.fd)
    os.rmdir(name, dir_fd=dir_fd)


def remove_tree(path: Path) -> None:
    """``rm -rf path`` (see ``remove_at``): any depth, read-only directories included. The path up to
    ``path``'s directory is the caller's and may pass symlinks; ``path`` itself is never followed."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        remove_at(fd, path.name)
    finally:
        os.close(fd)


def discard_tree(path: Path, what: str) -> bool:
    """Remove the tree at ``path``; one that cannot be removed is logged and left where it is (False),
    never raised: a writer that finds debris must not fail because of it."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("cannot remove %s %s, leaving it aside: %s", what, path, exc.strerror or exc)
        return False
    return True
