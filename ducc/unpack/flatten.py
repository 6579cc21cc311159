"""Layers (unpacked ``layerfs`` directories, base first) → one flat root with whiteouts applied.

The merge follows overlayfs, the semantics container runtimes give these
same layer directories: for each layer, directory by directory, an opaque
marker first clears what lower layers put there, then whiteouts delete, then
entries replace what they shadow (a directory merges into a directory and
replaces anything else). Nothing is ever resolved through a symlink, so a
flat root cannot reach outside itself. Whiteout markers never reach it.

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

from ducc.unpack.policy import OPAQUE, WHITEOUT_PREFIX


def _only_whiteouts(directory: str) -> bool:
    """True if ``directory`` holds whiteout markers and nothing else (at any depth); an empty one does not."""
    found = False
    with os.scandir(directory) as scan:
        for entry in scan:
            if entry.is_dir(follow_symlinks=False):
                if not _only_whiteouts(entry.path):
                    return False
                found = True
            elif entry.name.startswith(WHITEOUT_PREFIX):
                found = True
            else:
                return False
    return found


class _Flattener:
    def __init__(self, dest: Path) -> None:
        self.dest = str(dest)
        self.dir_meta: dict[str, tuple[int, float]] = {}
        self.can_link = True

    def clear(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def place_file(self, source: str, target: str) -> None:
        if self.can_link:
            try:
                os.link(source, target, follow_symlinks=False)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                self.can_link = exc.errno == errno.EMLINK
        shutil.copy2(source, target, follow_symlinks=False)

    def merge(self, source_dir: str, target_dir: str) -> None:
        with os.scandir(source_dir) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        names = {e.name for e in entries}
        if OPAQUE in names:
            with os.scandir(target_dir) as existing:
                for child in list(existing):
                    self.clear(child.path)
        for entry in entries:
            if entry.name.startswith(WHITEOUT_PREFIX) and entry.name != OPAQUE:
                self.clear(os.path.join(target_dir, entry.name[len(WHITEOUT_PREFIX) :]))
        for entry in entries:
            if entry.name.startswith(WHITEOUT_PREFIX):
                continue
            target = os.path.join(target_dir, entry.name)
            if entry.is_dir(follow_symlinks=False):
                try:
                    existing_dir = stat.S_ISDIR(os.lstat(target).st_mode)
                except FileNotFoundError:
                    existing_dir = False
                else:
                    if not existing_dir:
                        self.clear(target)
                if not existing_dir:
                    if _only_whiteouts(entry.path):
                        continue  # deletions inside a directory no lower layer has: nothing to show
                    os.mkdir(target, 0o700)
                st = entry.stat(follow_symlinks=False)
                self.dir_meta[target] = (stat.S_IMODE(st.st_mode), st.st_mtime)
                self.merge(entry.path, target)
                continue
            self.clear(target)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
                st = entry.stat(follow_symlinks=False)
                os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
            else:
                self.place_file(entry.path, target)

    def finish(self) -> None:
        for path in sorted(self.dir_meta, key=lambda p: p.count("/"), reverse=True):
            if os.path.isdir(path) and not os.path.islink(path):
                mode, mtime = self.dir_meta[path]
                os.chmod(path, mode)
                os.utime(path, (mtime, mtime))


def flatten(layers: Sequence[Path], dest: Path) -> None:
    """Merge ``layers`` (base first) into the empty directory ``dest``.

    ``dest`` should live on the same filesystem as the layers (then files are
    hardlinked). On error ``dest`` holds debris that the caller discards.
    """
    flattener = _Flattener(dest)
    for layer in layers:
        st = layer.stat()
        flattener.dir_meta[str(dest)] = (stat.S_IMODE(st.st_mode), st.st_mtime)
        flattener.merge(str(layer), str(dest))
    flattener.finish()
