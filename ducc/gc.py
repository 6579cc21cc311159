"""The use case: garbage collection, a mark and sweep over a repository's own state (docs/design.md §11).

Reachable: every flat root that a public path (a tag, a digest path, ``.multiarch/...``) leads to,
and every layer that the record of such a path lists. Everything else present under ``.layers`` and
``.flat`` is a candidate. A candidate is deleted once it has been unreferenced for the grace period,
measured from the moment ducc first saw it unreferenced (recorded in the gc state, never a file's
own mtime): with grace ``g`` it goes at the first run where ``now - since >= g``, so ``--grace 0``
deletes what is unreferenced in the run that first sees it. A candidate that is reachable again, or
reserved by a conversion in progress, loses its entry (its life starts over); when it becomes
unreferenced again it gets a new time.

Safe beside conversions: a conversion reserves the layers and the flat root it is going to reuse or
publish before it looks whether they exist (``Reservations.reserve``). The sweep reads reachability,
reservations and the state again while it holds the repository transaction, and holds the
reservations frozen (``Reservations.frozen``) from then until the transaction, and so its removals,
have ended; so whatever a conversion is about to use is either seen as reserved, or found missing by
that conversion and built again.

The planning is pure (``plan``, ``Collection.lines``); ``survey`` and ``collect`` do the reading
and removing, through the protocols of ``ducc.publish`` only (``survey`` needs a ``TreeReader``,
``collect`` a whole ``Publisher``): nothing here knows the backend. Sizes are
those of the files under each tree as readers see them (on a directory root a file that a flat root
hardlinks from a layer frees its space only when the last of them goes). A tree's content never
changes, so its size is measured once and kept in the state.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import PurePosixPath

from ducc import layout
from ducc.errors import InvalidDigest
from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish import Publisher, TreeReader
from ducc.publish.sinks import ImageSink, tell
from ducc.tree import TreeSize

log = logging.getLogger(__name__)

STATE_VERSION = 1


class Kind(StrEnum):
    LAYER = "layer"
    FLAT = "flat"


@dataclass(frozen=True, order=True)
class Item:
    """A tree garbage collection may delete: a layer or a flat root, by its digest."""

    kind: Kind
    digest: Digest

    def __str__(self) -> str:
        return f"{self.kind} {self.digest}"

    @classmethod
    def parse(cls, text: str) -> Item:
        kind, _, digest = text.partition(" ")
        return cls(Kind(kind), Digest.parse(digest))


@dataclass(frozen=True)
class Survey:
    """What the repository holds, what of it is reachable, and what conversions in progress reserve."""

    present: frozenset[Item]
    reachable: frozenset[Item]
    in_use: frozenset[Item] = frozenset()


@dataclass(frozen=True)
class GcState:
    """When each candidate was first seen unreferenced (seconds since the epoch), and measured sizes."""

    unreferenced: Mapping[Item, float] = field(default_factory=dict)
    sizes: Mapping[Item, TreeSize] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes | None) -> GcState:
        """The state ``dump`` wrote. An unreadable state is an empty one (logged): that only starts
        every candidate's grace again, it never shortens one."""
        if not data:
            return cls()
        try:
            raw = json.loads(data)
            unreferenced = {Item.parse(k): float(v) for k, v in raw.get("unreferenced", {}).items()}
            sizes = {Item.parse(k): TreeSize(int(v[0]), int(v[1])) for k, v in raw.get("sizes", {}).items()}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, InvalidDigest) as exc:
            log.warning("ignoring an unreadable gc state (every candidate's grace starts now): %s", exc)
            return cls()
        return cls(unreferenced, sizes)

    def dump(self) -> bytes:
        return (json.dumps({
            "version": STATE_VERSION,
            "unreferenced": {str(item): since for item, since in sorted(self.unreferenced.items())},
            "sizes": {str(item): [size.entries, size.bytes] for item, size in sorted(self.sizes.items())},
        }, indent=0) + "\n").encode()


@dataclass(frozen=True)
class Waiting:
    item: Item
    since: float
    until: float


@dataclass(frozen=True)
class Plan:
    """What one run deletes and keeps, and the state to record for the next."""

    now: float
    grace: int
    delete: tuple[tuple[Item, float], ...]  # (item, unreferenced since), in order
    waiting: tuple[Waiting, ...]  # soonest first
    reachable: frozenset[Item]  # present and reachable
    in_use: frozenset[Item]  # present, not reachable, reserved by a conversion in progress
    state: GcState


def plan(survey: Survey, state: GcState, now: float, grace: int) -> Plan:
    """Decide from ``survey`` and the previous ``state``; pure."""
    reachable = survey.present & survey.reachable
    in_use = (survey.present & survey.in_use) - reachable
    candidates = sorted(survey.present - reachable - in_use)
    delete: list[tuple[Item, float]] = []
    waiting: list[Waiting] = []
    unreferenced: dict[Item, float] = {}
    for item in candidates:
        since = state.unreferenced.get(item, now)
        if now - since >= grace:
            delete.append((item, since))
        else:
            waiting.append(Waiting(item, since, since + grace))
            unreferenced[item] = since
    gone = {item for item, _ in delete}
    sizes = {item: size for item, size in state.sizes.items() if item in survey.present and item not in gone}
    waiting.sort(key=lambda w: (w.until, w.item))
    return Plan(now, grace, tuple(delete), tuple(waiting), frozenset(reachable), frozenset(in_use),
                GcState(unreferenced, sizes))


@dataclass(frozen=True)
class Collection:
    """One run's outcome: its plan, the sizes it knew, and whether it changed anything (not a dry run)."""

    plan: Plan
    sizes: Mapping[Item, TreeSize]
    present: frozenset[Item]
    dry_run: bool = False
    beside: tuple[str, ...] = ()  # what the stores beside the repository dropped, or their failures

    @property
    def deleted(self) -> tuple[Item, ...]:
        return tuple(item for item, _ in self.plan.delete)

    def size(self, item: Item) -> TreeSize:
        return self.sizes.get(item, TreeSize())

    @property
    def freed(self) -> TreeSize:
        return sum((self.size(item) for item in self.deleted), TreeSize())

    def deleted_of(self, kind: Kind) -> int:
        return sum(1 for item in self.deleted if item.kind == kind)

    def holds(self, kind: Kind) -> tuple[int, TreeSize]:
        """How many trees of ``kind`` the repository holds after this run, and their size."""
        left = [item for item in self.present - set(self.deleted) if item.kind == kind]
        return len(left), sum((self.size(item) for item in left), TreeSize())

    def lines(self) -> list[str]:
        """One line per candidate: deleted (or would be), waiting until when, or kept because in use."""
        verb = "would delete" if self.dry_run else "deleted"
        out = []
        for item, since in self.plan.delete:
            size = self.size(item)
            out.append(f"{verb}  {item.kind:<5} {item.digest}  {size.entries} entries, {size.bytes} bytes  "
                       f"(unreferenced since {when(since)})")
        for wait in self.plan.waiting:
            out.append(f"waiting  {wait.item.kind:<5} {wait.item.digest}  until {when(wait.until)}  "
                       f"(unreferenced since {when(wait.since)})")
        for item in sorted(self.plan.in_use):
            out.append(f"in use   {item.kind:<5} {item.digest}  reserved by a conversion in progress")
        return out + list(self.beside)

    def summary(self) -> str:
        freed = self.freed
        deleted = (f"{'would delete' if self.dry_run else 'deleted'} {_count(self.deleted_of(Kind.FLAT), 'flat root')}"
                   f" and {_count(self.deleted_of(Kind.LAYER), 'layer')}"
                   f" ({freed.entries} entries, {freed.bytes} bytes = {human_bytes(freed.bytes)}"
                   f"{' to free' if self.dry_run else ' freed'})")
        waiting = f"{len(self.plan.waiting)} waiting" + (
            f", the first until {when(self.plan.waiting[0].until)}" if self.plan.waiting else "")
        reachable = self.plan.reachable
        kept = (f"kept {_count(sum(1 for i in reachable if i.kind == Kind.FLAT), 'flat root')} and "
                f"{_count(sum(1 for i in reachable if i.kind == Kind.LAYER), 'layer')} reachable, "
                f"{len(self.plan.in_use)} in use")
        flats, flat_size = self.holds(Kind.FLAT)
        layers, layer_size = self.holds(Kind.LAYER)
        holds = (f"the repository {'would hold' if self.dry_run else 'holds'} {_count(flats, 'flat root')} "
                 f"({human_bytes(flat_size.bytes)}) and {_count(layers, 'layer')} ({human_bytes(layer_size.bytes)})")
        return f"gc{' --dry-run' if self.dry_run else ''} (grace {self.plan.grace}s): {deleted}; {waiting}; {kept}; {holds}"


def when(ts: float) -> str:
    """An absolute time, in UTC (the service's schedules are in UTC too)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- reading and removing (through the protocols of ducc.publish) ------------------------------------


def survey(view: TreeReader, reserved: Iterable[Digest] = ()) -> Survey:
    """Read what the repository holds and what of it is reachable; ``reserved`` are the digests
    conversions in progress reserved (a digest reserves the layer or flat root it names)."""
    present = {Item(Kind.LAYER, d) for d in view.layers()} | {Item(Kind.FLAT, d) for d in view.flats()}
    reachable: set[Item] = set()
    root = view.location
    for link, target in view.published():
        digest = layout.tree_digest(PurePosixPath(os.path.relpath(target, root)), layout.FLAT)
        if digest is not None:
            reachable.add(Item(Kind.FLAT, digest))
        record = view.read_record_at(link)
        if record is not None:
            reachable.update(Item(Kind.LAYER, d) for d in record.layers)
    in_use = {Item(kind, d) for d in reserved for kind in Kind}
    return Survey(frozenset(present), frozenset(reachable), frozenset(in_use))


def measure_missing(view: TreeReader, items: Iterable[Item], known: Mapping[Item, TreeSize]) -> dict[Item, TreeSize]:
    """``known`` plus the size of every item in ``items`` not in it."""
    sizes = dict(known)
    for item in items:
        if item not in sizes:
            sizes[item] = view.layer_size(item.digest) if item.kind == Kind.LAYER else view.flat_size(item.digest)
    return sizes


def collect(
    publisher: Publisher, *, grace: int, dry_run: bool = False, clock: Callable[[], float] = time.time,
    sinks: Sequence[ImageSink] = (),
) -> Collection:
    """Run garbage collection on ``publisher``'s repository (``dry_run``: plan only, change nothing).

    A dry run reads the published state only (no lock, no recovery). Otherwise what a dead writer left
    is cleared first (``recover``); trees not measured before are measured, outside the repository
    transaction; then, holding it (the lease), the reservations are frozen, reachability, reservations
    and the state are read again, the plan is made, its removals are done and the new state is
    written; the reservations thaw once the transaction has ended. Last, each store beside the
    repository (``sinks``) keeps only what is published (``Collection.beside`` says what they did; a
    store's failure is a line there, never the collection's).
    """
    view, reservations, store = publisher.reader, publisher.reservations, publisher.gc_state
    state = GcState.parse(store.read_gc_state())
    if dry_run:
        found = survey(view, reservations.reserved())
        sizes = measure_missing(view, found.present, state.sizes)
        return Collection(plan(found, replace(state, sizes=sizes), clock(), grace), sizes, found.present, True)
    publisher.recover()
    present = [Item(Kind.LAYER, d) for d in view.layers()] + [Item(Kind.FLAT, d) for d in view.flats()]
    sizes = measure_missing(view, present, state.sizes)
    log.info("gc of %s: %d layers and %d flat roots present; taking the repository", view.name,
             sum(1 for i in present if i.kind == Kind.LAYER), sum(1 for i in present if i.kind == Kind.FLAT))
    with ExitStack() as thawed_after, publisher.transaction() as txn:
        # From here until the transaction has ended (its removals done), nothing can be reserved.
        reserved = thawed_after.enter_context(reservations.frozen())
        state = GcState.parse(store.read_gc_state())
        found = survey(view, reserved)
        sizes = measure_missing(view, found.present, sizes)
        decided = plan(found, replace(state, sizes={i: s for i, s in sizes.items() if i in found.present}),
                       clock(), grace)
        for item, _ in decided.delete:
            if item.kind == Kind.FLAT:
                txn.remove_flat(item.digest)
        for item, _ in decided.delete:  # then the layers
            if item.kind == Kind.LAYER:
                txn.remove_layer(item.digest)
        store.write_gc_state(decided.state.dump())
    beside = tell(sinks, "collecting", lambda sink: sink.collect(lambda: published_images(view)))
    return Collection(decided, sizes, found.present, beside=tuple(beside))


def published_images(view: TreeReader) -> Iterator[tuple[Reference, Platform]]:
    """The reference and platform of every record a public path leads to (records without them, written
    by CVMFS's DUCC, are left out)."""
    for link, _ in view.published():
        record = view.read_record_at(link)
        details = record.details if record is not None else {}
        if details.get("reference") and details.get("platform"):
            yield Reference.parse(str(details["reference"])), Platform.parse(str(details["platform"]))
