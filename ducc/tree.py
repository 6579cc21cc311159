"""Whole directory trees on disk."""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path


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
    stack = [str(path)]
    while stack:
        try:
            scan = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with scan:
            for entry in scan:
                entries += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if st.st_nlink > 1:
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    size += st.st_size
    return TreeSize(entries, size)


def remove_tree(path: Path) -> None:
    """``rm -rf``, also as non-root on trees whose directories are read-only (published layers are)."""

    def make_writable(func, target, _exc_info):  # type: ignore[no-untyped-def]
        for p in (os.path.dirname(target), target):
            try:
                if not os.path.islink(p):
                    os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) | 0o700)
            except OSError:
                pass
        func(target)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable)
