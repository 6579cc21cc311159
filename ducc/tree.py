"""Whole directory trees on disk."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


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
