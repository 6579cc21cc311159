"""One layer's tar stream → one directory (``layerfs``), as the layer itself, whiteouts kept as markers.

The loop reads each entry once, in order, and calls one function per entry
type. Confinement is part of the loop: every entry is checked against what
this layer has already created, so nothing is ever written through a symlink
and nothing lands outside ``dest``. Hardlinks whose target comes from a lower
layer are returned as ``pending`` for the caller to resolve once the lower
layers exist (``resolve_lower_links``).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ducc.errors import UnsafeLayer, UnsupportedLayer, storage_error
from ducc.tree import Cursor, remove_at, remove_tree
from ducc.unpack.limits import Budget
from ducc.unpack.policy import OPAQUE, WHITEOUT_PREFIX, clean_name, readable_mode, shown_name, whiteout_of
from ducc.verify import Readable

log = logging.getLogger(__name__)

_DIR, _FILE, _LINK = "d", "f", "l"
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Paths of real images are short; only a path this long is reached through its directory's descriptor.
_SHORT_PATH = 3800
_COPY_BUFFER = 1 << 20


@dataclass
class LayerReport:
    """What applying one layer did."""

    entries: int = 0
    bytes_written: int = 0
    skipped: list[str] = field(default_factory=list)
    pending: list[tuple[str, str]] = field(default_factory=list)  # (name, lower-layer target)


class _Unpacker:
    def __init__(self, dest: Path, budget: Budget | None = None) -> None:
        self.dest = dest
        self.budget = budget
        self.root = str(dest)
        self.kinds: dict[str, str] = {"": _DIR}
        self.dir_meta: dict[str, tuple[int, float]] = {}
        self.report = LayerReport()
        self._parent: tuple[str, int] | None = None  # (rel, descriptor) of the last long path's directory

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def at(self, rel: str) -> tuple[str, int | None]:
        """``(name, dir_fd)`` for the os calls on ``rel``: its full path while that is short (as every real
        image's is), else its last component and a descriptor of its directory, reached one component at
        a time (never through a symlink), so a path beyond PATH_MAX can be written too."""
        full = self.path(rel)
        if len(full) < _SHORT_PATH:
            return full, None
        parent, _, name = rel.rpartition("/")
        if self._parent is None or self._parent[0] != parent:
            self.forget_parent()
            self._parent = (parent, self._open_dir(parent))
        return name, self._parent[1]

    def _open_dir(self, rel: str) -> int:
        """A descriptor of this layer's directory ``rel``: its longest short ancestor by path, the rest by
        ``openat``."""
        parts = rel.split("/")
        split = len(parts)
        while split and len(self.path("/".join(parts[:split]))) >= _SHORT_PATH:
            split -= 1
        cursor = Cursor.at(self.path("/".join(parts[:split])))
        try:
            for part in parts[split:]:
                cursor.down(part)
        except BaseException:
            cursor.close()
            raise
        return cursor.fd

    def forget_parent(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    # -- confinement --------------------------------------------------------------------

    def ensure_parent(self, rel: str) -> None:
        """Make every ancestor of ``rel`` a real directory of this layer; never pass a symlink."""
        parent = rel.rpartition("/")[0]
        if self.kinds.get(parent) == _DIR:
            return
        built = ""
        for part in parent.split("/"):
            built = f"{built}/{part}" if built else part
            kind = self.kinds.get(built)
            if kind == _DIR:
                continue
            if kind == _LINK:
                raise UnsafeLayer(f"layer entry {rel!r} would be written through the symlink {built!r}")
            if kind == _FILE:
                self.remove(built)
            path, fd = self.at(built)
            os.mkdir(path, 0o700, dir_fd=fd)
            self.kinds[built] = _DIR

    def remove(self, rel: str) -> None:
        kind = self.kinds.pop(rel, None)
        if kind is None:
            return
        path, fd = self.at(rel)
        if kind == _DIR:
            self.forget_parent()  # it may be the removed directory or below it
            if fd is None:
                remove_tree(Path(path))
            else:
                remove_at(fd, path)
                self.forget_parent()
            prefix = rel + "/"
            for name in [n for n in self.kinds if n.startswith(prefix)]:
                del self.kinds[name]
            for name in [n for n in self.dir_meta if n == rel or n.startswith(prefix)]:
                del self.dir_meta[name]
        else:
            os.unlink(path, dir_fd=fd)

    def replace(self, rel: str, keep_dir: bool = False) -> bool:
        """Clear the way for ``rel``; True if an existing directory was kept."""
        kind = self.kinds.get(rel)
        if kind == _DIR and keep_dir:
            return True
        if kind is not None:
            self.remove(rel)
        return False

    # -- one function per entry type ----------------------------------------------------

    def directory(self, rel: str, member: tarfile.TarInfo) -> None:
        if rel and not self.replace(rel, keep_dir=True):
            path, fd = self.at(rel)
            os.mkdir(path, 0o700, dir_fd=fd)
            self.kinds[rel] = _DIR
        self.dir_meta[rel] = (readable_mode(member.mode, True), float(member.mtime))

    def regular(self, rel: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self.replace(rel)
        path, fd = self.at(rel)
        source = tar.extractfile(member)
        assert source is not None
        with open(os.open(path, _NEW_FILE, 0o600, dir_fd=fd), "wb") as sink:
            shutil.copyfileobj(source, sink, _COPY_BUFFER)
            os.chmod(sink.fileno(), readable_mode(member.mode, False))
            os.utime(sink.fileno(), (member.mtime, member.mtime))
        self.kinds[rel] = _FILE
        self.report.bytes_written += member.size

    def symlink(self, rel: str, member: tarfile.TarInfo) -> None:
        # Kept verbatim, absolute targets included: they resolve inside the container.
        self.replace(rel)
        path, fd = self.at(rel)
        os.symlink(member.linkname, path, dir_fd=fd)
        os.utime(path, (member.mtime, member.mtime), dir_fd=fd, follow_symlinks=False)
        self.kinds[rel] = _LINK

    def hardlink(self, rel: str, member: tarfile.TarInfo) -> None:
        target = clean_name(member.linkname)
        if not target:
            raise UnsafeLayer(f"hardlink {rel!r} points at the root directory")
        if self.budget is not None:
            self.budget.check_path(target)
        kind = self.kinds.get(target)
        if kind == _DIR:
            raise UnsafeLayer(f"hardlink {rel!r} points at the directory {target!r}")
        if kind is None:
            # Not from this layer: a lower one. Its path must not cross a symlink of this layer.
            built = ""
            for part in target.split("/")[:-1]:
                built = f"{built}/{part}" if built else part
                if self.kinds.get(built) == _LINK:
                    raise UnsafeLayer(f"hardlink {rel!r} points through the symlink {built!r}")
            self.report.pending.append((rel, target))
            return
        if target == rel:
            return
        self.replace(rel)
        if len(self.path(target)) < _SHORT_PATH and len(self.path(rel)) < _SHORT_PATH:
            os.link(self.path(target), self.path(rel), follow_symlinks=False)
        else:
            source, source_fd = self.at(target)
            source_fd = os.dup(source_fd) if source_fd is not None else None
            try:
                path, fd = self.at(rel)
                os.link(source, path, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)
            finally:
                if source_fd is not None:
                    os.close(source_fd)
        self.kinds[rel] = kind

    def whiteout_marker(self, rel: str) -> None:
        self.replace(rel)
        path, fd = self.at(rel)
        marker = os.open(path, _NEW_FILE, 0o444, dir_fd=fd)
        try:
            os.chmod(marker, 0o444)
        finally:
            os.close(marker)
        self.kinds[rel] = _FILE

    # -- the loop -----------------------------------------------------------------------

    def run(self, stream: Readable) -> LayerReport:
        try:
            return self._run(stream)
        finally:
            self.forget_parent()

    def _run(self, stream: Readable) -> LayerReport:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|", bufsize=_COPY_BUFFER)  # type: ignore[call-overload]
        except tarfile.ReadError as exc:
            raise UnsupportedLayer(f"layer is not a tar archive: {exc}") from exc
        try:
            for member in tar:
                try:
                    self.entry(member, tar)
                except OSError as exc:  # raised at once: the rest of the blob is not worth downloading
                    typed = storage_error(exc, f"cannot write entry {shown_name(member.name)}")
                    if typed is None:
                        raise
                    raise typed from exc
        except tarfile.TarError as exc:
            raise UnsupportedLayer(f"layer tar is corrupt: {exc}") from exc
        finally:
            tar.close()
        try:
            self.finish()
        except OSError as exc:
            raise (storage_error(exc, "cannot set directory modes") or exc) from exc
        return self.report

    def entry(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        rel = clean_name(member.name)
        self.report.entries += 1
        if self.budget is not None:  # before anything of the entry is written
            self.budget.charge(rel, self.report.entries, member.size if member.isreg() else 0)
        if rel:
            self.ensure_parent(rel)
        if rel and whiteout_of(rel) is not None:
            self.whiteout_marker(rel)
        elif member.isdir():
            self.directory(rel, member)
        elif not rel:
            raise UnsafeLayer(f"layer entry {member.name!r} would replace the root directory")
        elif member.isreg():
            self.regular(rel, member, tar)
        elif member.issym():
            self.symlink(rel, member)
        elif member.islnk():
            self.hardlink(rel, member)
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = "FIFO" if member.isfifo() else "device node"
            log.debug("skipping %s %s: it cannot be published by an unprivileged writer", kind, rel)
            self.report.skipped.append(rel)
        else:
            log.debug("skipping %s: unsupported tar entry type %r", rel, member.type)
            self.report.skipped.append(rel)

    def finish(self) -> None:
        """Directory modes and times last, deepest first, so read-only directories could be filled."""
        for rel in sorted(self.dir_meta, key=lambda r: r.count("/") + (1 if r else 0), reverse=True):
            mode, mtime = self.dir_meta[rel]
            path, fd = self.at(rel)
            os.chmod(path, mode, dir_fd=fd)
            os.utime(path, (mtime, mtime), dir_fd=fd)
        for rel, kind in self.kinds.items():
            if kind == _DIR and rel not in self.dir_meta:
                path, fd = self.at(rel)
                os.chmod(path, 0o755, dir_fd=fd)
        if "" not in self.dir_meta:
            os.chmod(self.root, 0o755)


def unpack_layer(stream: Readable, dest: Path, budget: Budget | None = None) -> LayerReport:
    """Write the layer tar read from ``stream`` into the empty directory ``dest``.

    Raises UnsafeLayer for an entry that would leave ``dest`` or pass a symlink,
    UnsupportedLayer for something that is not a tar, LocalStorageError (StorageFull,
    temporary, for a full disk or quota) as soon as a write fails, LimitExceeded as soon as
    an entry would take the image over ``budget``. On error ``dest`` holds debris that the
    caller discards (it is always a staging directory).
    """
    return _Unpacker(dest, budget).run(stream)


def lookup_lower(layers: Sequence[Path], rel: str) -> Path | None:
    """The file ``rel`` names in the merged view of ``layers`` (base first), honouring whiteouts.

    Returns None if it is absent, deleted, a directory, or reached only through a symlink.
    """
    parts = rel.split("/")
    for layer in reversed(layers):
        directory = layer
        for index, part in enumerate(parts):
            if (directory / (WHITEOUT_PREFIX + part)).exists():
                return None  # deleted here: lower layers are hidden
            candidate = directory / part
            try:
                st = candidate.lstat()
            except FileNotFoundError:
                if (directory / OPAQUE).exists():
                    return None  # opaque here: lower children are hidden
                break  # not in this layer: look lower
            if index + 1 == len(parts):
                return None if stat.S_ISDIR(st.st_mode) else candidate
            if not stat.S_ISDIR(st.st_mode):
                return None  # a file or a symlink shadows the rest of the path
            directory = candidate
    return None


def resolve_lower_links(dest: Path, pending: Sequence[tuple[str, str]], lowers: Sequence[Path]) -> None:
    """Create this layer's hardlinks to files of lower layers (``lowers`` base first)."""
    for rel, target in pending:
        try:
            _link_lower(dest, rel, target, lowers)
        except OSError as exc:
            raise (storage_error(exc, f"cannot link {shown_name(rel)} to a lower layer's file") or exc) from exc


def _link_lower(dest: Path, rel: str, target: str, lowers: Sequence[Path]) -> None:
    """One hardlink of ``resolve_lower_links`` (full paths: under the path budget they are short)."""
    source = lookup_lower(lowers, target)
    if source is None:
        raise UnsafeLayer(f"hardlink {rel!r} points at {target!r}, which no lower layer provides")
    full = dest / rel
    if full.exists() or full.is_symlink():
        full.unlink()
    parent = full.parent
    restore = None
    if not os.access(parent, os.W_OK):
        restore = parent.stat().st_mode
        os.chmod(parent, restore | 0o200)
    try:
        os.link(source, full, follow_symlinks=False)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: lower layer on another filesystem
            raise
        shutil.copy2(source, full, follow_symlinks=False)
    finally:
        if restore is not None:
            os.chmod(parent, restore)
