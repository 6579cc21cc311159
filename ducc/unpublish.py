"""The use case: unpublishing tags (``ducc rm`` and the service's optional policies, docs/design.md §11).

Unpublishing removes a tag's link and its ``.metadata`` record, together (the record first, so the
image stops counting as converted before anything else goes); the flat root and layers it used stay
until garbage collection finds them unreferenced for its grace period, so jobs running from them
keep running.

``unpublish`` does what the operator asks. ``unpublish_if_gone`` is for policies that act on what a
registry says: only a clean 404 of the tag's manifest means the tag is gone. A timeout, a 5xx, a
429 or an authentication failure raises (``error.temporary`` says whether a retry may help) and
unpublishes nothing; a tag that the registry serves again is kept; so is one that was converted
anew while the registry was asked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish import Publisher
from ducc.publish.sinks import ImageSink, tell
from ducc.registry.client import RegistryClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unpublished:
    """What happened to one tag: ``outcome`` is unpublished, not published, or kept (then ``why``)."""

    reference: Reference
    platform: Platform
    path: Path
    outcome: str
    why: str = ""
    served: Digest | None = None


def unpublish(publisher: Publisher, targets: Sequence[tuple[Reference, Platform]],
              sinks: Sequence[ImageSink] = ()) -> list[Unpublished]:
    """Unpublish every (reference, platform) in one transaction; one that is not published is reported so.
    What a dead writer left is cleared first (``recover``). Then the stores beside the repository
    (``sinks``) drop them; what they did is in ``why``."""
    out = []
    view = publisher.reader
    publisher.recover()
    with publisher.transaction() as txn:
        for ref, platform in targets:
            path = view.public_path(ref, platform)
            if not view.is_published(ref, platform):
                out.append(Unpublished(ref, platform, path, "not published"))
                continue
            txn.remove_tag(ref, platform)
            out.append(Unpublished(ref, platform, path, "unpublished"))
    out = [_told(sinks, done) for done in out]
    for done in out:
        log.info("%s (%s): %s%s", done.reference, done.platform, done.outcome, f" ({done.why})" if done.why else "")
    return out


def _told(sinks: Sequence[ImageSink], done: Unpublished) -> Unpublished:
    """``done``, once every store beside the repository dropped its tag (what they did added to ``why``;
    a store's failure is reported there and logged, and never keeps the tag published)."""
    if done.outcome != "unpublished":
        return done
    lines = tell(sinks, f"removing {done.reference}", lambda sink: sink.unpublished(done.reference, done.platform))
    return replace(done, why="; ".join([done.why, *lines] if done.why else lines)) if lines else done


def unpublish_if_gone(client: RegistryClient, publisher: Publisher, ref: Reference, platform: Platform,
                      sinks: Sequence[ImageSink] = ()) -> Unpublished:
    """Unpublish ``ref`` only if the registry answers its manifest with 404; see the module docstring.

    The registry is asked outside the repository transaction (its retries may take a while); under it,
    the record is compared with the one seen before asking, so an image converted meanwhile (a push
    after the delete) is kept. Reading takes no lock; what a dead writer left is cleared (``recover``)
    only before an unpublishing.
    """
    view = publisher.reader
    path = view.public_path(ref, platform)
    before = view.read_record(ref, platform)
    if before is None and not view.is_published(ref, platform):
        return Unpublished(ref, platform, path, "not published")
    served = client.served(ref)  # raises on anything but a clean answer
    if served is not None:
        log.info("%s (%s) kept: the registry still serves it (%s)", ref, platform, served.short)
        return Unpublished(ref, platform, path, "kept", f"the registry still serves it at {served}", served)
    publisher.recover()
    with publisher.transaction() as txn:
        now = view.read_record(ref, platform)
        if (now is None) != (before is None) or (now is not None and before is not None
                                                 and now.files() != before.files()):
            log.info("%s (%s) kept: converted again while the registry was asked", ref, platform)
            return Unpublished(ref, platform, path, "kept", "converted again while the registry was asked")
        txn.remove_tag(ref, platform)
    done = _told(sinks, Unpublished(ref, platform, path, "unpublished", "the registry answers 404 for its manifest"))
    log.info("%s (%s) unpublished: %s", ref, platform, done.why)
    return done
