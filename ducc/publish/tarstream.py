"""Plain tar streams for ``cvmfs_server ingest``: a tree ducc has staged (a layer, a flat root).

Layers are not streamed from the registry into ``ingest`` as they come: ducc unpacks each layer into
staging first (``ducc.unpack.apply``, the one implementation of its path policy and whiteout rules)
and streams the staged tree. Both publishers then publish the very same trees, a hostile layer is
refused before anything of it reaches ``ingest`` (which would silently drop ``..`` and move absolute
names under its base dir), hardlinks into lower layers are resolved from whole lower layers, and the
flat root is built from the staged copies without reading the repository back. Measured with
``bench/cvmfs.sh`` (the 3-layer, 600 MB toolchain image), producing all four streams takes ducc
about a quarter of the time the stand-in's ingests take, so streaming layers directly would save
little and need a second copy of the path policy.

``write_tree`` promises:

- uncompressed PAX tar (long names, big ids, any bytes in names), numeric owners only (no user
  or group names, which a reader would map through its own passwd);
- names relative to the ingest base dir, each checked by ducc's path policy
  (``ducc.unpack.policy.clean_name``) before it is written;
- the end-of-archive blocks are written last, after ``before_end`` (a final check) has passed. A tar
  reader may stop at them, so a failure must raise before the end; the stream then ends without
  ducc's end frame and the guard poisons it (``ducc.publish.ingest_guard``).
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ducc.errors import UnsafeLayer
from ducc.layout import CATALOG
from ducc.tree import Event, walk
from ducc.unpack.policy import clean_name

log = logging.getLogger(__name__)

_BUFFER = 1 << 20


@dataclass
class StreamReport:
    """What one stream held."""

    entries: int = 0
    bytes: int = 0
    hardlinks: int = 0
    skipped: list[str] = field(default_factory=list)


class _Sink:
    """What TarFile writes to: ``out`` plus the position TarFile asks for once. Writing through it
    (rather than tarfile's stream mode, whose 1 MiB buffer is re-copied on every write) keeps ducc's
    side of an ingest cheap; after ``abandon`` nothing more reaches ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.position = 0
        self.abandoned = False

    def write(self, data: bytes) -> int:
        if not self.abandoned:
            self.out.write(data)
            self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position


def _open(out: BinaryIO) -> tarfile.TarFile:
    return tarfile.TarFile(fileobj=_Sink(out), mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[arg-type]
                           encoding="utf-8", errors="surrogateescape", copybufsize=_BUFFER)


def _abandon(tar: tarfile.TarFile) -> None:
    """After a failure nothing more may reach the stream, not even the end-of-archive blocks."""
    sink = tar.fileobj
    if isinstance(sink, _Sink):
        sink.abandoned = True
    setattr(tar, "closed", True)  # noqa: B010  (TarFile.close() then does nothing)


def _finish(tar: tarfile.TarFile, before_end: Callable[[], None] | None) -> None:
    if before_end is not None:
        before_end()  # raises before the end-of-archive blocks: the archive stays unfinished
    tar.close()


def _checked(rel: str, prefix: str) -> str:
    name = f"{prefix}/{rel}" if prefix else rel
    if clean_name(name) != name:
        raise UnsafeLayer(f"tree entry {name!r} does not have a canonical relative name")
    return name


# -- a staged tree ------------------------------------------------------------------------------


def write_tree(root: Path, out: BinaryIO, *, prefix: str = "",
               before_end: Callable[[], None] | None = None) -> StreamReport:
    """Write everything under ``root`` (not ``root`` itself) as a tar to ``out``.

    Order is deterministic: depth first, names sorted bytewise, a directory before its content.
    Directories, regular files and symlinks keep mode bits (setuid included), uid, gid and mtime;
    symlink targets are written verbatim. Files with several names are written as hardlinks only
    to an earlier name in the same directory (a CVMFS catalog keeps hardlinks within one
    directory); elsewhere the content is written again as a regular file (CVMFS stores the
    content once anyway). Devices, FIFOs and sockets cannot be published and are skipped.
    A ``.cvmfscatalog`` that is not a regular file (it would crash ``ingest``) raises UnsafeLayer.
    """
    if prefix:
        prefix = clean_name(prefix)
    report = StreamReport()
    tar = _open(out)
    first_name: dict[tuple[int, int], tuple[str, str]] = {}  # inode -> (directory, tar name)

    def add(fd: int, name: str, rel: str, st: os.stat_result) -> None:
        tar_name = _checked(rel, prefix)
        if name == CATALOG and not stat.S_ISREG(st.st_mode):
            raise UnsafeLayer(f"{tar_name!r} is not a regular file: cvmfs_server ingest cannot take it")
        info = tarfile.TarInfo(tar_name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.mtime = int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            report.entries += 1
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(name, dir_fd=fd)
            tar.addfile(info)
            report.entries += 1
        elif stat.S_ISREG(st.st_mode):
            rel_dir = rel.rpartition("/")[0]
            key = (st.st_dev, st.st_ino)
            earlier = first_name.get(key) if st.st_nlink > 1 else None
            if earlier is not None and earlier[0] == rel_dir:
                info.type = tarfile.LNKTYPE
                info.linkname = earlier[1]
                tar.addfile(info)
                report.hardlinks += 1
            else:
                if st.st_nlink > 1 and earlier is None:
                    first_name[key] = (rel_dir, tar_name)
                info.size = st.st_size
                source_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                with os.fdopen(source_fd, "rb") as source:
                    tar.addfile(info, source)
                report.bytes += st.st_size
            report.entries += 1
        else:
            log.debug("not streaming %s: devices, FIFOs and sockets cannot be published", tar_name)
            report.skipped.append(tar_name)

    def walk_tree() -> None:
        for visit in walk(root, sort=True):  # no recursion, no full paths: any depth streams
            if visit.event is Event.ENTRY and visit.st is not None:
                add(visit.fd, visit.name, visit.rel, visit.st)

    try:
        walk_tree()
        _finish(tar, before_end)
    except BaseException:
        _abandon(tar)
        raise
    return report
