"""The ``cvmfs`` publisher: a CernVM-FS repository, written through ``cvmfs_server`` on its publisher.

The layout is the directory publisher's (``ducc.layout``), under ``/cvmfs/<repo>[/<subdir>]``,
and so are the promises (``ducc.publish``); only how a change becomes visible differs:

- a layer or a flat root is one ``cvmfs_server ingest --catalog -t - -b <base>``: the staged tree
  streamed as a plain tar (``ducc.publish.tarstream.write_tree``: canonical names only, hardlinks
  only within one directory, the end of the archive written last), a new revision once the whole
  stream was read. The base is the shard (``.layers/xx``) once ``.layers`` exists, so that on a
  gateway writers of different shards publish at once; the first ingest into a fresh repository
  uses ``.layers`` itself and also makes it a nested catalog;
- tag links and records (the small changes) are collected while ``transaction()`` is held and
  written at its end in one ``transaction`` … ``publish``, the record last: an image counts as
  converted only once its record is in a published revision. If the body fails, none are written.

Costs, in publishing calls: a new image = its new layers + 1 (flat) + 1 (tag and record); a tag
that moved onto a published flat = 1; an unchanged tag = 0 (the converter stops before writing).

Removal: an unpublished tag (its link and record) is a small change like any other, so a tag and
its record disappear in one revision, the record first. Layers and flat roots that garbage
collection removes are collected too and deleted at the end of the transaction with
``cvmfs_server ingest --delete``, 64 paths per call (one per call on a gateway, which takes no
more): each call is one revision in which whole trees disappear. Reclaiming the object store is
``cvmfs_server gc``, the operator's separate step. The garbage-collection state is a local file
(``gc_state``, under DUCC_STATE_DIR): writing it into the repository would cost a revision per run,
and a publisher's own record can only be later than the truth, which delays deletion, never hastens it.

Any failure of a command aborts the transaction where one is open, and the command's own words are
in the error. One writer per repository: the repository lease (Redis, in the service) and an flock
among this host's writers. A writer that died with a transaction open leaves it to the next, which
aborts it before starting: holding the lease, the open transaction can only be a dead writer's.
On a gateway (``gateway=True``) every publisher node has its own transaction: the lease is then
per node, and a busy sub-path (another node's lease) is retried until ``busy_timeout``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar

from ducc import layout
from ducc.errors import CvmfsError, PublishError
from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish.cvmfs_server import CvmfsServer
from ducc.publish.directory import DirectoryView, remove_tag_files, write_record_files, write_tag_link
from ducc.publish.staging import Staging
from ducc.record import Record

log = logging.getLogger(__name__)

T = TypeVar("T")

_SETTLE_ATTEMPTS = 20
DELETE_BATCH = 64  # paths per ``ingest --delete``: one revision each, command lines well below ARG_MAX


def split_repository(text: str) -> tuple[str, str]:
    """``REPO[/subdir]`` → (repository, subdir); the sub-directory has no ``..``, no leading ``/``."""
    repository, _, subdir = text.strip().strip("/").partition("/")
    parts = [p for p in subdir.split("/") if p not in ("", ".")]
    if not repository or ".." in parts:
        raise PublishError(f"invalid CVMFS repository {text!r}: expected REPO[/subdir]")
    return repository, "/".join(parts)


class CvmfsView(DirectoryView):
    """``/cvmfs/<repo>[/<subdir>]`` read only (``mount`` stands for ``/cvmfs/<repo>``)."""

    def __init__(self, repository: str, *, subdir: str = "", mount: Path | None = None) -> None:
        self.repository = repository
        self.subdir = subdir
        self.mount = mount if mount is not None else Path("/cvmfs") / repository
        super().__init__(self.mount / subdir if subdir else self.mount, repository)

    @property
    def name(self) -> str:
        return self.repository + (f"/{self.subdir}" if self.subdir else "")

    # ``cvmfs_server`` remounts ``/cvmfs/<repo>`` when it opens or publishes a transaction: for a
    # moment the mount point is the bare directory under it. A read of several files that straddles
    # a remount could mix two states (a record's manifest.json without its config.json), so reads
    # of more than one file are repeated until the mount stayed the same throughout.
    def read_record(self, ref: Reference, platform: Platform) -> Record | None:
        return self._settled(lambda: DirectoryView.read_record(self, ref, platform))

    def read_record_at(self, link: str) -> Record | None:
        return self._settled(lambda: DirectoryView.read_record_at(self, link))

    def _settled(self, read: Callable[[], T]) -> T:
        """``read()``, again until the mount (its device) did not change while it ran."""
        for _ in range(_SETTLE_ATTEMPTS):
            before = _device(self.mount)
            result = read()
            if _device(self.mount) == before:
                return result
            time.sleep(0.05)
        return result


class CvmfsTransaction:
    """Layers and flat roots are ingested at once; tags and records wait for ``commit``."""

    def __init__(self, publisher: CvmfsPublisher, held: ExitStack) -> None:
        self.publisher = publisher
        self._held = held  # unwound after ``commit``
        self._small: list[tuple[PurePosixPath, Callable[[Path], None]]] = []
        self._deletes: list[PurePosixPath] = []
        self._frozen = False

    def add_layer(self, digest: Digest, staged: Path) -> None:
        if self.publisher.has_layer(digest):
            return
        self.publisher.ingest_tree(layout.LAYERS, digest, staged)
        log.info("published layer %s in %s", digest.short, self.publisher.name)

    def add_flat(self, config_digest: Digest, staged: Path) -> None:
        if self.publisher.has_flat(config_digest):
            return
        self.publisher.ingest_tree(layout.FLAT, config_digest, staged)
        log.info("published flat root %s in %s", config_digest.short, self.publisher.name)

    def point_tag(self, ref: Reference, platform: Platform, config_digest: Digest) -> None:
        link = self.publisher.root / layout.tag_link(ref, platform)
        if link.is_symlink() and os.readlink(link) == layout.link_target(ref, platform, config_digest):
            return
        self._small.append((layout.tag_link(ref, platform),
                            lambda root: write_tag_link(root, ref, platform, config_digest)))

    def write_record(self, ref: Reference, platform: Platform, record: Record) -> None:
        directory = self.publisher.root / layout.metadata_dir(ref, platform)
        if all(_read(directory / name) == data for name, data in record.files().items()):
            return  # the same record is published: no new revision for nothing
        self._small.append((layout.metadata_dir(ref, platform) / layout.RECORD_MANIFEST,
                            lambda root: write_record_files(root, ref, platform, record)))

    def remove_tag(self, ref: Reference, platform: Platform) -> None:
        root = self.publisher.root
        link, metadata = layout.tag_link(ref, platform), layout.metadata_dir(ref, platform)
        if not (root / link).is_symlink() and not (root / metadata).is_dir():
            return
        # Both paths name the change, so that on a gateway the lease covers the record and the link.
        self._small.append((metadata / layout.RECORD_MANIFEST, lambda root: _remove_tag(root, ref, platform)))
        self._small.append((link, _lease_only))

    def remove_layer(self, digest: Digest) -> None:
        if (self.publisher.root / layout.layer_dir(digest)).exists():
            self._deletes.append(layout.layer_dir(digest))

    def remove_flat(self, config_digest: Digest) -> None:
        if (self.publisher.root / layout.flat_dir(config_digest)).exists():
            self._deletes.append(layout.flat_dir(config_digest))

    def reserved(self) -> frozenset[Digest]:
        if self._frozen:
            return self.publisher._staging.reserved()
        self._frozen = True
        return self._held.enter_context(self.publisher._staging.frozen())

    def write_gc_state(self, data: bytes) -> None:
        self.publisher.write_gc_state(data)

    def commit(self) -> None:
        """Write the small changes in one transaction … publish, in the order they were asked for;
        then delete the removed trees (``ingest --delete``, batched)."""
        if self._small:
            paths = [path for path, _ in self._small]
            self.publisher.small_changes(paths, [change for _, change in self._small])
            self._small.clear()
        if self._deletes:
            self.publisher.delete_trees(self._deletes)
            for path in self._deletes:
                log.info("removed %s from %s", path, self.publisher.name)
            self._deletes.clear()


class CvmfsPublisher(CvmfsView):
    """Publishes into a CVMFS repository through ``server``; trees are staged under ``staging_root``
    (a local directory outside the mount). ``lock(name)`` is the cross-host lease (the service's)."""

    def __init__(
        self,
        server: CvmfsServer,
        *,
        subdir: str = "",
        staging_root: Path,
        lock: Callable[[str], AbstractContextManager[None]] | None = None,
        busy_timeout: float = 600.0,
        host: str | None = None,
        gc_state: Path | None = None,
    ) -> None:
        super().__init__(server.repository, subdir=subdir, mount=server.mount)
        mount = os.path.realpath(self.mount)
        if os.path.realpath(staging_root).startswith(mount + "/"):
            raise PublishError(f"the staging directory {staging_root} must be outside {self.mount}")
        self.server = server
        self.gateway = server.gateway
        self.busy_timeout = busy_timeout
        self._lock = lock
        self._staging = Staging(staging_root)
        self.gc_state = gc_state if gc_state is not None else staging_root.with_name(staging_root.name + ".gc.json")
        self.lease_name = f"cvmfs:{self.repository}" + (f"@{host or socket.gethostname()}" if self.gateway else "")

    def revision(self) -> int | None:
        return self.server.revision()

    def staging(self) -> AbstractContextManager[Path]:
        return self._staging.directory()

    def sweep_staging(self) -> int:
        return self._staging.sweep()

    def reserve(self, stage: Path, digests: Iterable[Digest]) -> None:
        self._staging.reserve(stage, digests)

    def reserved(self) -> frozenset[Digest]:
        return self._staging.reserved()

    def read_gc_state(self) -> bytes | None:
        try:
            return self.gc_state.read_bytes()
        except FileNotFoundError:
            return None

    def write_gc_state(self, data: bytes) -> None:
        self.gc_state.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.gc_state.with_name(f".{self.gc_state.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.gc_state)

    @contextmanager
    def transaction(self) -> Iterator[CvmfsTransaction]:
        with self._lock(self.lease_name) if self._lock else nullcontext(), self._staging.writer(), \
                ExitStack() as held:
            if self.server.abort(missing_ok=True):
                log.warning("aborted the transaction an interrupted writer left open on %s", self.repository)
            txn = CvmfsTransaction(self, held)
            yield txn
            txn.commit()

    # -- the two kinds of write ----------------------------------------------------------------

    def _path(self, relative: PurePosixPath) -> str:
        """``relative`` (to the published root) as a path in the repository; "" for its root."""
        rel = "" if str(relative) == "." else str(relative)
        return "/".join(p for p in (self.subdir, rel) if p)

    def ingest_tree(self, top: PurePosixPath, digest: Digest, staged: Path) -> None:
        """Ingest ``staged`` as ``<top>/xx/<hex>``, a nested catalog (as is its shard) — one revision."""
        shard = staged.parent / f"ingest-{digest.hex}"
        (shard / digest.prefix).mkdir(parents=True)
        for catalog in (shard / digest.prefix / layout.CATALOG, staged / layout.CATALOG):
            catalog.touch(mode=0o644)
        os.rename(staged, shard / digest.prefix / digest.hex)
        if (self.root / top).is_dir():
            base, tree = top / digest.prefix, shard / digest.prefix
        else:  # a fresh repository: this ingest makes the top directory (and its catalog) too
            base, tree = top, shard

        from ducc.publish.tarstream import write_tree  # here: the web app reads through CvmfsView only

        def stream(out: BinaryIO) -> None:
            write_tree(tree, out)

        self._retry_busy(lambda: self.server.ingest(stream, self._path(base), catalog=True))

    def small_changes(self, paths: list[PurePosixPath], changes: list[Callable[[Path], None]]) -> None:
        """Apply ``changes`` (each writes under the repository root) in one transaction … publish.

        On a gateway the lease is the deepest directory holding every changed path."""
        lease = self._path(_common_parent(paths)) if self.gateway else None
        self._retry_busy(lambda: self.server.transaction(lease))
        try:
            for change in changes:
                change(self.root)
            self.server.publish()
        except BaseException as exc:
            try:
                self.server.abort(missing_ok=True)
            except CvmfsError as abort_error:
                log.error("could not abort the failed transaction on %s: %s", self.repository, abort_error)
            if isinstance(exc, OSError):
                raise PublishError(f"cannot write into the transaction on {self.repository}: {exc}") from exc
            raise

    def delete_trees(self, paths: list[PurePosixPath]) -> None:
        """``ingest --delete`` every path (relative to the published root), ``DELETE_BATCH`` per call."""
        full = [self._path(path) for path in paths]
        for start in range(0, len(full), DELETE_BATCH):
            batch = full[start:start + DELETE_BATCH]
            self._retry_busy(lambda batch=batch: self.server.delete(batch, batch=DELETE_BATCH))  # type: ignore[misc]

    def _retry_busy(self, call: Callable[[], T]) -> T:
        """``call``, again while it fails only because a gateway lease is busy (up to ``busy_timeout``)."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.5
        while True:
            try:
                return call()
            except CvmfsError as exc:
                if not exc.temporary or time.monotonic() + delay > deadline:
                    raise
                log.info("%s: lease busy, retrying in %.1f s", self.repository, delay)
                time.sleep(delay)
                delay = min(delay * 2, 15.0)


def _remove_tag(root: Path, ref: Reference, platform: Platform) -> None:
    remove_tag_files(root, ref, platform)


def _lease_only(root: Path) -> None:
    """A path that only widens the lease of a change listed before it."""


def _device(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _common_parent(paths: list[PurePosixPath]) -> PurePosixPath:
    """The deepest directory that holds every path (``.`` for the root)."""
    parts = [p.parent.parts for p in paths]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return PurePosixPath(*common) if common else PurePosixPath(".")
