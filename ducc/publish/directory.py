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
``<root>/.ducc-gc.json``, replaced atomically.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path, PurePosixPath

from ducc import layout
from ducc.errors import LeaseLost, PublishError, RepositoryUnusable
from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish import RepositoryLock, StillHeld
from ducc.publish.staging import Reservations, Staging
from ducc.record import FILES, Record
from ducc.tree import TreeSize, measure, remove_tree

log = logging.getLogger(__name__)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with a file (mode 0644) holding ``data``: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class DirectoryTransaction:
    revision: int | None = None  # a plain tree has no revisions

    def __init__(
        self, publisher: DirectoryPublisher, reservations: Reservations, after: ExitStack,
        still_held: StillHeld | None = None,
    ) -> None:
        self.publisher = publisher
        self.root = publisher.root
        self._reservations = reservations  # frozen from the first read until the transaction ends
        self._after = after  # unwound once the transaction's locks are released
        self._trash: Path | None = None
        self._still_held = still_held

    def _fence(self, change: str) -> None:
        """Before every visible change: LeaseLost unless the repository's lease is still ours. Once it
        has lapsed another host may be writing the same root; this writer stops and a retry starts over."""
        if self._still_held is not None and not self._still_held():
            raise LeaseLost(f"lost the lease on repository {self.publisher.ensure_name()} (Redis did not renew it "
                            f"in time); stopped before {change}, a retry publishes it again")

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
        write_tag_link(self.root, ref, platform, config_digest)

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
        remove_tag_files(self.root, ref, platform, self._to_trash)

    def reserved(self) -> frozenset[Digest]:
        return self._reservations()

    def write_gc_state(self, data: bytes) -> None:
        self._fence("writing the garbage-collection state")
        write_atomic(self.root / layout.GC_STATE, data)


def write_tag_link(root: Path, ref: Reference, platform: Platform, config_digest: Digest) -> None:
    """Point the tag link under ``root`` at the flat root."""
    write_link(root / layout.tag_link(ref, platform), layout.link_target(ref, platform, config_digest))


def write_link(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target`` (symlink + rename: never missing, never torn); PublishError if
    something other than a symlink is there."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == target:
        return
    if os.path.lexists(link) and not link.is_symlink():
        raise PublishError(f"{link} exists and is not a symlink; refusing to replace it")
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def remove_tag_files(root: Path, ref: Reference, platform: Platform,
                     discard: Callable[[Path, str], bool] | None = None, link_path: PurePosixPath | None = None) -> bool:
    """Unpublish ``ref`` under ``root``: the record first (its directory at once, so ``manifest.json``
    goes with it), then the tag link (``link_path``, default ``tag_link``); parent directories left
    empty go too. ``discard(path, name)`` moves a record directory away atomically (default: delete
    it, ``manifest.json`` first). Returns whether anything was there."""
    link = root / (link_path or layout.tag_link(ref, platform))
    metadata = root / layout.metadata_dir(ref, platform)
    found = False
    if metadata.is_dir():
        if discard is not None:
            found = discard(metadata, f"record-{secrets.token_hex(6)}")
        else:
            (metadata / layout.RECORD_MANIFEST).unlink(missing_ok=True)
            remove_tree(metadata)
            found = True
    if link.is_symlink():
        link.unlink()
        found = True
    elif link.exists():
        raise PublishError(f"{link} exists and is not a symlink; refusing to remove it")
    _prune_empty(link.parent, root)
    _prune_empty(metadata.parent, root / layout.platform_prefix(platform) / layout.METADATA)
    return found


def _prune_empty(directory: Path, stop: Path) -> None:
    """Remove ``directory`` and its parents while they are empty, up to (not including) ``stop``."""
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def write_record_files(root: Path, ref: Reference, platform: Platform, record: Record) -> None:
    """Write the record's ``.metadata`` files under ``root``, each atomically, ``manifest.json`` last."""
    directory = root / layout.metadata_dir(ref, platform)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in record.files().items():
        write_atomic(directory / name, data)


class DirectoryView:
    """A directory root, read only: what the web app, ``ducc list`` and ``ducc inspect`` see.

    It never creates anything; a missing root is an empty repository (``exists()`` says so).
    """

    def __init__(self, root: Path, name: str | None = None) -> None:
        self.root = root.resolve()
        self._name = name

    @property
    def name(self) -> str:
        """``DUCC_REPOSITORY`` if given, else the name stored in the root, else the root's path."""
        if self._name:
            return self._name
        try:
            return (self.root / layout.REPOSITORY_NAME).read_text(encoding="utf-8").strip() or str(self.root)
        except OSError:
            return str(self.root)

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
        return self._read_record(self.root / layout.metadata_dir(ref, platform))

    def is_published(self, ref: Reference, platform: Platform) -> bool:
        return self.public_path(ref, platform).is_symlink() or self.read_record(ref, platform) is not None

    def read_record_at(self, link: str) -> Record | None:
        return self._read_record(self.root / layout.metadata_for_link(PurePosixPath(link)))

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

    def revision(self) -> int | None:
        return None  # a plain tree has no revisions

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
        """Where a public link leads (its flat root, if it is not dangling)."""
        return link.resolve()


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


class DirectoryPublisher(DirectoryView):
    """Publishes into the directory ``root`` (created if missing; RepositoryUnusable if it cannot be
    created or written: checked here, before any work, by creating the staging directory in it).

    Renames make every step safe against a crash of ducc itself. ``durable`` also
    makes it safe against a power loss: the filesystem is flushed before each record.
    ``lock(name)`` is the cross-host lease of the repository ``name`` (the service passes
    a Redis lease); writers on one host are serialised by an flock in any case.
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
        super().__init__(root, name)
        self._staging = Staging(self.root / layout.STAGING)
        self._trash = Staging(self.root / layout.TRASH)
        _check_writable(self.root, self._staging.root)

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

    def sweep_staging(self) -> int:
        """Remove staging directories left by crashed runs; returns how many."""
        return self._staging.sweep()

    def staging(self) -> AbstractContextManager[Path]:
        return self._staging.directory()

    def reserve(self, stage: Path, digests: Iterable[Digest]) -> None:
        self._staging.reserve(stage, digests)

    def reserved(self) -> frozenset[Digest]:
        return self._staging.reserved()

    def read_gc_state(self) -> bytes | None:
        try:
            return (self.root / layout.GC_STATE).read_bytes()
        except FileNotFoundError:
            return None

    @contextmanager
    def transaction(self) -> Iterator[DirectoryTransaction]:
        """Writers are serialised by an flock on the root (one host) and, where the service passes
        one, the repository's lease (many hosts sharing the root). Holding it, crash debris (staging
        and trash) is swept; what the transaction removed is deleted after it lets go. A lease that can
        lapse is checked before every visible change (``LeaseLost``: nothing more is written)."""
        with ExitStack() as after:
            with self._lock(self.ensure_name()) if self._lock else nullcontext() as still_held, \
                    self._staging.writer(), ExitStack() as held:
                self._trash.sweep()
                yield DirectoryTransaction(self, Reservations(self._staging, held), after, still_held)
