"""The writer of podman's additional image store: add an image ducc published, remove names, collect
garbage (docs/podman.md).

``add`` reads only what ducc already published: the image's record (manifest and config) and its
layers' ``layerfs`` directories. Each layer is written once, whichever image brings it first (its id is
the chain of diff ids, ``ducc.publish.podman.metadata``), hard-linking the published files. The two JSON
indexes are then replaced in an order that never shows a reader an image whose layers are missing:
``layers.json`` with the old and new layers, ``images.json``, then ``layers.json`` without the layers no
image uses any more; only after that are dropped trees deleted. A crash leaves at most unreferenced
trees, which ``gc`` removes.

Every change goes through a ``Committer`` and holds its ``exclusive`` lock from reading the indexes to
replacing them, so concurrent conversions do not lose each other's images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ducc import layout
from ducc.model.digest import Digest
from ducc.model.reference import Reference
from ducc.publish.podman.committer import STAGING, Committer
from ducc.publish.podman.diff import build_diff
from ducc.publish.podman.metadata import (
    IMAGES,
    IMAGES_INDEX,
    LAYERS_INDEX,
    LINKS,
    LOCKS,
    OVERLAY,
    Entry,
    Indexes,
    StoreImage,
    StoreLayer,
    big_data_file,
    entry_of,
    image_dir,
    layer_dir,
    link_name,
    link_path,
    link_target,
    lower,
    union,
)
from ducc.record import Record

log = logging.getLogger(__name__)


def _holds(indexes: Indexes, entry: Entry) -> bool:
    known = indexes.images.get(entry.image.id)
    return known is not None and entry.image.names[0] in known.names and entry.image.digest in known.digests


def _identity(path: Path) -> tuple[int, ...]:
    """What changes when ``path`` is replaced or written (inode, size, mtime); empty if it is missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ()
    return st.st_ino, st.st_size, st.st_mtime_ns


def store_name(ref: Reference) -> str:
    """The name podman lists an image under: ``<registry>/<repository>:<tag>`` (or ``@<digest>``)."""
    return f"{ref.registry}/{layout.image_name(ref)}"


@dataclass
class Collected:
    """What ``gc`` removed: image ids, layer ids, and debris (trees no index names)."""

    images: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    debris: list[str] = field(default_factory=list)


class PodmanStore:
    def __init__(self, committer: Committer) -> None:
        self._committer = committer
        self._cached: tuple[tuple[tuple[int, ...], ...], Indexes] | None = None  # for ``holds``

    @property
    def root(self) -> Path:
        return self._committer.root

    def indexes(self) -> Indexes:
        """The store's indexes as they are now (empty for a new store); ValueError if one does not parse."""
        return Indexes.parse(self._read(LAYERS_INDEX), self._read(IMAGES_INDEX))

    def holds(self, name: str, record: Record) -> bool:
        """Whether ``name`` is the image ``record`` describes, with its manifest digest (read without the
        writer lock: a cheap look before ``add``, which looks again under it). The indexes are parsed
        again only when one of their files changed (a sync asks this of every image it checks)."""
        return _holds(self._latest(), entry_of(name, record))

    def _latest(self) -> Indexes:
        key = tuple(_identity(self.root / index) for index in (LAYERS_INDEX, IMAGES_INDEX))
        cached = self._cached
        if cached is None or cached[0] != key:
            cached = self._cached = (key, self.indexes())
        return cached[1]

    def add(self, name: str, record: Record, layerfs: Callable[[Digest], Path]) -> StoreImage:
        """Put the image ``record`` describes into the store under ``name`` (``store_name``), each layer
        read from ``layerfs(digest)`` (the published ``layerfs``: ``RepositoryView.layer_source``). The
        name leaves any image that had it; an image left without names goes, with the layers only it
        used. ValueError for a record the store cannot take (no config: a record written by CVMFS's
        DUCC)."""
        entry = entry_of(name, record)
        with self._committer.exclusive():
            current = self.indexes()
            if _holds(current, entry):
                return current.images[entry.image.id]  # already there: nothing to write
            self._locks()
            ids = [layer.id for layer in entry.layers]
            sources = [layerfs(layer.digest) for layer in entry.layers]
            for index, layer in enumerate(entry.layers):
                self._layer(layer, list(reversed(ids[:index])), sources[index], sources[:index])
            for key, data in entry.files.items():
                self._committer.write(image_dir(entry.image.id) / big_data_file(key), data)
            after = current.with_entry(entry)
            self._commit(current, after)
        log.info("podman store: %s is image %s (%d layers)", name, entry.image.id[:12], len(ids))
        return after.images[entry.image.id]

    def remove(self, names: Collection[str]) -> list[str]:
        """Take ``names`` out of the store; the ids of the images that went with them (no names left)."""
        with self._committer.exclusive():
            current = self.indexes()
            after = current.without(names)
            self._commit(current, after)
        return [i for i in current.images if i not in after.images]

    def gc(self, keep: Collection[str] | Callable[[], Collection[str]]) -> Collected:
        """Keep only the names in ``keep`` (the images still published), drop the images and layers that
        leaves unused, and delete trees no index names (what a crash left). ``keep`` may be a function,
        called under the writer lock: an image added meanwhile (after its record was written) is then
        among what it returns, or waits for the lock and is added after the collection."""
        with self._committer.exclusive():
            current = self.indexes()
            after = current.keeping(keep() if callable(keep) else keep)
            self._commit(current, after)
            debris = self._debris(after)
        return Collected([i for i in current.images if i not in after.images],
                         [i for i in current.layers if i not in after.layers], debris)

    # -- steps --------------------------------------------------------------------------------------

    def _read(self, relative: PurePosixPath) -> bytes | None:
        try:
            return (self.root / relative).read_bytes()
        except FileNotFoundError:
            return None

    def _locks(self) -> None:
        """The empty lock files a read-only store must have (podman opens them, never writes them)."""
        for lock in LOCKS:
            if not (self.root / lock).exists():
                self._committer.write(lock, b"")

    def _layer(self, layer: StoreLayer, parents: Sequence[str], layerfs: Path, lowers: Sequence[Path]) -> None:
        """Write ``overlay/<id>`` (diff, link, lower) and ``overlay/l/<link>`` unless they are there. The
        layers below (``lowers``) are the same whichever image brings the layer: its id says which."""
        if not (self.root / layer_dir(layer.id)).is_dir():
            with self._committer.staging() as area:
                tree = area / "layer"
                tree.mkdir()
                build_diff(layerfs, tree / "diff", lowers)
                (tree / "link").write_text(link_name(layer.id))
                if parents:
                    (tree / "lower").write_text(lower(parents))
                for path in (tree / "link", tree / "lower"):
                    if path.exists():
                        os.chmod(path, 0o644)
                os.chmod(tree, 0o755)
                self._committer.place(tree, layer_dir(layer.id))
        if not os.path.lexists(self.root / link_path(layer.id)):
            with self._committer.staging() as area:
                os.symlink(link_target(layer.id), area / "link")
                self._committer.place(area / "link", link_path(layer.id))

    def _commit(self, before: Indexes, after: Indexes) -> None:
        """Move the indexes from ``before`` to ``after`` (see the module's docstring), then delete what
        they no longer name."""
        middle = union(before, after)
        if middle.layers_json() != before.layers_json():
            self._committer.write(LAYERS_INDEX, middle.layers_json())
        if after.images_json() != before.images_json() or not (self.root / IMAGES_INDEX).exists():
            self._committer.write(IMAGES_INDEX, after.images_json())
        if after.layers_json() != middle.layers_json() or not (self.root / LAYERS_INDEX).exists():
            self._committer.write(LAYERS_INDEX, after.layers_json())
        for image_id in before.images:
            if image_id not in after.images:
                self._committer.remove(image_dir(image_id))
        for layer_id in middle.layers:
            if layer_id not in after.layers:
                self._committer.remove(link_path(layer_id))
                self._committer.remove(layer_dir(layer_id))

    def _debris(self, indexes: Indexes) -> list[str]:
        """Remove what no index names under ``overlay``, ``overlay/l``, ``overlay-images`` and
        ``overlay-layers`` (trees and the temporary files of interrupted writes), and the staging area."""
        links = {link_name(i) for i in indexes.layers}
        index_files = (LAYERS_INDEX, IMAGES_INDEX, *LOCKS)
        wanted = {
            OVERLAY: set(indexes.layers) | {LINKS.name},
            LINKS: links,
            IMAGES: set(indexes.images) | {p.name for p in index_files if p.parent == IMAGES},
            LAYERS_INDEX.parent: {p.name for p in index_files if p.parent == LAYERS_INDEX.parent},
        }
        removed = []
        for directory, names in wanted.items():
            try:
                present = os.listdir(self.root / directory)
            except FileNotFoundError:
                continue
            for name in sorted(present):
                if name not in names:  # dot-names too: the temporary files of an interrupted write
                    self._committer.remove(directory / name)
                    removed.append(str(directory / name))
        self._committer.remove(PurePosixPath(STAGING))
        return removed
