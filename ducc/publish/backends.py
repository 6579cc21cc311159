"""The repository backends, one row each: everything ducc knows about a backend outside its own modules.

A row says what the backend is called (``DUCC_PUBLISHER``), which ``DUCC_*`` settings it reads,
the command-line option that names its repository (and the variable that option overrides), how
to build its read-only view and its publisher from the settings, what ``ducc serve`` checks before
it starts, and what ``ducc doctor`` checks. The composition root (``ducc.wiring``), ``ducc serve``
and the CLI ask the row of ``settings.publisher`` (``of``) and never compare backend names
(docs/design.md §8 and §13; docs/publishing.md for the contract every backend keeps).

The factories import what writes (``ducc.publish.cvmfs``, ``cvmfs_server``) inside themselves: the
web process builds only views, and never loads them (``tests/test_architecture.py`` checks it).

A new backend is one row here plus its module(s); its name also goes into ``settings.PUBLISHERS``,
which ``DUCC_PUBLISHER`` is checked against (settings stay below the publishers, so the names are
kept there and this table has exactly one row per name: ``tests/unit/test_backends.py``).

A store written beside the repository, whichever backend publishes it (podman's additional image
store), is a ``Store`` row of ``STORES`` plus its module: its option and variable, its preflight, and
``sink``, which builds its ``ImageSink`` (``ducc.publish.sinks``): the converter, ``ducc rm`` and
``ducc gc`` tell every sink in use what they did to the repository, after doing it.

Every consumer reads a row's fields only: the CLI adds each row's ``option`` (``add_options``) and
applies those given (``apply_options``), ``ducc serve`` runs the ``preflight`` of every row in use
(``in_use``), ``ducc doctor`` offers the options of the rows that have a ``doctor``, and the
composition root calls the factories.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ducc.errors import PublishError
from ducc.publish import Publisher, RepositoryLock, RepositoryView
from ducc.publish.cvmfs_view import CvmfsView, split_repository
from ducc.publish.directory import DirectoryPublisher, DirectoryView
from ducc.settings import PUBLISHERS, Settings

if TYPE_CHECKING:
    from ducc.publish.cvmfs_server import CvmfsServer
    from ducc.publish.sinks import ImageSink

# One line per check a doctor made: what was checked, and None if it holds, else what is wrong.
Checks = list[tuple[str, str | None]]


@dataclass(frozen=True)
class Option:
    """The command-line option that names where a row writes. ``apply`` makes it override ``env`` (and,
    for a backend, choose it), for the command and for the processes ``ducc serve`` starts."""

    flag: str
    env: str
    metavar: str
    help: str
    apply: Callable[[Settings, str], Settings]

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class Backend:
    """One repository backend. ``root`` is the directory root of ``--root``/``DUCC_ROOT`` (absolute)."""

    name: str
    settings: tuple[str, ...]
    option: Option
    view: Callable[[Settings, Path], RepositoryView]
    publisher: Callable[[Settings, Path, RepositoryLock | None], Publisher]
    preflight: Callable[[Settings, Path], None]
    doctor: Callable[[Settings], Checks] | None = None


@dataclass(frozen=True)
class Store:
    """A store written beside the repository, whichever backend publishes it (for example podman's
    additional image store: ``--podman-store DIR``, ``DUCC_PODMAN_STORE``). It is in use wherever its
    option or variable names it; ``sink`` builds what follows the repository (told what is published,
    unpublished or collected there, after it was: ``ducc.publish.sinks``). ``preflight`` raises
    ``RepositoryUnusable`` (one line) where the store cannot be written."""

    name: str
    settings: tuple[str, ...]
    option: Option
    sink: Callable[[Settings, Publisher], ImageSink]
    preflight: Callable[[Settings, Path], None]


# -- directory: a tree on a local or shared filesystem ----------------------------------------------


def _with_root(settings: Settings, root: str) -> Settings:
    return Settings.from_env({**settings.env, "DUCC_ROOT": root, "DUCC_PUBLISHER": "directory"})


def _directory_view(settings: Settings, root: Path) -> RepositoryView:
    return DirectoryView(root, settings.repository)


def _directory_publisher(settings: Settings, root: Path, lock: RepositoryLock | None) -> Publisher:
    return DirectoryPublisher(root, name=settings.repository, durable=settings.fsync, lock=lock)


def _directory_preflight(settings: Settings, root: Path) -> None:
    DirectoryPublisher(root)  # RepositoryUnusable if it cannot be created or written


DIRECTORY = Backend(
    name="directory",
    settings=("DUCC_ROOT", "DUCC_REPOSITORY", "DUCC_FSYNC"),
    option=Option("--root", "DUCC_ROOT", "ROOT", "directory repository root (default: $DUCC_ROOT)", _with_root),
    view=_directory_view,
    publisher=_directory_publisher,
    preflight=_directory_preflight,
)


# -- cvmfs: a CernVM-FS repository, written through cvmfs_server on its publisher -------------------


def _cvmfs_repository(settings: Settings) -> tuple[str, str]:
    if not settings.cvmfs.repo:
        raise PublishError("the cvmfs publisher needs a repository: --cvmfs-repo REPO[/subdir] or DUCC_CVMFS_REPO")
    return split_repository(settings.cvmfs.repo)


def _with_cvmfs_repo(settings: Settings, repo: str) -> Settings:
    return settings.with_cvmfs_repo(repo)


def _cvmfs_view(settings: Settings, root: Path) -> RepositoryView:
    repository, subdir = _cvmfs_repository(settings)
    return CvmfsView(repository, subdir=subdir, mount=settings.cvmfs.mount)


def _cvmfs_server(settings: Settings, repository: str, timeout: float = 3600.0) -> CvmfsServer:
    from ducc.publish.cvmfs_server import CvmfsServer

    return CvmfsServer(repository, binary=settings.cvmfs.server, mount=settings.cvmfs.mount,
                       gateway=settings.cvmfs.gateway, env=dict(settings.env) or None, timeout=timeout)


def _cvmfs_publisher(settings: Settings, root: Path, lock: RepositoryLock | None) -> Publisher:
    from ducc.publish.cvmfs import CvmfsPublisher

    repository, subdir = _cvmfs_repository(settings)
    return CvmfsPublisher(_cvmfs_server(settings, repository), subdir=subdir, lock=lock,
                          staging_root=settings.state_dir / "cvmfs-staging" / repository,
                          gc_dir=settings.state_dir / "gc")


def _cvmfs_preflight(settings: Settings, root: Path) -> None:
    _cvmfs_repository(settings)  # named, and well formed; ducc doctor checks the server itself


def _cvmfs_doctor(settings: Settings) -> Checks:
    """The command found, the repository mounted, its revision readable, a throw-away transaction."""
    from ducc.publish.cvmfs_server import diagnose

    if not settings.cvmfs.repo:
        raise ValueError(DOCTOR_USAGE)
    repository, _ = split_repository(settings.cvmfs.repo)
    return diagnose(_cvmfs_server(settings, repository, timeout=300))


CVMFS = Backend(
    name="cvmfs",
    settings=("DUCC_CVMFS_REPO", "DUCC_CVMFS_SERVER", "DUCC_CVMFS_MOUNT", "DUCC_CVMFS_GATEWAY",
              "DUCC_STRATUM1_URLS", "DUCC_STRATUM1_TIMEOUT"),
    option=Option("--cvmfs-repo", "DUCC_CVMFS_REPO", "REPO[/SUBDIR]",
                  "publish into this CVMFS repository through cvmfs_server, on its publisher "
                  "(default: $DUCC_CVMFS_REPO; read from $DUCC_CVMFS_MOUNT or /cvmfs/REPO)", _with_cvmfs_repo),
    view=_cvmfs_view,
    publisher=_cvmfs_publisher,
    preflight=_cvmfs_preflight,
    doctor=_cvmfs_doctor,
)

# -- podman: podman's additional image store, in a directory (docs/podman.md) ------------------------


def _with_podman_store(settings: Settings, store: str) -> Settings:
    return Settings.from_env({**settings.env, "DUCC_PODMAN_STORE": str(Path(store).absolute())})


def _podman_store(settings: Settings) -> Path:
    if settings.podman.store is None:
        raise PublishError("podman's store needs a directory: --podman-store DIR or DUCC_PODMAN_STORE")
    return settings.podman.store.absolute()


def _podman_in_cvmfs(settings: Settings, store: Path) -> tuple[str, PurePosixPath] | None:
    """(repository, the store's path in it) when the store is inside the CVMFS repository published into
    (``/cvmfs/<repo>/podmanStore``): it is then written through ``cvmfs_server``; None: a directory."""
    if of(settings) is not CVMFS:  # a store under /cvmfs is written through the CVMFS publisher only
        return None
    repository, _ = _cvmfs_repository(settings)
    mount = (settings.cvmfs.mount or Path("/cvmfs") / repository).absolute()
    if not store.is_relative_to(mount) or store == mount:
        return None
    return repository, PurePosixPath(store.relative_to(mount).as_posix())


def _podman_sink(settings: Settings, publisher: Publisher) -> ImageSink:
    from ducc.publish.cvmfs import CvmfsPublisher
    from ducc.publish.podman.committer import Committer, DirectoryCommitter
    from ducc.publish.podman.cvmfs_committer import CvmfsCommitter
    from ducc.publish.podman.mirror import Mirror

    store = _podman_store(settings)
    inside = _podman_in_cvmfs(settings, store)
    committer: Committer = DirectoryCommitter(store)
    if inside is not None and isinstance(publisher, CvmfsPublisher):
        repository, relative = inside
        # The publisher's own server: its commands run under the repository's flock (held by the
        # publisher's transaction), so a next writer never aborts one still at work.
        committer = CvmfsCommitter(publisher, publisher.server, relative,
                                   settings.state_dir / "podman-staging" / repository)
    return Mirror(committer, settings.platform)


def _podman_preflight(settings: Settings, root: Path) -> None:
    from ducc.publish.podman.mirror import check, check_cvmfs

    store = _podman_store(settings)
    inside = _podman_in_cvmfs(settings, store)
    if inside is None:
        check(store)
    else:
        check_cvmfs(store, inside[0])


PODMAN = Store(
    name="podman",
    settings=("DUCC_PODMAN_STORE",),
    option=Option("--podman-store", "DUCC_PODMAN_STORE", "DIR",
                  "also write the images converted for DUCC_PLATFORM (one image per name) into podman's "
                  "additional image store in DIR, as root; a DIR inside the CVMFS repository published into "
                  "is written through cvmfs_server (default: $DUCC_PODMAN_STORE)", _with_podman_store),
    sink=_podman_sink,
    preflight=_podman_preflight,
)

# -- the table ---------------------------------------------------------------------------------------

BACKENDS: tuple[Backend, ...] = (DIRECTORY, CVMFS)  # one of them publishes the repository (DUCC_PUBLISHER)
STORES: tuple[Store, ...] = (PODMAN,)  # any of them is written beside it

DOCTOR_USAGE = "ducc doctor checks a CVMFS repository: --cvmfs-repo REPO or DUCC_CVMFS_REPO"


def of(settings: Settings) -> Backend:
    """The row of ``settings.publisher`` (``DUCC_PUBLISHER``, checked against ``PUBLISHERS`` when read)."""
    for backend in BACKENDS:
        if backend.name == settings.publisher:
            return backend
    raise ValueError(f"DUCC_PUBLISHER: unknown publisher {settings.publisher!r} (one of {', '.join(PUBLISHERS)})")


def stores(settings: Settings) -> tuple[Store, ...]:
    """The stores in use: those whose option or variable names them."""
    return tuple(store for store in STORES if settings.env.get(store.option.env))


def in_use(settings: Settings) -> tuple[Backend | Store, ...]:
    """The backend that publishes the repository, then every store written beside it."""
    return (of(settings), *stores(settings))


def add_options(parser: argparse.ArgumentParser, rows: Sequence[Backend] | None = None,
                beside: Sequence[Store] | None = None) -> None:
    """The options naming a repository, one per row of ``rows`` (a command takes at most one of them),
    and those naming a store beside it (any of them); every row of the tables unless given."""
    where = parser.add_mutually_exclusive_group()
    for backend in BACKENDS if rows is None else rows:
        _add(where, backend.option)
    for store in STORES if beside is None else beside:
        _add(parser, store.option)


def _add(parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, option: Option) -> None:
    parser.add_argument(option.flag, dest=option.dest, metavar=option.metavar, help=option.help)


def apply_options(args: argparse.Namespace, settings: Settings) -> Settings:
    """``settings`` with the repository and store options the command was given (a repository option
    chooses the backend)."""
    for option in (*(backend.option for backend in BACKENDS), *(store.option for store in STORES)):
        value = getattr(args, option.dest, None)
        if value:
            settings = option.apply(settings, value)
    return settings


def asked_for(settings: Settings) -> bool:
    """Whether a backend was chosen: by ``DUCC_PUBLISHER``, or by a repository option or variable (a
    store's says nothing about the repository)."""
    return "DUCC_PUBLISHER" in settings.env or any(settings.env.get(b.option.env) for b in BACKENDS)
