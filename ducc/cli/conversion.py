"""The verbs that convert in the foreground: ``convert``, ``sync``, ``check-wishlist``."""

from __future__ import annotations

import argparse
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ducc import layout
from ducc.cli.arguments import platform_arg, platform_of, services, thin_target, with_repository
from ducc.cli.exits import summary
from ducc.errors import DuccError
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest
from ducc.publish import backends
from ducc.settings import Settings

log = logging.getLogger("ducc")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("convert", help="convert images now", description="Pull, unpack and publish images.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. ubuntu:24.04, ghcr.io/org/img:tag, reg:5000/a/b@sha256:…")
    with_repository(p)
    p.add_argument("--platform", type=platform_arg, help="os/arch[/variant] to take from multi-arch images (default: $DUCC_PLATFORM or linux/amd64)")
    p.add_argument("--force", action="store_true", help="convert even if the tag is already published at this digest")
    p.add_argument("--thin", metavar="OUTPUT_REF", help="also push a thin image there (after publishing), e.g. "
                   "reg.example.org/thin/app:1 or an output_format like '$(scheme)://reg/thin/$(image)'")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("sync", help="convert everything a wishlist asks for",
                       description="Expand the wishlist (tag globs against the registry) and convert what changed. "
                       "Failures are listed at the end; the exit status is 1 if any image failed.")
    p.add_argument("wishlist", help="wishlist.yaml (DUCC recipe v1)")
    with_repository(p)
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("check-wishlist", help="validate a wishlist and print what it would convert")
    p.add_argument("wishlist")
    p.add_argument("--no-expand", action="store_true", help="do not ask registries for tags")
    p.set_defaults(func=cmd_check_wishlist)


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    refs = [Reference.parse(text) for text in args.images]  # a bad one is a usage error, before any work
    built = services(args, settings)
    built.publisher  # noqa: B018  # a root that cannot be created or written: one error, before any work
    built.check_stores()  # the same for a store beside it (--podman-store)
    wanted = platform_of(args, settings)
    failures = []
    thin_of: dict[Reference, Reference] = {}  # thin target -> the image pushed there
    for text, ref in zip(args.images, refs, strict=True):
        try:
            thin = thin_target(args.thin, ref, thin_of)
            result = built.converter.run(ConversionRequest(ref, wanted, thin=thin), force=args.force)
        except DuccError as exc:
            if len(args.images) > 1:
                log.error("%s: %s", text, exc)
            failures.append((text, str(exc)))
            continue
        print(f"{result.state}\t{built.view.public_path(ref, wanted)}")
        if result.thin is not None:
            print(f"thin\t{result.thin}")
    return summary(len(args.images), failures)


def _load_wishlist(path: str | Path):  # type: ignore[no-untyped-def]
    from ducc.wishlist import read

    return read(Path(path))


def _wishlist_repository(settings: Settings, repo: str) -> Settings:
    """The wishlist's ``cvmfs_repo``, where no backend was asked for (``--root``/``DUCC_ROOT``,
    ``--cvmfs-repo``/``DUCC_CVMFS_REPO``, ``DUCC_PUBLISHER``) and this machine is its publisher."""
    if backends.asked_for(settings):
        return settings
    repository = repo.partition("/")[0]
    mount = settings.cvmfs.mount or Path("/cvmfs") / repository
    if shutil.which(settings.cvmfs.server) and mount.is_dir():
        log.info("publishing into %s, the wishlist's cvmfs_repo", repo)
        return settings.with_cvmfs_repo(repo)
    log.info("the wishlist names cvmfs_repo %s, but this machine is not its publisher (no %s or no %s); "
             "publishing into the directory root %s", repo, settings.cvmfs.server, mount, settings.root)
    return settings


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.sync import sync
    from ducc.wishlist import wishlist_origin

    wishes = _load_wishlist(args.wishlist)
    if wishes.cvmfs_repo:
        settings = _wishlist_repository(settings, wishes.cvmfs_repo)
    built = services(args, settings)
    built.publisher  # noqa: B018  # a root that cannot be created or written: one error, before any work
    built.check_stores()  # the same for a store beside it (--podman-store)
    report = sync(wishes, built.client, built.converter.run, concurrency=settings.sync.concurrency,
                  per_registry=settings.sync.registry_concurrency, origin=wishlist_origin(args.wishlist))
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.state] = counts.get(result.state, 0) + 1
    print(
        f"synced {len(report.results) + len(report.failures)} images: "
        + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        + (f", {len(report.failures)} failed" if report.failures else "")
    )
    return summary(len(report.results) + len(report.failures), report.failures)


def cmd_check_wishlist(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.sync import SyncReport, plan

    wishes = _load_wishlist(args.wishlist)
    print(f"wishlist OK: version {wishes.version}, {len(wishes.wishes)} entries"
          + (f", repository {wishes.cvmfs_repo}" if wishes.cvmfs_repo else ""))
    if args.no_expand:
        for wish in wishes.wishes:
            print(f"  {wish.text}  ->  {', '.join(map(str, wish.platforms))}")
        return 0
    client = services(args, settings).client
    report = SyncReport()
    work = plan(wishes, client, report)
    unexpanded = len(report.failures)

    def check(item: tuple[Reference, Platform]) -> str:
        ref, platform = item
        try:
            state = client.resolve(ref).short
        except DuccError as exc:
            report.failures.append((str(ref), str(exc)))
            state = "UNAVAILABLE"
        return f"  {ref}\t{platform}\t{state}\t{layout.tag_link(ref, platform)}"

    with ThreadPoolExecutor(max_workers=max(1, settings.sync.concurrency)) as pool:
        for line in pool.map(check, work):
            print(line)
    print(f"{len(work)} images would be kept converted")
    return summary(len(work) + unexpanded, report.failures)
