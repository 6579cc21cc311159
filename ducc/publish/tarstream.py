"""Plain tar streams for ``cvmfs_server ingest``: a staged tree, or a layer passed through.

Both writers promise:

- uncompressed PAX tar (long names, big ids, any bytes in names), numeric owners only (no user
  or group names, which a reader would map through its own passwd);
- names relative to the ingest base dir, each checked by ducc's path policy
  (``ducc.unpack.policy.clean_name``) before it is written — ``ingest`` itself drops ``..``
  silently and moves absolute names under the base dir, so only ducc can refuse a hostile name;
- the end-of-archive blocks are written last, after ``before_end`` (a final check, e.g. the
  layer's digest) has passed. A tar reader treats whatever precedes them — or a stream that stops
  between entries — as a finished archive, so a failure must raise before the end and leave the
  caller to poison the stream (``ducc.publish.cvmfs_server.poison``).
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ducc.errors import UnsafeLayer, UnsupportedLayer
from ducc.layout import CATALOG
from ducc.unpack.apply import lookup_lower
from ducc.unpack.policy import clean_name, readable_mode, whiteout_of
from ducc.verify import Readable

log = logging.getLogger(__name__)

_BUFFER = 1 << 20
_DIR, _FILE, _LINK = "d", "f", "l"


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

    def walk(directory: Path, rel_dir: str) -> None:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: os.fsencode(e.name))
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            name = _checked(rel, prefix)
            st = entry.stat(follow_symlinks=False)
            if entry.name == CATALOG and not stat.S_ISREG(st.st_mode):
                raise UnsafeLayer(f"{name!r} is not a regular file: cvmfs_server ingest cannot take it")
            info = tarfile.TarInfo(name)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                report.entries += 1
                walk(Path(entry.path), rel)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(entry.path)
                tar.addfile(info)
                report.entries += 1
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                earlier = first_name.get(key) if st.st_nlink > 1 else None
                if earlier is not None and earlier[0] == rel_dir:
                    info.type = tarfile.LNKTYPE
                    info.linkname = earlier[1]
                    tar.addfile(info)
                    report.hardlinks += 1
                else:
                    if st.st_nlink > 1 and earlier is None:
                        first_name[key] = (rel_dir, name)
                    info.size = st.st_size
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                    with os.fdopen(fd, "rb") as source:
                        tar.addfile(info, source)
                    report.bytes += st.st_size
                report.entries += 1
            else:
                log.debug("not streaming %s: devices, FIFOs and sockets cannot be published", name)
                report.skipped.append(name)

    try:
        walk(root, "")
        _finish(tar, before_end)
    except BaseException:
        _abandon(tar)
        raise
    return report


# -- a layer tar, passed through ----------------------------------------------------------------


class _LayerCheck:
    """The confinement rules of ``ducc.unpack.apply``, decided from the names alone."""

    def __init__(self, lowers: Sequence[Path]) -> None:
        self.kinds: dict[str, str] = {"": _DIR}
        self.lowers = lowers

    def parent(self, rel: str) -> None:
        built = ""
        for part in rel.split("/")[:-1]:
            built = f"{built}/{part}" if built else part
            if self.kinds.get(built) == _LINK:
                raise UnsafeLayer(f"layer entry {rel!r} would be written through the symlink {built!r}")
            self.kinds[built] = _DIR

    def put(self, rel: str, kind: str) -> None:
        prefix = rel + "/"
        if self.kinds.get(rel) == _DIR and kind != _DIR:
            for name in [n for n in self.kinds if n.startswith(prefix)]:
                del self.kinds[name]
        self.kinds[rel] = kind

    def hardlink(self, rel: str, linkname: str) -> tuple[str, Path | None]:
        """(target, None) for a target in this layer; (target, path) for one in a lower layer."""
        target = clean_name(linkname)
        if not target:
            raise UnsafeLayer(f"hardlink {rel!r} points at the root directory")
        kind = self.kinds.get(target)
        if kind == _DIR:
            raise UnsafeLayer(f"hardlink {rel!r} points at the directory {target!r}")
        if kind == _LINK:
            raise UnsafeLayer(f"hardlink {rel!r} points at the symlink {target!r}")
        if kind == _FILE:
            return target, None
        built = ""
        for part in target.split("/")[:-1]:
            built = f"{built}/{part}" if built else part
            if self.kinds.get(built) == _LINK:
                raise UnsafeLayer(f"hardlink {rel!r} points through the symlink {built!r}")
        source = lookup_lower(self.lowers, target)
        if source is None:
            raise UnsafeLayer(f"hardlink {rel!r} points at {target!r}, which no lower layer provides")
        return target, source


def copy_layer(source: Readable, out: BinaryIO, *, lowers: Sequence[Path] = (),
               before_end: Callable[[], None] | None = None) -> StreamReport:
    """Pass the layer tar read from ``source`` to ``out``, entry by entry, refusing what ducc refuses.

    Each entry is checked before any of it is written: names by ``clean_name`` (absolute, ``..``,
    NUL), malformed whiteouts, a ``.cvmfscatalog`` that is not a regular file, writes through a symlink of this layer, hardlinks to the root, a
    directory, a symlink or through a symlink. Entries come out as ``.layers`` holds them today
    (``ducc.unpack.apply``): whiteout markers as empty 0444 files, modes readable by everyone,
    devices and FIFOs skipped, and a hardlink to a file of a lower layer (``lowers``, base first,
    e.g. their published ``layerfs``) written as a copy of that file. Content is streamed, never
    buffered whole. Raises UnsafeLayer mid-stream; the caller must then poison the stream.
    """
    report = StreamReport()
    check = _LayerCheck(lowers)
    try:
        layer = tarfile.open(fileobj=source, mode="r|", bufsize=_BUFFER)  # type: ignore[call-overload]
    except tarfile.ReadError as exc:
        raise UnsupportedLayer(f"layer is not a tar archive: {exc}") from exc
    tar = _open(out)
    try:
        for member in layer:
            rel = clean_name(member.name)
            if rel:
                check.parent(rel)
            if rel.rpartition("/")[2] == CATALOG and not member.isreg():
                raise UnsafeLayer(f"layer entry {rel!r} is not a regular file: cvmfs_server ingest cannot take it")
            if rel and whiteout_of(rel) is not None:
                info = _copy_info(member, rel)
                info.type, info.size, info.mode, info.linkname = tarfile.REGTYPE, 0, 0o444, ""
                tar.addfile(info)
                check.put(rel, _FILE)
            elif member.isdir():
                info = _copy_info(member, rel or ".")
                info.mode = readable_mode(member.mode, True)
                if rel:
                    tar.addfile(info)
                    check.put(rel, _DIR)
            elif not rel:
                raise UnsafeLayer(f"layer entry {member.name!r} would replace the root directory")
            elif member.isreg():
                info = _copy_info(member, rel)
                info.mode = readable_mode(member.mode, False)
                tar.addfile(info, layer.extractfile(member))
                check.put(rel, _FILE)
                report.bytes += member.size
            elif member.issym():
                info = _copy_info(member, rel)
                tar.addfile(info)
                check.put(rel, _LINK)
            elif member.islnk():
                target, lower = check.hardlink(rel, member.linkname)
                if target == rel:
                    continue
                info = _copy_info(member, rel)
                if lower is None:
                    info.linkname = target
                    tar.addfile(info)
                    report.hardlinks += 1
                else:
                    st = lower.stat()
                    info.type, info.size, info.linkname = tarfile.REGTYPE, st.st_size, ""
                    info.mode = stat.S_IMODE(st.st_mode)
                    with open(lower, "rb") as copied:
                        tar.addfile(info, copied)
                    report.bytes += st.st_size
                check.put(rel, _FILE)
            else:
                log.debug("skipping %s: devices and FIFOs cannot be published", rel)
                report.skipped.append(rel)
                continue
            report.entries += 1
        _finish(tar, before_end)
    except tarfile.TarError as exc:
        _abandon(tar)
        raise UnsupportedLayer(f"layer tar is corrupt: {exc}") from exc
    except BaseException:
        _abandon(tar)
        raise
    finally:
        layer.close()
    return report


def _copy_info(member: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = member.type
    info.mode = stat.S_IMODE(member.mode)
    info.uid, info.gid = member.uid, member.gid
    info.mtime = int(member.mtime)
    info.size = member.size if member.isreg() else 0
    info.linkname = member.linkname
    return info
