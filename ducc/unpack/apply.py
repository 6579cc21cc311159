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
from ducc.tree import remove_tree
from ducc.unpack.limits import Budget
from ducc.unpack.policy import OPAQUE, WHITEOUT_PREFIX, clean_name, readable_mode, whiteout_of
from ducc.verify import Readable

log = logging.getLogger(__name__)

_DIR, _FILE, _LINK = "d", "f", "l"
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

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

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
            os.mkdir(self.path(built), 0o700)
            self.kinds[built] = _DIR

    def remove(self, rel: str) -> None:
        kind = self.kinds.pop(rel, None)
        if kind is None:
            return
        full = self.path(rel)
        if kind == _DIR:
            remove_tree(Path(full))
            prefix = rel + "/"
            for name in [n for n in self.kinds if n.startswith(prefix)]:
                del self.kinds[name]
            for name in [n for n in self.dir_meta if n == rel or n.startswith(prefix)]:
                del self.dir_meta[name]
        else:
            os.unlink(full)

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
            os.mkdir(self.path(rel), 0o700)
            self.kinds[rel] = _DIR
        self.dir_meta[rel] = (readable_mode(member.mode, True), float(member.mtime))

    def regular(self, rel: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self.replace(rel)
        full = self.path(rel)
        source = tar.extractfile(member)
        assert source is not None
        with open(full, "wb") as sink:
            shutil.copyfileobj(source, sink, _COPY_BUFFER)
        os.chmod(full, readable_mode(member.mode, False))
        os.utime(full, (member.mtime, member.mtime))
        self.kinds[rel] = _FILE
        self.report.bytes_written += member.size

    def symlink(self, rel: str, member: tarfile.TarInfo) -> None:
        # Kept verbatim, absolute targets included: they resolve inside the container.
        self.replace(rel)
        full = self.path(rel)
        os.symlink(member.linkname, full)
        os.utime(full, (member.mtime, member.mtime), follow_symlinks=False)
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
        os.link(self.path(target), self.path(rel), follow_symlinks=False)
        self.kinds[rel] = kind

    def whiteout_marker(self, rel: str) -> None:
        self.replace(rel)
        with open(self.path(rel), "wb"):
            pass
        os.chmod(self.path(rel), 0o444)
        self.kinds[rel] = _FILE

    # -- the loop -----------------------------------------------------------------------

    def run(self, stream: Readable) -> LayerReport:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|", bufsize=_COPY_BUFFER)  # type: ignore[call-overload]
        except tarfile.ReadError as exc:
            raise UnsupportedLayer(f"layer is not a tar archive: {exc}") from exc
        try:
            for member in tar:
                try:
                    self.entry(member, tar)
                except OSError as exc:  # raised at once: the rest of the blob is not worth downloading
                    typed = storage_error(exc, f"cannot write entry {member.name!r}")
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
            full = self.path(rel)
            os.chmod(full, mode)
            os.utime(full, (mtime, mtime))
        for rel, kind in self.kinds.items():
            if kind == _DIR and rel not in self.dir_meta:
                os.chmod(self.path(rel), 0o755)
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
