"""Publishing into a repository: small protocols at the seams, one per concern (docs/publishing.md).

- ``TreeReader`` / ``RepositoryView``: the published state, read only. Everyone who reads a repository
  (the converter, the web app, the CLI, garbage collection) goes through one; nobody else joins
  repository paths. Reads never lock, never write and never abort anything.
- ``Committer``: makes a staged tree, a link or a record visible, or removes one, inside a
  ``Transaction`` (rename for a directory root, ``cvmfs_server`` for CVMFS); ``recover`` is the one
  explicit step that clears what a dead writer left (on CVMFS, its open transaction).
- ``Reservations``: staging directories and what live conversions reserve in them.
- ``GcStateStore``: the garbage-collection state.
- ``Publisher``: a repository that images are published into, the composition of the four (each a
  member, no inheritance between backends).

A new backend implements these four and composes ``ducc.publish.reader.MountedTree`` for its reads
if its readers see ducc's layout under a mounted root; ``ducc.publish.links`` plans the tag links.

The converter builds trees in a staging directory ``Reservations`` hands out, then asks the
committer to make them visible in this order: layers, flat root, tag link, record. Each step is
all-or-nothing; an image counts as converted only once its record is written, and a reader never
sees a half-written tree.

What every backend promises (``tests/integration/test_publisher_contract.py``
checks each, for every backend):

- atomic visibility: a layer, a flat root or a tag appears whole or not at all;
- the record last: ``read_record`` finds nothing until every other file of the
  record and the tag are in place;
- idempotence: publishing what is already there changes nothing and is no error;
- crash debris swept: what a killed writer left in staging is removed by the
  next writer, and never becomes visible;
- removal is atomic too: a layer, a flat root or a tag (its link and record,
  the record's ``manifest.json`` first) disappears whole; what a killed
  remover left behind is never visible at a layer, flat or tag path, and the
  next remover finishes deleting it;
- reservations hold: a digest that a live staging directory reserved
  (``Reservations.reserve``) is reported by ``Reservations.frozen``, and no reservation
  can be made while that block lasts;
- reads have no side effects: a read outside a transaction sees the published state, even while a
  dead writer's transaction is open, and never clears it (``Committer.recover`` does).

Garbage collection (``ducc.gc``), unpublishing (``ducc.unpublish``) and conversion (``ducc.convert``)
are written against these protocols only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.record import Record
from ducc.tree import TreeSize

# Whether a writer still holds its repository's cross-host lease: cheap (no I/O), asked before every
# visible change; False once the lease may have passed to another writer.
StillHeld = Callable[[], bool]

# The cross-host lock of the repository ``name``, held while the block runs (the service passes a Redis
# lease); it yields a ``StillHeld`` where it can lapse under its holder, None where it cannot.
RepositoryLock = Callable[[str], AbstractContextManager[StillHeld | None]]


class TreeReader(Protocol):
    """ducc's layout in a repository, read only (``ducc.publish.reader.MountedTree`` is the one implementation)."""

    @property
    def location(self) -> Path:
        """Where readers find the repository (a directory root, ``/cvmfs/<repo>``)."""
        ...

    def exists(self) -> bool:
        """Whether the repository is there at all (a reader never creates it)."""
        ...

    def has_layer(self, digest: Digest) -> bool: ...

    def has_flat(self, config_digest: Digest) -> bool: ...

    def layer_source(self, digest: Digest) -> Path:
        """A readable path of the published ``layerfs`` (flattening reads it)."""
        ...

    def flat_path(self, config_digest: Digest) -> Path: ...

    def public_path(self, ref: Reference, platform: Platform) -> Path:
        """Where users run the image from (the tag link)."""
        ...

    def read_record(self, ref: Reference, platform: Platform) -> Record | None:
        """The record of a converted tag; None if there is none (or it is unreadable: logged)."""
        ...

    def is_published(self, ref: Reference, platform: Platform) -> bool:
        """Whether ``ref`` has anything published on ``platform`` to unpublish: its tag link or its record."""
        ...

    def read_flat_file(self, config_digest: Digest, relative: str) -> bytes | None:
        """A file inside a published flat root (``.singularity.d/ducc.json``, say); None if absent."""
        ...

    def published(self) -> Iterator[tuple[str, Path]]:
        """Every public image path (relative to the repository) with the flat root it leads to.

        In CVMFS, the public path of a tag published for several platforms is a variant link, which
        only a CVMFS client expands: it is reported with its default platform's flat root, and every
        platform's own link under ``.multiarch/<platform>/`` is reported as well."""
        ...

    def read_record_at(self, link: str) -> Record | None:
        """The record of the image published at ``link`` (a path as ``published`` gives it); None if none."""
        ...

    def layers(self) -> Iterator[Digest]:
        """Every layer present (published or not reachable any more), in no particular order."""
        ...

    def flats(self) -> Iterator[Digest]:
        """Every flat root present, in no particular order."""
        ...

    def layer_size(self, digest: Digest) -> TreeSize: ...

    def flat_size(self, config_digest: Digest) -> TreeSize: ...


class RepositoryView(TreeReader, Protocol):
    """A named repository's published state, read only: what the web app and the CLI hold."""

    @property
    def name(self) -> str:
        """The repository's name (what serialises its writers across hosts)."""
        ...

    def revision(self) -> int | None:
        """The repository's published revision (CVMFS); None for a backend without revisions."""
        ...


class Transaction(Protocol):
    """Changes to one repository; each method makes one complete thing visible (at once or when the
    transaction ends), or removes one whole, or nothing.

    ``revision`` is set when the transaction has ended without error: the repository revision that
    holds its changes, read while the writer still held the repository (None for a backend without
    revisions). Read after the transaction, ``RepositoryView.revision()`` could name another
    writer's later revision."""

    revision: int | None

    def add_layer(self, digest: Digest, staged: Path) -> Path:
        """Publish ``staged`` (a directory holding ``layerfs``) unless the layer is already there: whole,
        at once or when the transaction ends (CVMFS ingests the layers of one transaction together).

        Returns where the layer's ``layerfs`` can be read while the staging directory lasts (to flatten
        it): the published one, or the staged copy just published where reading the repository back
        is slow (CVMFS, whose files come back through its client)."""

    def add_flat(self, config_digest: Digest, staged: Path, layers: Sequence[Digest] = ()) -> None:
        """Publish ``staged`` as the flat root unless one with this config digest is there.

        ``layers`` are the image's layers (base first, all added or present already) that ``staged``
        was built from: a backend may take their published content instead of reading it again."""

    def point_tag(self, ref: Reference, platform: Platform, config_digest: Digest) -> None:
        """Make the public path of ``ref`` lead to the flat root, replacing any older target (the links
        ``ducc.publish.links.tag_links`` plans)."""

    def write_record(self, ref: Reference, platform: Platform, record: Record) -> None:
        """Write the ``.metadata`` files; ``manifest.json`` last, the mark of a finished conversion."""

    def remove_tag(self, ref: Reference, platform: Platform) -> None:
        """Unpublish ``ref``: its record (``manifest.json`` first, so it stops counting as converted at
        once) and its tag link go together. Nothing there is no error."""

    def remove_layer(self, digest: Digest) -> None:
        """Remove the layer, whole; nothing there is no error."""

    def remove_flat(self, config_digest: Digest) -> None:
        """Remove the flat root, whole; nothing there is no error."""


class Committer(Protocol):
    """What makes changes visible in one repository."""

    def transaction(self) -> AbstractContextManager[Transaction]:
        """Exclusive write access to the repository (serialised with other writers, on every host).
        Holding it, what a dead writer left is cleared first (``recover``'s step); the changes become
        visible as each ``Transaction`` method says, and all of them once the block ends without error."""
        ...

    def recover(self) -> None:
        """The one explicit step that clears what a writer that died left behind: staging debris, and on
        CVMFS a transaction it left open (aborted while holding the repository: holding it, an open
        transaction can only be a dead writer's). Cheap when there is nothing to clear. Use cases call
        it where they start (a conversion's first step, garbage collection, unpublishing)."""
        ...


class Reservations(Protocol):
    """Staging directories, and what the conversions staging in them reserve (``ducc.publish.staging``)."""

    def directory(self) -> AbstractContextManager[Path]:
        """A private scratch directory, removed on exit, on the filesystem where trees get built.
        Staging left by crashed writers is swept first."""
        ...

    def sweep(self) -> int:
        """Remove staging left by crashed writers (never a live one's); returns how many directories."""
        ...

    def reserve(self, stage: Path, digests: Iterable[Digest]) -> None:
        """Declare that the conversion staging in ``stage`` is going to reuse or publish these layers and
        flat root: garbage collection keeps them while ``stage`` lives. Call it before looking whether
        they exist; it waits while a sweep holds the reservations (``frozen``)."""
        ...

    def reserved(self) -> frozenset[Digest]:
        """What live conversions reserve now: a snapshot, for a plan that removes nothing."""
        ...

    def frozen(self) -> AbstractContextManager[frozenset[Digest]]:
        """What live conversions reserve; no reservation can be made until the block ends (garbage
        collection holds it until its transaction, and so its removals, have ended)."""
        ...


class GcStateStore(Protocol):
    """The garbage-collection state (``ducc.gc.GcState``), an opaque document."""

    def read_gc_state(self) -> bytes | None:
        """The state last written; None if none."""
        ...

    def write_gc_state(self, data: bytes) -> None:
        """Replace the state, atomically. Written while holding the repository's transaction; a writer
        whose lease has lapsed stops (``LeaseLost``) where the state lives in the repository."""
        ...


class Publisher(Committer, Protocol):
    """A repository that images are published into: a committer with its reader, its reservations and
    its gc state."""

    @property
    def reader(self) -> RepositoryView:
        """The repository, read as this writer should: the published state, and inside its own
        transaction what the transaction wrote so far."""
        ...

    @property
    def reservations(self) -> Reservations: ...

    @property
    def gc_state(self) -> GcStateStore: ...
