"""The use case: a wishlist → the conversions it needs.

Every wish is expanded (tag globs against the registry's tag list, one listing
per repository), then each (reference, platform) is converted; an unchanged
tag costs one manifest HEAD. A failure of one image is recorded and the others
go on; the report lists every outcome, and what the wishlist asked for.

Conversions a wishlist asks for carry its ``origin`` (``wishlist <absolute path>``),
which their records keep; ``removed_wishes`` finds the tags a wishlist published
that it no longer asks for (the service's optional DUCC_UNPUBLISH_REMOVED_WISHES).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from ducc.errors import DuccError
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest, ConversionResult
from ducc.record import Record
from ducc.registry.client import RegistryClient
from ducc.wishlist import Wishlist

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    results: list[ConversionResult] = field(default_factory=list)
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (image, what happened)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    planned: list[tuple[Reference, Platform]] = field(default_factory=list)  # everything the wishlist asked for
    unexpanded: list[str] = field(default_factory=list)  # wishes whose tags could not be listed


def plan(wishlist: Wishlist, client: RegistryClient, report: SyncReport) -> list[tuple[Reference, Platform]]:
    """Every (reference, platform) the wishlist asks for now; expansion failures go to ``report``."""
    tags_of: dict[tuple[str, str], list[str]] = {}
    work: list[tuple[Reference, Platform]] = []
    seen = set()
    for wish in wishlist.wishes:
        tags: list[str] = []
        if wish.is_pattern:
            key = (wish.registry, wish.repository)
            if key not in tags_of:
                try:
                    tags_of[key] = client.list_tags(wish.repository_reference)
                except DuccError as exc:
                    report.failures.append((wish.text, f"cannot list tags: {exc}"))
                    report.unexpanded.append(wish.text)
                    continue
            tags = tags_of[key]
            if not wish.expand(tags):
                log.warning("%s matches no tag", wish.text)
        for ref in wish.expand(tags):
            for platform in wish.platforms:
                if (str(ref), platform) not in seen:
                    seen.add((str(ref), platform))
                    work.append((ref, platform))
    return work


def check_all(
    wishlist: Wishlist,
    client: RegistryClient,
    check: Callable[[Reference, Platform], str],
    *,
    per_registry: int = 8,
    total: int = 16,
) -> SyncReport:
    """Run ``check`` for every planned image: at most ``per_registry`` at once against one registry
    (registries rate-limit), ``total`` at once overall. One image failing never stops the others."""
    report = SyncReport()
    work = plan(wishlist, client, report)
    report.planned = list(work)
    log.info("wishlist: %d images to check", len(work))
    limits: dict[str, threading.BoundedSemaphore] = {}
    for ref, _ in work:
        limits.setdefault(ref.api_host, threading.BoundedSemaphore(max(1, per_registry)))
    lock = threading.Lock()

    def one(item: tuple[Reference, Platform]) -> None:
        ref, platform = item
        try:
            with limits[ref.api_host]:
                outcome = check(ref, platform)
            with lock:
                report.outcomes.append((f"{ref} ({platform})", outcome))
        except DuccError as exc:
            log.error("%s (%s): %s", ref, platform, exc)
            with lock:
                report.failures.append((f"{ref} ({platform})", str(exc)))
        except KeyboardInterrupt:
            raise  # Ctrl-C: the client stopped every transfer (``TransferInterrupted``); not an image's failure
        except Exception as exc:  # one broken image must not stop the others
            log.exception("%s (%s): unexpected error", ref, platform)
            with lock:
                report.failures.append((f"{ref} ({platform})", f"{exc.__class__.__name__}: {exc}"))

    with ThreadPoolExecutor(max_workers=max(1, total)) as pool:
        list(pool.map(one, work))
    return report


def sync(
    wishlist: Wishlist,
    client: RegistryClient,
    run: Callable[[ConversionRequest], ConversionResult],
    *,
    concurrency: int = 4,
    per_registry: int = 8,
    origin: str | None = None,
) -> SyncReport:
    """Convert what changed, inline (the ``ducc sync`` command); the service queues instead (``ducc.service.tasks``).

    Each image's request is the wishlist's: with the thin image its ``output_format`` names, if any,
    and ``origin`` (who asks, kept in the record).
    """
    results: list[ConversionResult] = []
    lock = threading.Lock()

    def check(ref: Reference, platform: Platform) -> str:
        result = run(replace(wishlist.request(ref, platform), origin=origin))
        with lock:
            results.append(result)
        return result.state

    report = check_all(wishlist, client, check, per_registry=per_registry, total=concurrency)
    report.results = results
    return report


def removed_wishes(
    published: Iterable[tuple[str, Record | None]], origin: str, planned: Iterable[tuple[Reference, Platform]]
) -> list[tuple[Reference, Platform]]:
    """The (reference, platform) of every published record that ``origin`` asked for and ``planned`` (the
    wishlist's full expansion now) no longer lists; each once. Records of others, or without the
    reference and platform ducc writes, are never named. The caller makes sure ``planned`` is complete:
    a wish whose tags could not be listed would make its tags look removed."""
    wanted = {(str(ref), str(platform)) for ref, platform in planned}
    found: dict[tuple[str, str], tuple[Reference, Platform]] = {}
    for _, record in published:
        if record is None or record.requested_by != origin:
            continue
        text, platform = record.details.get("reference"), record.details.get("platform")
        if not text or not platform:
            continue
        try:
            ref, plat = Reference.parse(str(text)), Platform.parse(str(platform))
        except ValueError:
            continue
        key = (str(ref), str(plat))
        if key not in wanted and key not in found:
            found[key] = (ref, plat)
    return list(found.values())
