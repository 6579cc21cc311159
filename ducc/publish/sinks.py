"""Stores written beside the repository (podman's additional image store): the ``ImageSink`` seam.

A sink follows the repository: the converter tells it what it published (and what it found already
published), ``ducc rm`` what it unpublished, ``ducc gc`` what is still published. The repository is
the truth and is always written first; a sink is told afterwards, so a crash in between leaves the
sink behind, never ahead: the next conversion of the image (even one that finds it unchanged) tells
it again, and the sink adds what it misses; a sync that finds the image current asks the sinks too
(``holding``), so one that misses it gets a conversion that fills it in. A sink's failure never
undoes or fails the repository's change: ``tell`` logs it and returns it as a line for the caller's
report (docs/design.md §8 and §13, docs/podman.md).

Sinks are built by the composition root from the ``Store`` rows of ``ducc.publish.backends``; the
use cases only call them through this protocol, whichever they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish import TreeReader
from ducc.record import Record

log = logging.getLogger(__name__)

# What is published now, read when a sink asks (under its own lock): (reference, platform) of each record.
Published = Callable[[], Iterable[tuple[Reference, Platform]]]


class ImageSink(Protocol):
    """A store that holds what the repository publishes. Each call returns what it changed, in a few
    words (None: nothing to change), and raises on failure."""

    @property
    def name(self) -> str:
        """How reports name it (``podman store /srv/podmanStore``)."""
        ...

    def holds(self, ref: Reference, platform: Platform, record: Record) -> bool:
        """Whether the sink holds ``ref`` on ``platform`` as ``record`` says, or has no business with it (a
        cheap look: a sync asks it of every image it finds current)."""
        ...

    def published(self, ref: Reference, platform: Platform, record: Record, view: TreeReader) -> str | None:
        """``ref`` on ``platform`` is published as ``record`` says (its layers readable through ``view``):
        hold it, unless the sink holds it already. Called after the record is written, and again each
        time the image is found unchanged."""
        ...

    def unpublished(self, ref: Reference, platform: Platform) -> str | None:
        """``ref`` on ``platform`` was unpublished: drop it."""
        ...

    def collect(self, published: Published) -> str | None:
        """Keep only what ``published`` lists (asked under the sink's own lock, so an image published
        meanwhile is kept) and drop what nothing uses any more."""
        ...


def tell(sinks: Sequence[ImageSink], what: str, call: Callable[[ImageSink], str | None]) -> list[str]:
    """``call`` every sink; one line per sink that changed something or failed (``<sink>: <what>``). A
    failure is logged here with ``what`` was being done and never raised: the repository's change stands."""
    lines = []
    for sink in sinks:
        try:
            done = call(sink)
        except Exception as exc:  # whatever the store's failure, the repository is not to pay for it
            line = f"{sink.name}: failed ({what}): {' '.join(str(exc).split()) or type(exc).__name__}"
            log.warning("%s; the repository is unchanged by it", line)
            lines.append(line)
            continue
        if done:  # the caller reports it (a progress line, gc's output, the unpublish's why)
            log.debug("%s: %s", sink.name, done)
            lines.append(f"{sink.name}: {done}")
    return lines


def holding(sinks: Sequence[ImageSink], ref: Reference, platform: Platform, record: Record) -> bool:
    """Whether every sink holds ``ref`` as ``record`` says. A sink that cannot tell (it fails) counts as
    holding it: it is logged, and the next conversion of the image reports it, rather than every sync
    converting the image again for it."""
    for sink in sinks:
        try:
            if not sink.holds(ref, platform, record):
                return False
        except Exception as exc:  # a broken store is reported where the image is converted, not here
            log.warning("%s: cannot tell whether it holds %s: %s", sink.name, ref, " ".join(str(exc).split()))
    return True
