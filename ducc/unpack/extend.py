"""Adding files to a flat root without ever writing into what the layers share.

Files of a flat root are hardlinks of the layers' files (and of other images'
flat roots), so an addition must never open an existing path for writing:
every file is written under a temporary name and renamed over its path (a new
inode), directories are created only where nothing is, and no path is
followed through a symlink. Where the image has something in the way (a
symlink where a mount point should be, a directory named ``etc/hosts``) the
image wins and a warning says what was left out.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ducc import layout
from ducc.model.manifest import ImageConfig
from ducc.singularity import MOUNT_POINTS, additions, image_summary

log = logging.getLogger(__name__)

RECORD = layout.FLAT_ADDITIONS


class _InTheWay(Exception):
    pass


@contextmanager
def _writable(directory: Path) -> Iterator[None]:
    """Let an unprivileged writer add to a directory the image made read-only, then restore its mode."""
    mode = stat.S_IMODE(directory.lstat().st_mode)
    if mode & 0o200 or os.geteuid() == 0:
        yield
        return
    os.chmod(directory, mode | 0o200)
    try:
        yield
    finally:
        os.chmod(directory, mode)


class _Extender:
    def __init__(self, flat: Path) -> None:
        self.flat = flat
        self.added: list[str] = []

    def directory(self, rel: str, mode: int = 0o755) -> Path:
        """The real directory ``rel`` (created where missing); _InTheWay if a symlink or file stands there."""
        current = self.flat
        built = ""
        for part in rel.split("/"):
            built = f"{built}/{part}" if built else part
            path = current / part
            try:
                st = path.lstat()
            except FileNotFoundError:
                with _writable(current):
                    os.mkdir(path)
                    os.chmod(path, 0o1777 if built in ("tmp", "var/tmp") else mode)
                self.added.append(built + "/")
            else:
                if not stat.S_ISDIR(st.st_mode):
                    kind = "symlink" if stat.S_ISLNK(st.st_mode) else "file"
                    raise _InTheWay(f"{built} is a {kind} in the image")
            current = path
        return current

    def _replace(self, rel: str, create: Callable[[Path], None]) -> None:
        """Create ``rel`` under a temporary name with ``create`` and rename it over whatever was there."""
        parent_rel, _, name = rel.rpartition("/")
        parent = self.directory(parent_rel) if parent_rel else self.flat
        path = parent / name
        if path.is_dir() and not path.is_symlink():
            raise _InTheWay(f"{rel} is a directory in the image")
        tmp = parent / f".{name}.ducc-{secrets.token_hex(4)}"
        with _writable(parent):
            create(tmp)
            os.replace(tmp, path)
        self.added.append(rel)

    def file(self, rel: str, content: bytes, mode: int) -> None:
        def create(tmp: Path) -> None:
            with open(tmp, "xb") as fh:  # "x": a new inode, never an existing file
                fh.write(content)
            os.chmod(tmp, mode)

        self._replace(rel, create)

    def symlink(self, rel: str, target: str) -> None:
        self._replace(rel, lambda tmp: os.symlink(target, tmp))

    def attempt(self, what: str, action, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            action(*args)
        except _InTheWay as exc:
            log.warning("flat root: %s left as the image has it (%s)", what, exc)


def add_singularity(flat: Path, config: ImageConfig) -> list[str]:
    """Add mount points, bind targets, ``.singularity.d`` and its symlinks to ``flat``; return what was added."""
    extender = _Extender(flat)
    plan = additions(config)
    for rel in MOUNT_POINTS:
        extender.attempt(rel, extender.directory, rel)
    for rel in plan.directories:
        extender.attempt(rel, extender.directory, rel)
    for rel, (content, mode) in plan.files.items():
        extender.attempt(rel, extender.file, rel, content, mode)
    for rel, target in plan.symlinks.items():
        extender.attempt(rel, extender.symlink, rel, target)
    record = {"added_by": "ducc", "added": extender.added, "image": image_summary(config)}
    extender.attempt(RECORD, extender.file, RECORD, (json.dumps(record, indent=2) + "\n").encode(), 0o644)
    return extender.added
