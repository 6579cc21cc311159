"""The read-only tree reader: ducc's layout (``ducc.layout``) under one mounted root, for every backend.

``MountedTree`` is the one place that reads a repository's published trees, records and links; the
directory and CVMFS backends compose it (``ducc.publish.directory``, ``ducc.publish.cvmfs_view``,
``ducc.publish.cvmfs``) and add only what differs: where the root is, the repository's name and
revision. Two options cover what CVMFS changes in the reads themselves (docs/publishing.md, "the
publisher contract"):

- ``settle_on``: ``cvmfs_server`` remounts the repository while it publishes; for a moment the mount
  point is the bare directory under it. A read of several files (a record) that straddles a remount
  could mix two states, so such reads are repeated until the device of ``settle_on`` stayed the same;
- ``variants``: a tag published for several platforms has a variant link at its public path, which
  only a CVMFS client expands; ``published`` reports it with the default platform's flat root.

Nothing here creates, locks or aborts anything: a read is only a read. ``ReadThrough`` forwards the
reads of ``ducc.publish.RepositoryView`` to whichever tree a class names per call (a CVMFS publisher
reads its own open transaction, everyone else the published state).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TypeVar

from ducc import layout
from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish.links import PresentLinks
from ducc.record import FILES, Record
from ducc.tree import TreeSize, measure

log = logging.getLogger(__name__)

T = TypeVar("T")

_SETTLE_ATTEMPTS = 20


class MountedTree:
    """ducc's layout under ``root``, read only; a missing root is an empty repository."""

    def __init__(self, root: Path, *, settle_on: Path | None = None, variants: bool = False) -> None:
        self.root = root
        self._settle_on = settle_on
        self._variants = variants

    @property
    def location(self) -> Path:
        return self.root

    def exists(self) -> bool:
        return self.root.is_dir()

    def has_layer(self, digest: Digest) -> bool:
        return (self.root / layout.layerfs(digest)).is_dir()

    def layer_source(self, digest: Digest) -> Path:
        return self.root / layout.layerfs(digest)

    def has_flat(self, config_digest: Digest) -> bool:
        return (self.root / layout.flat_dir(config_digest)).is_dir()

    def flat_path(self, config_digest: Digest) -> Path:
        return self.root / layout.flat_dir(config_digest)

    def public_path(self, ref: Reference, platform: Platform) -> Path:
        return self.root / layout.tag_link(ref, platform)

    def read_record(self, ref: Reference, platform: Platform) -> Record | None:
        return self._settled(lambda: self._read_record(self.root / layout.metadata_dir(ref, platform)))

    def is_published(self, ref: Reference, platform: Platform) -> bool:
        return self.public_path(ref, platform).is_symlink() or self.read_record(ref, platform) is not None

    def read_record_at(self, link: str) -> Record | None:
        return self._settled(lambda: self._read_record(self.root / layout.metadata_for_link(PurePosixPath(link))))

    def _read_record(self, directory: Path) -> Record | None:
        files: dict[str, bytes] = {}
        # manifest.json first: it is written last, so once it is there the other files are too.
        for name in reversed(FILES):
            try:
                files[name] = (directory / name).read_bytes()
            except FileNotFoundError:
                if name == layout.RECORD_MANIFEST:
                    return None
        try:
            return Record.parse(files)
        except ValueError as exc:
            log.warning("ignoring unreadable record %s: %s", directory, exc)
            return None

    def read_flat_file(self, config_digest: Digest, relative: str) -> bytes | None:
        try:
            return (self.flat_path(config_digest) / relative).read_bytes()
        except OSError:
            return None

    def layers(self) -> Iterator[Digest]:
        return self._trees(layout.LAYERS)

    def flats(self) -> Iterator[Digest]:
        return self._trees(layout.FLAT)

    def _trees(self, top: PurePosixPath) -> Iterator[Digest]:
        """Every ``<top>/xx/<hex>`` directory (markers and anything else left aside)."""
        base = self.root / top
        try:
            shards = sorted(os.listdir(base))
        except (FileNotFoundError, NotADirectoryError):
            return
        for shard in shards:
            try:
                names = sorted(os.listdir(base / shard))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                digest = layout.tree_digest(top / shard / name, top)
                if digest is not None and (base / shard / name).is_dir():
                    yield digest

    def layer_size(self, digest: Digest) -> TreeSize:
        return measure(self.root / layout.layer_dir(digest))

    def flat_size(self, config_digest: Digest) -> TreeSize:
        return measure(self.root / layout.flat_dir(config_digest))

    def published(self) -> Iterator[tuple[str, Path]]:
        """Symlinks under the registries' directories, and under ``.multiarch/<platform>/`` the same
        (an alias of a platform, itself a link to the platform's directory, is not walked twice)."""
        if not self.root.is_dir():
            return
        tops = [(self.root, entry) for entry in sorted(os.listdir(self.root)) if layout.is_public(entry)]
        multiarch = self.root / layout.MULTIARCH
        if multiarch.is_dir():
            for platform in sorted(os.listdir(multiarch)):
                base = multiarch / platform
                if base.is_dir() and not base.is_symlink():
                    tops += [(base, e) for e in sorted(os.listdir(base)) if layout.is_public(e)]
        for base, entry in tops:
            yield from self._links(base / entry)

    def _links(self, top: Path) -> Iterator[tuple[str, Path]]:
        if top.is_symlink():
            yield os.path.relpath(top, self.root), self._leads_to(top)
            return
        for dirpath, dirnames, filenames in os.walk(top):
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                if path.is_symlink():
                    yield os.path.relpath(path, self.root), self._leads_to(path)
            dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]

    def _leads_to(self, link: Path) -> Path:
        """Where a public link leads (its flat root, if it is not dangling). A variant link is read as a
        client without ``CVMFS_ARCH`` reads it: it leads to the default platform's flat root."""
        if self._variants:
            target = os.readlink(link)
            if layout.is_variant(target):
                return (link.parent / layout.expand_variant(target)).resolve()
        return link.resolve()

    # -- what the multi-arch planning (``ducc.publish.links``) needs to know ----------------------

    def present_links(self, ref: Reference) -> PresentLinks:
        """The links of ``ref``'s tag present now, as the pure planning of ``ducc.publish.links`` takes them."""
        public = layout.tag_link(ref)
        platforms = _platform_dirs(self.root)
        return PresentLinks(
            public_target=_readlink(self.root / public),
            platforms=tuple(platforms),
            linked=frozenset(p for p in platforms if os.path.lexists(self.root / layout.MULTIARCH / p / public)),
        )

    def readlink(self, relative: PurePosixPath) -> str | None:
        """The target of the link at ``relative``; None if there is no link."""
        return _readlink(self.root / relative)

    def _settled(self, read: Callable[[], T]) -> T:
        """``read()``, again until the device of ``settle_on`` did not change while it ran."""
        if self._settle_on is None:
            return read()
        for _ in range(_SETTLE_ATTEMPTS):
            before = _device(self._settle_on)
            result = read()
            if _device(self._settle_on) == before:
                return result
            time.sleep(0.05)
        return result


class ReadThrough:
    """The reads of ``ducc.publish.RepositoryView``, forwarded to ``tree()``: the tree a class reads now.

    A class that composes a ``MountedTree`` inherits only this forwarding: the directory view, the
    CVMFS view and both publishers, so that code holding any of them reads the same way."""

    def tree(self) -> MountedTree:
        raise NotImplementedError

    @property
    def location(self) -> Path:
        return self.tree().location

    def exists(self) -> bool:
        return self.tree().exists()

    def has_layer(self, digest: Digest) -> bool:
        return self.tree().has_layer(digest)

    def has_flat(self, config_digest: Digest) -> bool:
        return self.tree().has_flat(config_digest)

    def layer_source(self, digest: Digest) -> Path:
        return self.tree().layer_source(digest)

    def flat_path(self, config_digest: Digest) -> Path:
        return self.tree().flat_path(config_digest)

    def public_path(self, ref: Reference, platform: Platform) -> Path:
        return self.tree().public_path(ref, platform)

    def read_record(self, ref: Reference, platform: Platform) -> Record | None:
        return self.tree().read_record(ref, platform)

    def is_published(self, ref: Reference, platform: Platform) -> bool:
        return self.tree().is_published(ref, platform)

    def read_flat_file(self, config_digest: Digest, relative: str) -> bytes | None:
        return self.tree().read_flat_file(config_digest, relative)

    def published(self) -> Iterator[tuple[str, Path]]:
        return self.tree().published()

    def read_record_at(self, link: str) -> Record | None:
        return self.tree().read_record_at(link)

    def layers(self) -> Iterator[Digest]:
        return self.tree().layers()

    def flats(self) -> Iterator[Digest]:
        return self.tree().flats()

    def layer_size(self, digest: Digest) -> TreeSize:
        return self.tree().layer_size(digest)

    def flat_size(self, config_digest: Digest) -> TreeSize:
        return self.tree().flat_size(config_digest)


def _platform_dirs(root: Path) -> list[str]:
    """The platforms with a directory under ``.multiarch`` (aliases, which are links, left out)."""
    try:
        with os.scandir(root / layout.MULTIARCH) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _device(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None
