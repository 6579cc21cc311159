"""The ``cvmfs`` publisher: a CernVM-FS repository, written through ``cvmfs_server`` on its publisher.

The layout is the directory publisher's (``ducc.layout``), under ``/cvmfs/<repo>[/<subdir>]``,
and so are the promises (``ducc.publish``); only how a change becomes visible differs:

- a flat root is written into a ``transaction`` with its files grafted onto the content its layers
  already put into the repository (``ducc.publish.graft``): ``cvmfs_server`` never compresses or
  hashes the image's data a second time. The transaction stays open for the tag links and the
  record (below) and is published once, with all of them. Where grafts cannot apply it is streamed
  like a layer;
- the layers added in one transaction are one ``cvmfs_server ingest -t - -b .layers``: their staged trees
  streamed as a plain tar (``ducc.publish.tarstream.write_tree``: canonical names only, hardlinks
  only within one directory, the end of the archive written last) through the guard of
  ``ducc.publish.ingest_guard`` (a stream ducc did not finish is poisoned, whatever stopped ducc),
  a new revision once the whole stream was read; the shards it adds to keep their other layers. The
  first ingest into a fresh repository also makes ``.layers`` a nested catalog. On a gateway each
  layer is an ingest of its own whose base is its shard (``.layers/xx``) once ``.layers`` exists, so
  that writers of different shards publish at once (a lease's parent must exist). The staged copy
  of a layer stays readable until staging ends, so the flat root is built from it rather than read
  back through ``/cvmfs``;
- tag links and records (the small changes) are collected while ``transaction()`` is held and
  written at its end in one ``transaction`` … ``publish`` (the one a grafted flat root opened, if
  any), the record last: an image counts as converted only once its record is in a published
  revision. If the body fails, none are written and an open ``transaction`` is aborted.
  A tag published for a second platform gets the variant link of ``ducc.layout`` in the same
  transaction (``ducc.publish.links.tag_links``). The transaction then carries the revision, read while still held.

Costs, in publishing calls: a new image = 1 (its new layers) + 1 (flat, tag and record); a tag that
moved onto a published flat = 1; an unchanged tag = 0 (the converter stops before writing). On a
gateway a new image costs its new layers + 1 (flat) + 1 (tag and record).

Removal: an unpublished tag (its link and record) is a small change like any other, so a tag and
its record disappear in one revision, the record first. Layers and flat roots that garbage
collection removes are collected too and deleted at the end of the transaction with
``cvmfs_server ingest --delete``, 64 paths per call (one per call on a gateway, which takes no
more): each call is one revision in which whole trees disappear. Reclaiming the object store is
``cvmfs_server gc``, the operator's separate step. The garbage-collection state is a local file
(``DUCC_STATE_DIR/gc/<repo>[@subdir].json``): writing it into the repository would cost a revision per run,
and a publisher's own record can only be later than the truth, which delays deletion, never hastens it.

Any failure of a command aborts the transaction where one is open, and the command's own words are
in the error. One writer per repository: the repository lease (Redis, in the service) and an flock
among this host's writers. A writer that died with a transaction open leaves it to the next, which
aborts it before starting: holding the lease, the open transaction can only be a dead writer's.
That is one explicit step (``recover``, which ``transaction`` takes too); use cases call ``recover``
where they start. On a gateway (``gateway=True``) every publisher node has its own transaction: the
lease is then per node, and a busy sub-path (another node's lease) is retried until ``busy_timeout``.

Reads never lock and never abort. While a transaction is open ``/cvmfs/<repo>`` is writable and shows
its unpublished changes; the published state stays readable, side-effect free, at
``/var/spool/cvmfs/<repo>/rdonly``, the read-only lower layer of the union mount (the ``cvmfs2``
client of the published revision). So the publisher reads there, and only inside its own
transaction (this thread's) reads the union mount, which holds what the transaction wrote so far.
Where the spool has no such mount (a gateway publisher set up otherwise) it reads the union mount.

Seams (``ducc.publish``): the reads are a ``ducc.publish.reader.MountedTree``; the publisher is the
``Committer``; its ``Staging`` the ``Reservations``; a ``GcStateFile`` the ``GcStateStore``; the links of
several platforms are planned by ``ducc.publish.links`` (``variants=True``). It shares no class with
the directory backend.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar

from ducc import layout
from ducc.errors import CvmfsError, LeaseLost, PublishError
from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish import RepositoryLock, links
from ducc.publish.cvmfs_server import CvmfsServer
from ducc.publish.cvmfs_view import CvmfsView
from ducc.publish.gcstate import GcStateFile
from ducc.publish.reader import MountedTree, ReadThrough
from ducc.publish.staging import Staging
from ducc.publish.writer import remove_tag_files, write_links, write_record_files
from ducc.record import Record

log = logging.getLogger(__name__)

T = TypeVar("T")

DELETE_BATCH = 64  # paths per ``ingest --delete``: one revision each, command lines well below ARG_MAX


class CvmfsTransaction:
    """Layers and flat roots are ingested at once; tags and records wait for ``commit``."""

    def __init__(self, publisher: CvmfsPublisher) -> None:
        self.publisher = publisher
        self.revision: int | None = None  # set by the publisher once the transaction is committed
        self._small: list[tuple[list[PurePosixPath], Callable[[Path], None]]] = []  # (paths it writes, change)
        self._deletes: list[PurePosixPath] = []
        self._batch: Path | None = None  # the staged layers of the next ingest (``_ingest_layers``)
        self._layers: dict[Digest, Path] = {}  # layers in that batch → their staged ``layerfs``
        self.open = False  # whether a ``cvmfs_server transaction`` of this transaction is open

    def add_layer(self, digest: Digest, staged: Path) -> Path:
        if digest in self._layers:
            return self._layers[digest]
        if self.publisher.has_layer(digest):
            return self.publisher.layer_source(digest)
        if self.publisher.gateway:  # one ingest per layer, its shard the lease, so that nodes publish at once
            ingested = self.publisher.ingest_tree(layout.LAYERS, digest, staged)
            log.info("published layer %s in %s", digest.short, self.publisher.name)
            return ingested / layout.LAYERFS
        if self.open:
            raise PublishError("a layer is added before the flat root and the small changes of its transaction")
        if self._batch is None:
            self._batch = staged.parent / f"ingest-{digest.hex}"
            self._batch.mkdir()
        self._layers[digest] = self.publisher.stage_layer(self._batch, digest, staged) / layout.LAYERFS
        return self._layers[digest]

    def _ingest_layers(self) -> None:
        """The layers added so far, in one ``ingest`` (one revision), each one whole or none of them."""
        if self._batch is None:
            return
        self.publisher.ingest_batch(self._batch)
        for digest in self._layers:
            log.info("published layer %s in %s", digest.short, self.publisher.name)
        self._batch = None
        self._layers.clear()

    def write_now(self, paths: list[PurePosixPath], change: Callable[[Path], None]) -> None:
        """Apply ``change`` at once in this transaction's ``cvmfs_server transaction`` (opened here if not
        yet; published by ``commit`` together with the small changes): until then it is visible only to
        this writer, so the converter's reads within the transaction (``has_flat``) see it. On a gateway,
        whose lease is a sub-path, it is a transaction … publish of its own."""
        if self.publisher.gateway:
            self.publisher.small_changes(paths, [change])
            return
        self._ingest_layers()  # a flat root is grafted onto published layers
        if not self.open:
            self.publisher.open_transaction(None)
            self.open = True
        try:
            change(self.publisher.root)
        except OSError as exc:
            raise PublishError(f"cannot write into the transaction on {self.publisher.repository}: {exc}") from exc

    def add_flat(self, config_digest: Digest, staged: Path, layers: Sequence[Digest] = ()) -> None:
        if self.publisher.has_flat(config_digest):
            return
        self._ingest_layers()  # its layers first, whichever way the flat root goes
        if not self.publisher.graft_flat(config_digest, staged, layers):
            self.publisher.ingest_tree(layout.FLAT, config_digest, staged)
        log.info("published flat root %s in %s", config_digest.short, self.publisher.name)

    def point_tag(self, ref: Reference, platform: Platform, config_digest: Digest) -> None:
        tree = self.publisher.tree()
        planned = links.tag_links(tree.present_links(ref), ref, platform, config_digest, variants=True)
        if all(tree.readlink(link) == target for link, target in planned):
            return

        def change(root: Path) -> None:
            # Planned again when written: an earlier change of this transaction may have moved the links.
            present = MountedTree(root).present_links(ref)
            write_links(root, links.tag_links(present, ref, platform, config_digest, variants=True))

        self._small.append(([link for link, _ in planned], change))

    def write_record(self, ref: Reference, platform: Platform, record: Record) -> None:
        directory = self.publisher.root / layout.metadata_dir(ref, platform)
        if all(_read(directory / name) == data for name, data in record.files().items()):
            return  # the same record is published: no new revision for nothing
        self._small.append(([layout.metadata_dir(ref, platform) / layout.RECORD_MANIFEST],
                            lambda root: write_record_files(root, ref, platform, record)))

    def remove_tag(self, ref: Reference, platform: Platform) -> None:
        root = self.publisher.root
        paths = links.tag_removal(self.publisher.tree().present_links(ref), ref, platform)
        if not any(os.path.lexists(root / path) for path in paths):
            return
        # Every path names the change, so that on a gateway the lease covers the record and the links.
        self._small.append((paths, lambda root: _remove_tag(root, ref, platform)))

    def remove_layer(self, digest: Digest) -> None:
        if (self.publisher.root / layout.layer_dir(digest)).exists():
            self._deletes.append(layout.layer_dir(digest))

    def remove_flat(self, config_digest: Digest) -> None:
        if (self.publisher.root / layout.flat_dir(config_digest)).exists():
            self._deletes.append(layout.flat_dir(config_digest))

    def commit(self) -> None:
        """Write the small changes in one transaction … publish, in the order they were asked for;
        then delete the removed trees (``ingest --delete``, batched). Layers still waiting are ingested
        first; a flat root written already (``write_now``) is published together with the small changes."""
        self._ingest_layers()
        if self.open:
            self.open = False
            self.publisher.write_and_publish([change for _, change in self._small])
            self._small.clear()
        elif self._small:
            paths = [path for written, _ in self._small for path in written]
            self.publisher.small_changes(paths, [change for _, change in self._small])
            self._small.clear()
        if self._deletes:
            self.publisher.delete_trees(self._deletes)
            for path in self._deletes:
                log.info("removed %s from %s", path, self.publisher.name)
            self._deletes.clear()


class CvmfsPublisher(ReadThrough):
    """Publishes into a CVMFS repository through ``server``; trees are staged under ``staging_root``
    (a local directory outside the mount). ``lock(name)`` is the cross-host lease (the service's).

    A ``Publisher`` (``ducc.publish``): ``reader`` (itself: the published state at the spool's ``rdonly``
    mount, this thread's open transaction inside it), ``reservations`` (the staging root), ``gc_state``
    (a local file under ``gc_dir``), ``transaction`` and ``recover``."""

    def __init__(
        self,
        server: CvmfsServer,
        *,
        subdir: str = "",
        staging_root: Path,
        lock: RepositoryLock | None = None,
        busy_timeout: float = 600.0,
        host: str | None = None,
        gc_dir: Path | None = None,
    ) -> None:
        self.view = CvmfsView(server.repository, subdir=subdir, mount=server.mount)
        self.repository, self.subdir, self.mount, self.root = server.repository, subdir, self.view.mount, self.view.root
        mount = os.path.realpath(self.mount)
        if os.path.realpath(staging_root).startswith(mount + "/"):
            raise PublishError(f"the staging directory {staging_root} must be outside {self.mount}")
        self.server = server
        self.gateway = server.gateway
        self.busy_timeout = busy_timeout
        self._lock = lock
        self._staging = Staging(staging_root)
        self._holder = threading.local()  # whether this thread holds the repository
        # The published revision, as the server mounts it under its spool directory (read-only, never
        # showing an open transaction): where reads go outside this thread's own transaction.
        rdonly = server.spool / "rdonly"
        self._rdonly = rdonly
        published = Path(os.path.realpath(rdonly))  # resolved, as the targets of its links are
        self._published = MountedTree(published / subdir if subdir else published, settle_on=rdonly, variants=True)
        # The gc state is this host's own record, one per repository and sub-directory.
        gc_name = self.repository + (f"@{self.subdir.replace('/', '@')}" if self.subdir else "")
        self._gc_state = GcStateFile((gc_dir if gc_dir is not None else staging_root.parent / "gc") / f"{gc_name}.json")
        self.lease_name = f"cvmfs:{self.repository}" + (f"@{host or socket.gethostname()}" if self.gateway else "")

    @property
    def name(self) -> str:
        return self.view.name

    def revision(self) -> int | None:
        return self.server.revision()

    @property
    def reader(self) -> CvmfsPublisher:
        return self

    @property
    def reservations(self) -> Staging:
        return self._staging

    @property
    def gc_state(self) -> GcStateFile:
        return self._gc_state

    def tree(self) -> MountedTree:
        """Inside this thread's transaction the union mount (what the transaction wrote so far); else the
        published revision at the spool's ``rdonly`` mount, where the server has one; else the mount."""
        if getattr(self._holder, "active", False) or not os.path.ismount(self._rdonly):
            return self.view.tree()
        return self._published

    def public_path(self, ref: Reference, platform: Platform) -> Path:
        """Where users run the image from: under the mount, whichever tree this thread reads."""
        return self.view.public_path(ref, platform)

    @contextmanager
    def transaction(self) -> Iterator[CvmfsTransaction]:
        with self._held():
            self._clear_dead_writer()
            txn = CvmfsTransaction(self)
            self._holder.transaction = txn
            try:
                yield txn
                txn.commit()
            except BaseException:
                if txn.open:  # what the body wrote into it is dropped, never published
                    txn.open = False
                    self._abort_quietly()
                raise
            finally:
                self._holder.transaction = None
            # Still holding the repository: no other writer's revision can be in between (on a gateway
            # another node may have published a later one, which holds these changes too).
            txn.revision = self.server.revision()

    def recover(self) -> None:
        """Staging debris goes; a transaction left open (the mount is writable) is aborted once this writer
        holds the repository, unless a live writer published it meanwhile. Takes the repository only then."""
        self._staging.sweep()
        if getattr(self._holder, "active", False) or not _writable(self.mount):
            return
        with self._held():
            self._clear_dead_writer()

    def _clear_dead_writer(self) -> None:
        """Holding the repository: an open transaction can only be a dead writer's; ``abort -f`` it."""
        if self.server.abort(missing_ok=True):
            log.warning("aborted the transaction an interrupted writer left open on %s", self.repository)

    @contextmanager
    def _held(self) -> Iterator[None]:
        """The repository, exclusively: the lease and this host's flock."""
        with self._lock(self.lease_name) if self._lock else nullcontext() as still_held, \
                self._staging.writer() as lock_fd, self.server.holding(lock_fd):
            self._holder.active = True
            self._holder.still_held = still_held
            try:
                yield
            finally:
                self._holder.active = False
                self._holder.still_held = None

    def _fence(self, change: str) -> None:
        """Before every call that makes something visible: LeaseLost unless the repository's lease is still
        ours. Once it has lapsed another host may be publishing; this writer stops (an open transaction is
        aborted by the caller) and a retry starts over."""
        still_held = getattr(self._holder, "still_held", None)
        if still_held is not None and not still_held():
            raise LeaseLost(f"lost the lease on repository {self.name} (Redis did not renew it in time); "
                            f"stopped before {change}, a retry publishes it again")

    # -- the two kinds of write ----------------------------------------------------------------

    def _path(self, relative: PurePosixPath) -> str:
        """``relative`` (to the published root) as a path in the repository; "" for its root."""
        rel = "" if str(relative) == "." else str(relative)
        return "/".join(p for p in (self.subdir, rel) if p)

    def graft_flat(self, config_digest: Digest, staged: Path, layers: Sequence[Digest]) -> bool:
        """Publish the staged flat root as ``.flat/xx/<hex>`` in one transaction … publish, its files
        grafted onto the published copies of ``layers`` (``ducc.publish.graft``): one revision, like
        the stream, without ``cvmfs_server`` compressing and hashing the image's data a second time.

        Returns False, having changed nothing, where grafts cannot publish this tree (see
        ``graft.plan``); the caller then streams it."""
        if not layers:
            return False
        from ducc.publish import graft  # here: the web app reads through CvmfsView only

        (staged / layout.CATALOG).touch(mode=0o644)  # the flat root is a nested catalog, as in the stream
        copies = [graft.LayerCopy(_ingested(staged.parent, d) or self.layer_source(d), self.layer_source(d))
                  for d in layers]
        started = time.monotonic()
        planned = graft.plan(staged, copies)
        planning = time.monotonic() - started
        if planned is None:
            return False
        st = staged.stat()
        flat = layout.flat_dir(config_digest)
        # The lease, on a gateway, is the ingest's base: the shard once ``.flat`` exists, else ``.flat``.
        lease = [flat] if (self.root / layout.FLAT).is_dir() else [flat.parent]

        def change(root: Path) -> None:
            for directory in (layout.FLAT, flat.parent):  # made where missing, nested catalogs as in the stream
                if not (root / directory).is_dir():
                    os.mkdir(root / directory, 0o755)
                    (root / directory / layout.CATALOG).touch(mode=0o644)
            graft.write(planned, root / flat, stat.S_IMODE(st.st_mode), st.st_mtime_ns)

        started = time.monotonic()
        txn: CvmfsTransaction | None = getattr(self._holder, "transaction", None)
        if txn is not None:
            txn.write_now(lease, change)  # published with the tag and the record, when the transaction ends
        else:
            self.small_changes(lease, [change])
        log.info("flat root %s: %d files grafted (%d bytes), %d other entries written (%d bytes of files); "
                 "planned in %.1f s, written in %.1f s", config_digest.short, planned.grafts,
                 planned.grafted_bytes, len(planned.entries) - planned.grafts, planned.copied_bytes, planning,
                 time.monotonic() - started)
        return True

    def ingest_tree(self, top: PurePosixPath, digest: Digest, staged: Path) -> Path:
        """Ingest ``staged`` as ``<top>/xx/<hex>``, a nested catalog (as is its shard) — one revision.
        Returns where the staged tree is now (moved, within the staging directory: ``_ingested``).

        The catalog markers are in the stream, where the directory publisher has them (``<top>``,
        ``<top>/xx``, the tree itself) with its mode 0644; ``--catalog`` is not passed: with a marker at
        the stream's root it crashes the real ingest (swissknife's assertion in catalog_rw.cc)."""
        shard = staged.parent / f"ingest-{digest.hex}"
        (shard / digest.prefix).mkdir(parents=True)
        for catalog in (shard / layout.CATALOG, shard / digest.prefix / layout.CATALOG, staged / layout.CATALOG):
            catalog.touch()
            catalog.chmod(0o644)
        os.rename(staged, shard / digest.prefix / digest.hex)
        if (self.root / top).is_dir():
            base, tree = top / digest.prefix, shard / digest.prefix
        else:  # a fresh repository: this ingest makes the top directory (and its catalog) too
            base, tree = top, shard

        from ducc.publish.tarstream import write_tree  # here: the web app reads through CvmfsView only

        def stream(out: BinaryIO) -> None:
            write_tree(tree, out)

        self._fence(f"ingesting {top}/{digest.prefix}/{digest.short}")
        self._retry_busy(lambda: self.server.ingest(stream, self._path(base), catalog=False))
        return shard / digest.prefix / digest.hex

    def stage_layer(self, batch: Path, digest: Digest, staged: Path) -> Path:
        """Move ``staged`` into ``batch`` (a directory of the staging directory) as ``xx/<hex>``, the
        catalog markers beside it, for ``ingest_batch``; returns where the tree is now (``_ingested``)."""
        (batch / digest.prefix).mkdir(exist_ok=True)
        for catalog in (batch / digest.prefix / layout.CATALOG, staged / layout.CATALOG):
            catalog.touch()
            catalog.chmod(0o644)
        os.rename(staged, batch / digest.prefix / digest.hex)
        return batch / digest.prefix / digest.hex

    def ingest_batch(self, batch: Path) -> None:
        """Ingest the layers ``stage_layer`` put into ``batch`` as ``.layers/xx/<hex>`` in one ``ingest``
        (one revision): the shards they join keep their other layers. The first ingest into a fresh
        repository also makes ``.layers`` (and its catalog)."""
        if not (self.root / layout.LAYERS).is_dir():
            (batch / layout.CATALOG).touch()
            (batch / layout.CATALOG).chmod(0o644)

        from ducc.publish.tarstream import write_tree  # here: the web app reads through CvmfsView only

        def stream(out: BinaryIO) -> None:
            write_tree(batch, out)

        self._fence("ingesting layers")
        self._retry_busy(lambda: self.server.ingest(stream, self._path(layout.LAYERS), catalog=False))

    def open_transaction(self, lease: str | None) -> None:
        self._retry_busy(lambda: self.server.transaction(lease))

    def write_and_publish(self, changes: list[Callable[[Path], None]]) -> None:
        """Apply ``changes`` (each writes under the repository root) in the open transaction and publish
        it; any failure aborts it."""
        try:
            for change in changes:
                change(self.root)
            self._fence("publishing a transaction")
            self.server.publish()
        except BaseException as exc:
            self._abort_quietly()
            if isinstance(exc, OSError):
                raise PublishError(f"cannot write into the transaction on {self.repository}: {exc}") from exc
            raise

    def _abort_quietly(self) -> None:
        try:
            self.server.abort(missing_ok=True)
        except CvmfsError as abort_error:
            log.error("could not abort the failed transaction on %s: %s", self.repository, abort_error)

    def small_changes(self, paths: list[PurePosixPath], changes: list[Callable[[Path], None]]) -> None:
        """Apply ``changes`` (each writes under the repository root) in one transaction … publish.

        On a gateway the lease is the deepest directory holding every changed path."""
        self.open_transaction(self._path(_common_parent(paths)) if self.gateway else None)
        self.write_and_publish(changes)

    def delete_trees(self, paths: list[PurePosixPath]) -> None:
        """``ingest --delete`` every path (relative to the published root), ``DELETE_BATCH`` per call (one
        on a gateway, which takes no more). A busy lease repeats that call alone, never one already done."""
        full = [self._path(path) for path in paths]
        size = 1 if self.gateway else DELETE_BATCH
        for start in range(0, len(full), size):
            batch = full[start:start + size]
            self._fence(f"deleting {len(batch)} trees")
            self._retry_busy(lambda batch=batch: self.server.delete(batch, batch=size))  # type: ignore[misc]

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


def _writable(path: Path) -> bool:
    """Whether ``path``'s filesystem is mounted read-write (``/cvmfs/<repo>`` is, only in a transaction)."""
    try:
        return not os.statvfs(path).f_flag & os.ST_RDONLY
    except OSError:
        return False


def _remove_tag(root: Path, ref: Reference, platform: Platform) -> None:
    """Unpublish ``ref`` on ``platform`` under ``root`` (inside a transaction): the record first, then the
    links ``ducc.publish.links.tag_removal`` names."""
    _, own, *public = links.tag_removal(MountedTree(root).present_links(ref), ref, platform)
    remove_tag_files(root, ref, platform, link_path=own)
    for path in public:  # the variant link, once no platform of the tag is left
        if (root / path).is_symlink():
            (root / path).unlink()


def _ingested(stage: Path, digest: Digest) -> Path | None:
    """The staged copy of a layer this staging directory ingested (``ingest_tree`` or ``stage_layer``
    moved it into one of its ``ingest-*`` directories, a handful at most)."""
    with os.scandir(stage) as entries:
        batches = [e.path for e in entries if e.name.startswith("ingest-") and e.is_dir(follow_symlinks=False)]
    for batch in batches:
        path = Path(batch) / digest.prefix / digest.hex / layout.LAYERFS
        if path.is_dir():
            return path
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
