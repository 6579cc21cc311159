"""The verbs that read or tidy the repository: ``list``, ``inspect``, ``rm``, ``gc``, ``doctor``."""

from __future__ import annotations

import argparse
import json
import sys

from ducc import layout
from ducc.cli.arguments import duration_arg, platform_arg, platform_of, services, with_repository
from ducc.cli.exits import EXIT_FAILED, EXIT_OK
from ducc.errors import NotFound
from ducc.model.reference import Reference
from ducc.publish import RepositoryView, backends
from ducc.settings import Settings
from ducc.terminal import printable


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("list", help="list published images")
    with_repository(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("inspect", help="show a published image: config, layers, paths")
    p.add_argument("image")
    with_repository(p)
    p.add_argument("--platform", type=platform_arg)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "rm", help="unpublish images (the tag link and its record, at once)",
        description="Unpublish each IMAGE: its tag link and .metadata record go together, in one transaction. "
        "Its flat root and layers stay until 'ducc gc' finds them unreferenced for the grace period. "
        "Exit status 1 if an IMAGE was not published.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    with_repository(p)
    p.add_argument("--platform", type=platform_arg, help="os/arch[/variant] (default: $DUCC_PLATFORM or linux/amd64)")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser(
        "gc", help="delete flat roots and layers no published image uses, after a grace period",
        description="Mark and sweep: every flat root a published path leads to, and every layer its record "
        "lists, is kept; everything else under .flat and .layers is deleted once ducc has seen it unreferenced "
        "for the grace period (jobs keep running from a tag's old target meanwhile). Prints one line per "
        "deleted, waiting or in-use tree and a summary. On CVMFS, reclaiming the object store is then "
        "'cvmfs_server gc', a separate step.")
    with_repository(p)
    p.add_argument("--grace", type=duration_arg, metavar="DURATION",
                   help="how long a tree stays once unreferenced: seconds (0 included) or 90s, 30m, 12h, 7d "
                   "(default: $DUCC_GC_GRACE or 7d)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("doctor", help="check a CVMFS publisher: the command, the mount, the revision, a transaction",
                       description="One line per check: cvmfs_server found, the repository mounted, its revision "
                       "readable, a throw-away transaction opened and aborted. Exit status 0 only when all hold.")
    backends.add_options(p, [backend for backend in backends.BACKENDS if backend.doctor], beside=())
    p.set_defaults(func=cmd_doctor)


def _existing(view: RepositoryView) -> RepositoryView:
    """``view``, if its repository exists; a missing one is a one-line error (reading never creates it)."""
    if not view.exists():
        raise NotFound(f"no repository at {view.location} (nothing was ever published there)")
    return view


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    view = _existing(services(args, settings).view)
    for path, flat in sorted(view.published()):
        print(f"{printable(str(path))}\t{flat.name[:12] if flat.exists() else '(dangling)'}")
    return 0


def _additions(raw: bytes | None) -> list[str]:
    try:
        return list(json.loads(raw)["added"]) if raw else []
    except (ValueError, KeyError, TypeError):
        return []


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    ref = Reference.parse(args.image)
    view = _existing(services(args, settings).view)
    platform = platform_of(args, settings)
    record = view.read_record(ref, platform)
    if record is None:
        print(f"ducc: {ref} ({platform}) is not published in {view.location}", file=sys.stderr)
        return EXIT_FAILED
    container = record.container_config()
    out = {
        "reference": str(ref),
        "platform": str(platform),
        "path": str(view.public_path(ref, platform)),
        "flat": str(view.flat_path(record.config_digest)),
        "tag_digest": str(record.tag_digest) if record.tag_digest else None,
        "config_digest": str(record.config_digest),
        "layers": [
            {"digest": str(d.digest), "size": d.size, "path": str(view.layer_source(d.digest))}
            for d in record.manifest.layers
        ],
        "env": container.get("Env") or [],
        "entrypoint": container.get("Entrypoint"),
        "cmd": container.get("Cmd"),
        "working_dir": container.get("WorkingDir") or "",
        "user": container.get("User") or "",
        "labels": container.get("Labels") or {},
        "converted": record.converted_at,
        "thin_reference": record.thin_reference,
        "thin_digest": str(record.thin_digest) if record.thin_digest else None,
        "added_by_ducc": _additions(view.read_flat_file(record.config_digest, layout.FLAT_ADDITIONS)),
    }
    print(json.dumps(out, indent=2))
    return 0


def cmd_rm(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.unpublish import unpublish

    built = services(args, settings)
    _existing(built.view)  # nothing to unpublish from a repository that is not there (never created)
    platform = platform_of(args, settings)
    targets = [(Reference.parse(text), platform) for text in args.images]  # all parsed before anything goes
    built.check_stores()
    results = unpublish(built.publisher, targets, built.sinks)
    for result in results:
        print(f"{result.outcome}\t{result.path}")
    if any(r.outcome == "unpublished" for r in results):
        print(f"ducc: the flat roots and layers they used go with the first 'ducc gc' after the grace period "
              f"({settings.gc.grace}s, DUCC_GC_GRACE)", file=sys.stderr)
    return 0 if all(r.outcome == "unpublished" for r in results) else 1


def cmd_gc(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.gc import collect

    built = services(args, settings)
    if not built.view.exists():
        print(f"nothing to collect: there is no repository at {built.view.location}")
        return 0
    grace = settings.gc.grace if args.grace is None else args.grace
    if not args.dry_run:  # a dry run changes nothing, in the repository or beside it
        built.check_stores()
    collection = collect(built.publisher, grace=grace, dry_run=args.dry_run, sinks=() if args.dry_run else built.sinks)
    for line in collection.lines():
        print(line)
    print(collection.summary())
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Check this publisher's repository as its backend's doctor does: one line per check, exit 0 only when
    every one holds."""
    doctor = backends.of(settings).doctor
    if doctor is None:
        raise ValueError(backends.DOCTOR_USAGE)
    results = doctor(settings)
    for what, wrong in results:
        print(f"ok    {what}" if wrong is None else f"FAIL  {what}: {' '.join(wrong.split())}")
    return EXIT_OK if all(wrong is None for _, wrong in results) and len(results) == 4 else EXIT_FAILED
