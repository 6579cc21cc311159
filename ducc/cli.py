"""The ``ducc`` command: a thin layer over the library (``ducc.services`` wires it from settings)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ducc import __version__, layout
from ducc.errors import DuccError
from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.progress import LogProgress
from ducc.settings import Settings

log = logging.getLogger("ducc")

EXAMPLES = """\
examples:
  ducc convert ubuntu:24.04 --root /srv/cvmfs/unpacked
  ducc convert 127.0.0.1:5000/team/app:1.2 ghcr.io/org/tool:latest --platform linux/arm64
  ducc check-wishlist wishlist.yaml
  ducc sync wishlist.yaml --root /srv/cvmfs/unpacked
  ducc list --root /srv/cvmfs/unpacked
  ducc serve --root /srv/cvmfs/unpacked --wishlist wishlist.yaml   # everything, one machine
  ducc submit ubuntu:24.04 && ducc status ubuntu:24.04 --wait 600

Settings come from DUCC_* environment variables; see the README.
"""


class TerminalProgress(LogProgress):
    """Stage lines as logs, plus one live line of per-layer bytes on a terminal."""

    def __init__(self, stream=sys.stderr) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.stream = stream
        self.layers: dict[Digest, tuple[int, int | None]] = {}
        self.lock = threading.Lock()
        self.last = 0.0

    def stage(self, ref: Reference, stage: str, detail: str = "") -> None:
        with self.lock:
            self.stream.write("\r\033[K")
            if stage not in ("fetching",):
                self.layers.clear()
        super().stage(ref, stage, detail)

    def layer(self, digest: Digest, done: int, total: int | None) -> None:
        with self.lock:
            self.layers[digest] = (done, total)
            now = time.monotonic()
            if now - self.last < 0.2 and done != total:
                return
            self.last = now
            parts = []
            for d, (got, size) in self.layers.items():
                if size and got >= size:
                    continue
                parts.append(f"{d.short[:8]} {got / 1e6:.1f}/{(size or 0) / 1e6:.1f} MB")
            self.stream.write("\r\033[K  " + " | ".join(parts[:4]))
            self.stream.flush()


def _setup_logging(args: argparse.Namespace, settings: Settings) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else settings.log_level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _progress(args: argparse.Namespace) -> LogProgress:
    return TerminalProgress() if sys.stderr.isatty() and not args.quiet else LogProgress()


def _platform(args: argparse.Namespace, settings: Settings) -> Platform:
    return args.platform or settings.platform


def _platform_arg(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.services import build_converter

    converter = build_converter(settings, root=args.root, progress=_progress(args))
    platform = _platform(args, settings)
    failures = []
    for text in args.images:
        try:
            ref = Reference.parse(text)
            result = converter.convert(ref, platform, force=args.force)
        except DuccError as exc:
            log.error("%s: %s", text, exc)
            failures.append((text, str(exc)))
            continue
        print(f"{result.state}\t{converter.publisher.name}/{result.path}")
    if converter.cache is not None:
        converter.cache.prune()
    return _summary(len(args.images), failures)


def _summary(total: int, failures: list[tuple[str, str]]) -> int:
    if failures:
        print(f"\n{len(failures)} of {total} failed:", file=sys.stderr)
        for what, why in failures:
            print(f"  {what}: {why}", file=sys.stderr)
        return 1
    return 0


def _load_wishlist(path: str):  # type: ignore[no-untyped-def]
    from ducc import wishlist

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DuccError(f"cannot read wishlist {path}: {exc.strerror}") from exc
    return wishlist.load(text)


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.services import build_converter
    from ducc.sync import sync

    wishes = _load_wishlist(args.wishlist)
    converter = build_converter(settings, root=args.root, progress=_progress(args))
    report = sync(wishes, converter.client, converter.convert, concurrency=settings.sync_concurrency,
                  per_registry=settings.registry_concurrency)
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.state] = counts.get(result.state, 0) + 1
    print(
        f"synced {len(report.results) + len(report.failures)} images: "
        + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        + (f", {len(report.failures)} failed" if report.failures else "")
    )
    if converter.cache is not None:
        converter.cache.prune()
    return _summary(len(report.results) + len(report.failures), report.failures)


def cmd_check_wishlist(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.services import build_client
    from ducc.sync import SyncReport, plan

    wishes = _load_wishlist(args.wishlist)
    print(f"wishlist OK: version {wishes.version}, {len(wishes.wishes)} entries"
          + (f", repository {wishes.cvmfs_repo}" if wishes.cvmfs_repo else ""))
    if args.no_expand:
        for wish in wishes.wishes:
            print(f"  {wish.text}  ->  {', '.join(map(str, wish.platforms))}")
        return 0
    client = build_client(settings)
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

    with ThreadPoolExecutor(max_workers=max(1, settings.sync_concurrency)) as pool:
        for line in pool.map(check, work):
            print(line)
    print(f"{len(work)} images would be kept converted")
    return _summary(len(work) + unexpanded, report.failures)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.services import build_publisher

    publisher = build_publisher(settings, args.root)
    for path, flat in sorted(publisher.published()):
        print(f"{path}\t{flat.name[:12] if flat.exists() else '(dangling)'}")
    return 0


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.services import build_publisher

    publisher = build_publisher(settings, args.root)
    ref = Reference.parse(args.image)
    platform = _platform(args, settings)
    record = publisher.read_record(ref, platform)
    if record is None:
        print(f"{ref} ({platform}) is not published in {publisher.name}", file=sys.stderr)
        return 1
    config_raw = publisher.read_record_file(ref, platform, layout.RECORD_CONFIG)
    config = json.loads(config_raw) if config_raw else {}
    container = config.get("config") or {}
    out = {
        "reference": str(ref),
        "platform": str(platform),
        "path": str(publisher.root / layout.tag_link(ref, platform)),
        "flat": str(publisher.root / layout.flat_dir(record.config_digest)),
        "tag_digest": str(record.tag_digest) if record.tag_digest else None,
        "config_digest": str(record.config_digest),
        "layers": [
            {"digest": str(d.digest), "size": d.size, "path": str(publisher.root / layout.layerfs(d.digest))}
            for d in record.manifest.layers
        ],
        "env": container.get("Env") or [],
        "entrypoint": container.get("Entrypoint"),
        "cmd": container.get("Cmd"),
        "working_dir": container.get("WorkingDir") or "",
        "user": container.get("User") or "",
        "labels": container.get("Labels") or {},
        "converted": (record.details or {}).get("converted_at"),
        "added_by_ducc": _additions(publisher.root / layout.flat_dir(record.config_digest)),
    }
    print(json.dumps(out, indent=2))
    return 0


JOB_ID = re.compile(r"^[0-9a-f]{8,16}-[0-9a-f]{10}$")
EXIT_PENDING = 75  # EX_TEMPFAIL: not finished yet


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _broker_settings(settings: Settings) -> Settings:
    """Settings that reach Redis: DUCC_REDIS_URL, or the embedded Redis of a ``ducc serve`` on this machine."""
    if settings.redis_url:
        return settings
    socket = settings.state_dir / "redis" / "redis.sock"
    if socket.exists():
        return dataclasses.replace(settings, redis_url=f"unix://{socket}")
    raise ValueError(f"DUCC_REDIS_URL is not set and no ducc serve runs here (no {socket})")


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.services import build_queue

    queue = build_queue(_broker_settings(settings))
    platform = _platform(args, settings)
    for text in args.images:
        ref = Reference.parse(text)
        submission = queue.submit(str(ref), str(platform), "cli")
        note = f" (coalesced into {submission.into})" if submission.into else ""
        print(f"{ref} ({platform}): job {submission.job_id}{note}", file=sys.stderr)
        print(submission.job_id)
    return 0


def _print_job(job) -> None:  # type: ignore[no-untyped-def]
    print(f"job {job.id}: {job.image} ({job.platform}) from {job.source}: {job.state.upper()}")
    for event in job.events:
        suffix = f" [{event['job']}]" if event.get("job") else ""
        print(f"  {_when(event['at'])}  {event['state']:<11} {event.get('detail', '')}{suffix}")
    if job.bytes:
        print(f"  bytes fetched so far: {job.bytes}")
    if job.error:
        print(f"  error: {job.error}" + (" (temporary)" if job.temporary else ""))
    if job.result.get("path"):
        print(f"  path: {job.result['path']}")


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.services import build_job_store, build_publisher

    jobs = build_job_store(_broker_settings(settings))
    deadline = time.monotonic() + (args.wait or 0)
    platform = _platform(args, settings)
    while True:
        if JOB_ID.match(args.target):
            job = jobs.get(args.target)
        else:
            ref = Reference.parse(args.target)
            found = [j for j in jobs.for_image(str(ref)) if j.platform == str(platform)]
            job = found[0] if found else None
            if job is None:
                record = build_publisher(settings, args.root).read_record(ref, platform)
                if record is not None:
                    print(f"{ref} ({platform}) is published (no job on record): config {record.config_digest.short}")
                    return 0
        if job is None:
            print(f"ducc: no job or published image for {args.target}", file=sys.stderr)
            return 1
        if job.finished or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    _print_job(job)
    if job.state == "published":
        return 0
    return 1 if job.state == "failed" else EXIT_PENDING


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.services import build_job_store

    for job in build_job_store(_broker_settings(settings)).recent_jobs(args.limit):
        took = f"{job.updated_at - job.received_at:7.1f}s"
        print(f"{job.id}  {_when(job.received_at)}  {job.state:<10} {took}  {job.source:<9} {job.image} ({job.platform})"
              + (f"  -> {job.coalesced_into}" if job.coalesced_into else "")
              + (f"  {job.error}" if job.error else ""))
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.broker import create_celery
    from ducc.tasks import register

    app = register(create_celery(settings), settings)
    concurrency = args.concurrency or settings.worker_concurrency
    app.worker_main(["worker", f"--loglevel={settings.log_level}", f"--concurrency={concurrency}", "-Q", "ducc",
                     "--without-gossip", "--without-mingle", "-n", args.name])
    return 0


def cmd_beat(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.broker import create_celery

    app = create_celery(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app.start(["beat", f"--loglevel={settings.log_level}", "--schedule", str(settings.state_dir / "beat-schedule")])
    return 0


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    import os

    listen = args.listen or settings.listen
    # The access log shows the path without the query string: Docker Hub and Quay send their token as ?token=.
    access_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "--bind", listen, "--workers", str(args.workers),
                               "--access-logfile", "-", "--access-logformat", access_format,
                               "--graceful-timeout", "10", "webhooks.wsgi:app"])
    return 0  # pragma: no cover - exec does not return


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.embedded import serve

    return serve(settings, root=args.root or settings.root, wishlist=args.wishlist or settings.wishlist,
                 web=not args.no_web)


def _additions(flat: Path) -> list[str]:
    """What ducc added to a flat root, as it recorded it there (``.singularity.d/ducc.json``)."""
    from ducc.unpack.extend import RECORD

    try:
        return list(json.loads((flat / RECORD).read_text())["added"])
    except (OSError, ValueError, KeyError):
        return []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ducc",
        description="Convert container images from Docker/OCI registries into unpacked, deduplicated "
        "root filesystems in a CernVM-FS repository (or any directory).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ducc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_root(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", type=Path, help="repository root (default: $DUCC_ROOT)")

    p = sub.add_parser("convert", help="convert images now", description="Pull, unpack and publish images.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. ubuntu:24.04, ghcr.io/org/img:tag, reg:5000/a/b@sha256:…")
    with_root(p)
    p.add_argument("--platform", type=_platform_arg, help="os/arch[/variant] to take from multi-arch images (default: $DUCC_PLATFORM or linux/amd64)")
    p.add_argument("--force", action="store_true", help="convert even if the tag is already published at this digest")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("sync", help="convert everything a wishlist asks for",
                       description="Expand the wishlist (tag globs against the registry) and convert what changed. "
                       "Failures are listed at the end; the exit status is 1 if any image failed.")
    p.add_argument("wishlist", help="wishlist.yaml (DUCC recipe v1)")
    with_root(p)
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("check-wishlist", help="validate a wishlist and print what it would convert")
    p.add_argument("wishlist")
    p.add_argument("--no-expand", action="store_true", help="do not ask registries for tags")
    p.set_defaults(func=cmd_check_wishlist)

    p = sub.add_parser("serve", help="run the whole service on this machine (Redis, worker, beat, web)",
                       description="Run everything in one command: an embedded Redis under DUCC_STATE_DIR unless "
                       "DUCC_REDIS_URL is set, a worker, the scheduler (nightly wishlist sync) and the web app.")
    with_root(p)
    p.add_argument("--wishlist", type=Path, help="wishlist to sync on DUCC_SYNC_SCHEDULE (default $DUCC_WISHLIST)")
    p.add_argument("--no-web", action="store_true", help="do not run the web app")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("submit", help="queue conversions; prints one job id per image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--platform", type=_platform_arg)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="the timeline of a job (by id) or of an image's latest job",
                       description="Exit status: 0 published, 1 failed or unknown, 75 not finished yet.")
    p.add_argument("target", metavar="JOB_ID|IMAGE")
    p.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait up to SECONDS for the job to finish")
    p.add_argument("--platform", type=_platform_arg)
    with_root(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("jobs", help="recent jobs, newest first")
    p.add_argument("--limit", type=int, default=30)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("worker", help="run a conversion worker (production; needs DUCC_REDIS_URL)")
    p.add_argument("--concurrency", type=int, help="conversions at once (default $DUCC_WORKER_CONCURRENCY)")
    p.add_argument("--name", default="ducc@%h", help="worker node name")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="run the scheduler: wishlist sync on DUCC_SYNC_SCHEDULE, reconciliation")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("web", help="run the web app under gunicorn on DUCC_LISTEN")
    p.add_argument("--listen", help="host:port (default $DUCC_LISTEN)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("list", help="list published images")
    with_root(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("inspect", help="show a published image: config, layers, paths")
    p.add_argument("image")
    with_root(p)
    p.add_argument("--platform", type=_platform_arg)
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"ducc: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args, settings)
    try:
        return int(args.func(args, settings))
    except DuccError as exc:
        print(f"ducc: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # settings that do not make sense, e.g. no DUCC_REDIS_URL for submit
        print(f"ducc: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ducc: interrupted; nothing half-published (staging is cleaned on the next run)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
