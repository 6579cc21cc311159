"""The ``directory`` publisher: a plain tree (local disk, NFS, Lustre), the embedded default.

Atomicity comes from ``rename(2)``: trees are built under ``<root>/.ducc-staging``
(same filesystem) and renamed into place; tag links are swapped with
``symlink`` + ``rename``. A crash leaves at worst a staging directory, which
the next run removes (``ducc.publish.staging``: concurrent runs never remove
each other's).

Removal is the same in reverse: a layer, a flat root or a tag's record is
renamed into a private directory under ``<root>/.ducc-trash`` while the
transaction is held, and that directory is deleted once the transaction has
ended (so the lock is not held while large trees are deleted). A crash leaves
only trash, which the next transaction deletes; nothing half-deleted is ever
at a layer, flat or tag path. The garbage-collection state is
``<root>/.ducc-gc.json``, replaced atomically (``ducc.publish.gcstate``).

Seams (``ducc.publish``): ``DirectoryView`` and the publisher read through a ``MountedTree`` of the
root (``ducc.publish.reader``); the publisher is the ``Committer``, its ``Staging`` the
``Reservations``, a ``GcStateFile`` its ``GcStateStore``. Nothing here is shared with the CVMFS
backend but those and the layout writers (``ducc.publish.writer``).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path, PurePosixPath

from ducc import layout
from ducc.errors import LeaseLost, PublishError, RepositoryUnusable
from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish import RepositoryLock, links
from ducc.publish.gcstate import GcStateFile
from ducc.publish.links import PresentLinks
from ducc.publish.reader import MountedTree, ReadThrough
from ducc.publish.staging import Staging
from ducc.publish.writer import remove_tag_files, write_links, write_record_files
from ducc.record import Record

log = logging.getLogger(__name__)


class DirectoryTransaction:
    """Renames into place, and into the trash; a lease that can lapse is checked before every visible change."""

    revision: int | None = None  # a plain tree has no revisions

    def __init__(self, publisher: DirectoryPublisher, after: ExitStack) -> None:
        self.publisher = publisher
        self.root = publisher.root
        self._after = after  # unwound once the transaction's locks are released
        self._trash: Path | None = None
        self._fence = publisher.fence

    def _markers(self, *relative: PurePosixPath) -> None:
        for marker in relative:
            path = self.root / marker
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch(mode=0o644)

    def _rename_into_place(self, staged: Path, target: Path) -> bool:
        """True if ``staged`` became ``target``; False if another writer got there first."""
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staged, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise PublishError(f"cannot move {staged} to {target}: {exc}") from exc
        return True

    # Each layer and flat root is a nested CVMFS catalog, as are the shards above them: the markers
    # cost nothing in a plain tree and let the same tree be ingested into CVMFS as it is.
    def add_layer(self, digest: Digest, staged: Path) -> Path:
        self._fence(f"publishing layer {digest.short}")
        self._markers(layout.LAYERS / layout.CATALOG, layout.LAYERS / digest.prefix / layout.CATALOG)
        (staged / layout.CATALOG).touch(mode=0o644)
        if self._rename_into_place(staged, self.root / layout.layer_dir(digest)):
            log.info("published layer %s", digest.short)
        return self.root / layout.layerfs(digest)

    def add_flat(self, config_digest: Digest, staged: Path, layers: Sequence[Digest] = ()) -> None:
        self._fence(f"publishing flat root {config_digest.short}")
        self._markers(layout.FLAT / layout.CATALOG, layout.FLAT / config_digest.prefix / layout.CATALOG)
        (staged / layout.CATALOG).touch(mode=0o644)
        if self._rename_into_place(staged, self.root / layout.flat_dir(config_digest)):
            log.info("published flat root %s", config_digest.short)

    def point_tag(self, ref: Reference, platform: Platform, config_digest: Digest) -> None:
        self._fence(f"pointing {ref} at its flat root")
        # Readers of a directory root are not CVMFS clients: one link per platform, never a variant link.
        write_links(self.root, links.tag_links(PresentLinks(), ref, platform, config_digest, variants=False))

    def write_record(self, ref: Reference, platform: Platform, record: Record) -> None:
        if self.publisher.durable:
            os.sync()  # the image's data reaches the disk before the record that declares it converted
        self._fence(f"writing the record of {ref}")
        write_record_files(self.root, ref, platform, record)

    # -- removal: rename into the trash (atomic), delete the trash after the transaction ----------

    def _to_trash(self, path: Path, name: str) -> bool:
        """Move ``path`` into this transaction's trash; False if there was nothing."""
        if not path.exists() and not path.is_symlink():
            return False
        self._fence(f"removing {path.relative_to(self.root)}")
        if self._trash is None:
            self._trash = self._after.enter_context(self.publisher._trash.directory())
        target = self._trash / name
        try:
            os.rename(path, target)
        except PermissionError:
            # Moving a directory rewrites its ``..``: a read-only one (an image's root may be) must be
            # made writable first; it is about to be deleted anyway.
            os.chmod(path, os.lstat(path).st_mode & 0o7777 | 0o700)
            os.rename(path, target)
        except FileNotFoundError:
            return False
        return True

    def remove_layer(self, digest: Digest) -> None:
        if self._to_trash(self.root / layout.layer_dir(digest), f"layer-{digest.hex}"):
            log.info("removed layer %s", digest.short)

    def remove_flat(self, config_digest: Digest) -> None:
        if self._to_trash(self.root / layout.flat_dir(config_digest), f"flat-{config_digest.hex}"):
            log.info("removed flat root %s", config_digest.short)

    def remove_tag(self, ref: Reference, platform: Platform) -> None:
        _, link = links.tag_removal(PresentLinks(), ref, platform)  # no variant links in a directory root
        remove_tag_files(self.root, ref, platform, self._to_trash, link_path=link)


class DirectoryView(ReadThrough):
    """A directory root, read only: what the web app, ``ducc list`` and ``ducc inspect`` see.

    It never creates anything; a missing root is an empty repository (``exists()`` says so).
    """

    def __init__(self, root: Path, name: str | None = None) -> None:
        self.root = root.resolve()
        self._name = name
        self._tree = MountedTree(self.root)

    def tree(self) -> MountedTree:
        return self._tree

    @property
    def name(self) -> str:
        """``DUCC_REPOSITORY`` if given, else the name stored in the root, else the root's path."""
        if self._name:
            return self._name
        try:
            return (self.root / layout.REPOSITORY_NAME).read_text(encoding="utf-8").strip() or str(self.root)
        except OSError:
            return str(self.root)

    def revision(self) -> int | None:
        return None  # a plain tree has no revisions


def _check_writable(root: Path, staging: Path) -> None:
    """RepositoryUnusable unless trees can be built and renamed into ``root`` (its staging directory
    can be created and written): a read-only mount or a root owned by someone else fails here."""
    try:
        staging.mkdir(exist_ok=True)
        writable = os.access(root, os.W_OK | os.X_OK) and os.access(staging, os.W_OK | os.X_OK)
    except OSError as exc:
        raise RepositoryUnusable(f"repository root {root} is not writable: {exc.strerror or exc}") from exc
    if not writable:
        read_only = bool(os.statvfs(root).f_flag & os.ST_RDONLY)
        reason = "read-only file system" if read_only else "permission denied"
        raise RepositoryUnusable(f"repository root {root} is not writable: {reason}")



class DirectoryPublisher(ReadThrough):
    """Publishes into the directory ``root`` (created if missing; RepositoryUnusable if it cannot be
    created or written: checked here, before any work, by creating the staging directory in it).

    Renames make every step safe against a crash of ducc itself. ``durable`` also
    makes it safe against a power loss: the filesystem is flushed before each record.
    ``lock(name)`` is the cross-host lease of the repository ``name`` (the service passes
    a Redis lease); writers on one host are serialised by an flock in any case.

    A ``Publisher`` (``ducc.publish``): ``reader`` (itself, through ``view``), ``reservations`` (the
    staging root), ``gc_state`` (``<root>/.ducc-gc.json``), ``transaction`` and ``recover``. The reads
    of ``DirectoryView`` are forwarded too, for callers that hold the publisher only.
    """

    def __init__(
        self,
        root: Path,
        *,
        name: str | None = None,
        durable: bool = False,
        lock: RepositoryLock | None = None,
    ) -> None:
        self.durable = durable
        self._lock = lock
        try:
            root.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise RepositoryUnusable(f"repository root {root} is not a directory") from exc
        except OSError as exc:
            raise RepositoryUnusable(f"repository root {root} cannot be created: {exc.strerror or exc}") from exc
        if not root.is_dir():
            raise RepositoryUnusable(f"repository root {root} is not a directory")
        self.view = DirectoryView(root, name)
        self.root = self.view.root
        self._name = name
        self._staging = Staging(self.root / layout.STAGING)
        self._trash = Staging(self.root / layout.TRASH)
        self._gc_state = GcStateFile(self.root / layout.GC_STATE, fence=self.fence)
        self._holder = threading.local()  # the lease this thread's transaction holds
        _check_writable(self.root, self._staging.root)

    def tree(self) -> MountedTree:
        return self.view.tree()

    @property
    def name(self) -> str:
        return self.view.name

    def revision(self) -> int | None:
        return None

    @property
    def reader(self) -> DirectoryPublisher:
        return self

    @property
    def reservations(self) -> Staging:
        return self._staging

    @property
    def gc_state(self) -> GcStateFile:
        return self._gc_state

    def ensure_name(self) -> str:
        """The repository's name, stored inside the root on first use unless ``DUCC_REPOSITORY`` gives it:
        hosts that mount one export at different paths then agree on it."""
        if self._name:
            return self._name
        path = self.root / layout.REPOSITORY_NAME
        try:
            stored = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            stored = ""
        if stored:
            return stored
        candidate = f"dir-{secrets.token_hex(8)}"
        tmp = path.with_name(f"{path.name}.{candidate}.tmp")
        tmp.write_text(candidate + "\n", encoding="utf-8")
        try:
            os.link(tmp, path)  # first writer wins, atomically, also over NFS
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_text(encoding="utf-8").strip()

    def recover(self) -> None:
        """Staging debris of crashed writers goes. A dead writer leaves nothing else visible (trash is
        swept by the next transaction), so this takes no lock."""
        self._staging.sweep()

    def fence(self, change: str) -> None:
        """Before every visible change: LeaseLost unless the repository's lease is still ours. Once it
        has lapsed another host may be writing the same root; this writer stops and a retry starts over."""
        still_held = getattr(self._holder, "still_held", None)
        if still_held is not None and not still_held():
            raise LeaseLost(f"lost the lease on repository {self.ensure_name()} (Redis did not renew it "
                            f"in time); stopped before {change}, a retry publishes it again")

    @contextmanager
    def transaction(self) -> Iterator[DirectoryTransaction]:
        """Writers are serialised by an flock on the root (one host) and, where the service passes
        one, the repository's lease (many hosts sharing the root). Holding it, crash debris (staging
        and trash) is swept; what the transaction removed is deleted after it lets go. A lease that can
        lapse is checked before every visible change (``LeaseLost``: nothing more is written)."""
        with ExitStack() as after:
            with self._lock(self.ensure_name()) if self._lock else nullcontext() as still_held, \
                    self._staging.writer():
                self._trash.sweep()
                self._holder.still_held = still_held
                try:
                    yield DirectoryTransaction(self, after)
                finally:
                    self._holder.still_held = None
