"""A flat root written into an open CVMFS transaction, its files grafted onto content the repository holds.

Every file of a flat root comes from one of its image's layers, and by the time the flat root is
published those layers are in the repository: their content is compressed, hashed and stored once.
Streaming the flat root into ``ingest`` would make ``cvmfs_server`` compress and hash all of it
again only to find the same objects. Instead ducc writes the flat root into a transaction with each
such file as a *graft*: an empty file with the right mode and mtime, and beside it
``.cvmfsgraft-<name>`` holding the size, the content hash, the chunk list and the compression of
the layer's published copy (read from the repository's own mount through CVMFS's ``user.chunk_list``
and ``user.compression`` attributes). ``publish`` then enters the graft's hash in the catalog without
reading any data and never publishes the marker itself. Directories, symlinks, files of at most
``GRAFT_MIN`` bytes and files no layer holds (the ``.singularity.d`` ducc adds) are written as
they are.

Which layer a file comes from is decided per path, exactly: the topmost layer (the last one) that
has an entry at that path, reached through real directories only (never through a symlink of the
layer), must hold the very file of the staged flat root — the same inode (the flat root hardlinks
the layers it can) or, for a copy, the same size and nanosecond mtime (a copy keeps them; a file ducc
adds later is new). Anything else is written with its data, which is always correct and only slower.

``plan`` only reads (the staged tree, the staged layers, the published layers' attributes); ``write``
applies a plan under a directory of the open transaction. Nothing of either ever recurses: trees come
from images.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ducc.errors import UnsafeLayer
from ducc.layout import CATALOG

log = logging.getLogger(__name__)

GRAFT_PREFIX = ".cvmfsgraft-"
_COMPRESSIONS = frozenset({"zlib", "none"})  # what a graft marker's compression= line takes
_COPY_BUFFER = 1 << 20
_READERS = 8  # attributes read at once from the CVMFS client
# Up to one page a file is cheaper written than grafted: one file created instead of two (the marker),
# and publish compresses a few KiB. Most files of a distribution are that small.
GRAFT_MIN = 4096


@dataclass(frozen=True)
class LayerCopy:
    """One layer of the image: where its tree can be read (``source``: the staged copy that was
    ingested, or the published one) and where it is published under the repository's mount."""

    source: Path
    published: Path


@dataclass(frozen=True)
class Content:
    """What the repository stores for one published file: enough for a graft marker."""

    size: int
    chunks: tuple[tuple[str, int], ...]  # (hash, offset), offsets ascending from 0
    compression: str

    def marker(self) -> bytes:
        """The ``.cvmfsgraft-<name>`` text: one object, or the chunks with a null whole-file hash
        (as ``publish`` itself leaves it for a chunked file)."""
        lines = [f"size={self.size}"]
        if len(self.chunks) == 1:
            lines.append(f"checksum={self.chunks[0][0]}")
        else:
            hex_part, dash, suffix = self.chunks[0][0].partition("-")
            lines.append(f"checksum={'0' * len(hex_part)}{dash}{suffix}")
            lines.append("chunk_offsets=" + ",".join(str(offset) for _, offset in self.chunks))
            lines.append("chunk_checksums=" + ",".join(digest for digest, _ in self.chunks))
        lines.append(f"compression={self.compression}")
        return ("\n".join(lines) + "\n").encode()


def published_content(path: Path) -> Content | None:
    """The content the repository stores for the published regular file ``path`` (under a CVMFS
    mount), or None where the mount does not say (not CVMFS, an external file, anything unexpected)."""
    try:
        listing = os.getxattr(path, "user.chunk_list", follow_symlinks=False).decode()
        compression = os.getxattr(path, "user.compression", follow_symlinks=False).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if compression not in _COMPRESSIONS:
        return None
    rows = [line.split(",") for line in listing.splitlines()[1:] if line]
    chunks: list[tuple[str, int]] = []
    end = 0
    for row in rows:
        if len(row) != 3 or not row[1].isdigit() or not row[2].isdigit() or int(row[1]) != end:
            return None
        digest, offset, size = row[0], int(row[1]), int(row[2])
        hex_part = digest.partition("-")[0]
        if not hex_part or any(c not in "0123456789abcdef" for c in hex_part):
            return None
        chunks.append((digest, offset))
        end = offset + size
    if not chunks:
        return None
    return Content(end, tuple(chunks), compression)


# -- the plan -----------------------------------------------------------------------------------

DIR, SYMLINK, GRAFT, COPY = "dir", "symlink", "graft", "copy"


@dataclass(frozen=True)
class Entry:
    """One entry of the flat root, in writing order (a directory before what it holds)."""

    kind: str
    rel: str
    mode: int
    mtime_ns: int
    target: str = ""  # a symlink's target
    content: Content | None = None  # a graft's content
    source: str = ""  # a copied file's staged path


@dataclass
class Plan:
    entries: list[Entry] = field(default_factory=list)
    grafted_bytes: int = 0
    copied_bytes: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def grafts(self) -> int:
        return sum(e.kind == GRAFT for e in self.entries)


class _Layers:
    """Which layer holds a path, reached through real directories only (cached per directory)."""

    def __init__(self, layers: Sequence[LayerCopy]) -> None:
        self.layers = list(layers)
        self._real: list[dict[str, bool]] = [{"": True} for _ in self.layers]

    def _real_dir(self, index: int, rel_dir: str) -> bool:
        known = self._real[index]
        parts = rel_dir.split("/") if rel_dir else []
        depth = len(parts)
        while depth > 0 and "/".join(parts[:depth]) not in known:
            depth -= 1
        answer = known["/".join(parts[:depth])]
        root = self.layers[index].source
        while answer and depth < len(parts):
            depth += 1
            prefix = "/".join(parts[:depth])
            try:
                answer = stat.S_ISDIR(os.lstat(root / prefix).st_mode)
            except OSError:
                answer = False
            known[prefix] = answer
        while depth < len(parts):  # below a missing or non-directory entry nothing is real
            depth += 1
            known["/".join(parts[:depth])] = False
        return answer

    def origin(self, rel: str, st: os.stat_result) -> LayerCopy | None:
        """The layer whose file at ``rel`` the staged flat file (``st``) is, if any."""
        rel_dir = rel.rpartition("/")[0]
        for index in range(len(self.layers) - 1, -1, -1):
            if not self._real_dir(index, rel_dir):
                continue
            try:
                found = os.lstat(self.layers[index].source / rel)
            except OSError:
                continue
            # The topmost layer with an entry here is the only candidate: it shadows every lower one.
            same = (found.st_dev, found.st_ino) == (st.st_dev, st.st_ino) or (
                found.st_size == st.st_size and found.st_mtime_ns == st.st_mtime_ns)
            return self.layers[index] if stat.S_ISREG(found.st_mode) and same else None
        return None


def plan(flat: Path, layers: Sequence[LayerCopy]) -> Plan | None:
    """How to write the staged flat root ``flat`` (built from ``layers``, base first) with grafts.

    None where a graft transaction cannot publish it faithfully: the tree holds a name starting with
    ``.cvmfsgraft-`` (``publish`` would take it for a marker), or no file could be grafted (the mount
    is not CVMFS, or the layers are unknown), where a stream is just as good. A ``.cvmfscatalog`` that
    is not a regular file raises UnsafeLayer, as in the stream.
    """
    found = _Layers(layers)
    result = Plan()
    candidates: list[tuple[int, Path, int]] = []  # (index in entries, the layer's published file, size)
    stack: list[tuple[str, str]] = [(str(flat), "")]
    while stack:
        directory, rel_dir = stack.pop()
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: os.fsencode(e.name))
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.name.startswith(GRAFT_PREFIX):
                log.info("flat root holds %s: published as a stream, not with grafts", rel)
                return None
            st = entry.stat(follow_symlinks=False)
            if entry.name == CATALOG and not stat.S_ISREG(st.st_mode):
                raise UnsafeLayer(f"{rel!r} is not a regular file: cvmfs_server cannot take it")
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                result.entries.append(Entry(DIR, rel, mode, st.st_mtime_ns))
                subdirs.append((entry.path, rel))
            elif stat.S_ISLNK(st.st_mode):
                result.entries.append(Entry(SYMLINK, rel, mode, st.st_mtime_ns, target=os.readlink(entry.path)))
            elif stat.S_ISREG(st.st_mode):
                origin = found.origin(rel, st) if st.st_size > GRAFT_MIN and entry.name != CATALOG else None
                if origin is not None:
                    candidates.append((len(result.entries), origin.published / rel, st.st_size))
                result.entries.append(Entry(COPY, rel, mode, st.st_mtime_ns, source=entry.path))
                result.copied_bytes += st.st_size
            else:
                log.debug("not publishing %s: devices, FIFOs and sockets cannot be published", rel)
                result.skipped.append(rel)
        # Depth first in name order, like the stream: the first subdirectory is taken next.
        stack.extend(reversed(subdirs))
    # Each attribute is a round trip to the CVMFS client: many at once, or the wait dominates.
    with ThreadPoolExecutor(_READERS) as pool:
        contents = list(pool.map(published_content, [published for _, published, _ in candidates]))
    for (index, _, size), content in zip(candidates, contents, strict=True):
        if content is not None and content.size == size:
            copy = result.entries[index]
            result.entries[index] = Entry(GRAFT, copy.rel, copy.mode, copy.mtime_ns, content=content)
            result.grafted_bytes += size
            result.copied_bytes -= size
    if result.grafts == 0:
        return None
    return result


# -- writing it ---------------------------------------------------------------------------------


def write(plan: Plan, top: Path, root_mode: int, root_mtime_ns: int) -> None:
    """Write ``plan`` as the new directory ``top`` (inside an open transaction). Directories get
    their modes and mtimes last, deepest first, so that a read-only one can still be filled."""
    os.mkdir(top, 0o700)
    directories: list[tuple[Path, int, int]] = [(top, root_mode, root_mtime_ns)]
    for entry in plan.entries:  # the directories first, in order: parents before children
        if entry.kind == DIR:
            os.mkdir(top / entry.rel, 0o700)
            directories.append((top / entry.rel, entry.mode, entry.mtime_ns))
    # Then everything else. A directory's own entries are consecutive in a plan: one open per directory.
    current, directory = None, -1
    try:
        for entry in plan.entries:
            if entry.kind == DIR:
                continue
            parent = entry.rel.rpartition("/")[0]
            if parent != current:
                if directory >= 0:
                    os.close(directory)
                    directory = -1
                directory = os.open(top / parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                current = parent
            _write_entry(directory, entry)
    finally:
        if directory >= 0:
            os.close(directory)
    for path, mode, mtime_ns in reversed(directories):
        os.chmod(path, mode)
        os.utime(path, ns=(mtime_ns, mtime_ns))


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def _write_entry(directory: int, entry: Entry) -> None:
    """Create one non-directory entry in the open directory ``directory``: each path lookup and each
    metadata change is a round trip through the union mount, so names are relative to it and the
    mode and mtime are set on the open file."""
    name = entry.rel.rpartition("/")[2]
    if entry.kind == SYMLINK:
        os.symlink(entry.target, name, dir_fd=directory)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=directory, follow_symlinks=False)
        return
    fd = os.open(name, _CREATE, 0o600, dir_fd=directory)
    try:
        if entry.kind == GRAFT:
            assert entry.content is not None
            _write_all(os.open(GRAFT_PREFIX + name, _CREATE, 0o644, dir_fd=directory), entry.content.marker())
        else:
            with os.fdopen(os.open(entry.source, os.O_RDONLY | os.O_NOFOLLOW), "rb", buffering=0) as source:
                while chunk := source.read(_COPY_BUFFER):
                    _write_all(fd, chunk, close=False)
        os.fchmod(fd, entry.mode)  # after the data: setuid/setgid bits survive
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, *, close: bool = True) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        if close:
            os.close(fd)
