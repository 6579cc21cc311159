"""The ``ducc`` command: a thin layer over the library (``ducc.services`` wires it from settings)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import redis

from ducc import __version__, layout
from ducc.errors import (
    DuccError,
    NotFound,
    RepositoryUnusable,
    ServiceUnavailable,
    StateDirectoryInUse,
    WishlistError,
)
from ducc.logs import setup_logging
from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest
from ducc.progress import LogProgress
from ducc.publish import RepositoryView
from ducc.services import Services
from ducc.settings import Settings, parse_duration
from ducc.terminal import printable

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
  ducc cancel JOB_ID
  ducc rm 127.0.0.1:5000/team/app:old --root /srv/cvmfs/unpacked
  ducc gc --root /srv/cvmfs/unpacked --dry-run

Settings come from DUCC_* environment variables; see the README.

exit status (every failure is one line on stderr: "ducc: <what>: <why>"):
  0   done
  1   the work failed: an image did not convert, a job failed or was cancelled,
      nothing found for what was asked
  2   usage or configuration: a bad argument or setting, a wishlist that is missing
      or invalid, a repository root that cannot be created or written
  69  a service is unavailable: Redis cannot be reached, or another ducc serve
      holds the state directory
  75  ducc status: the job has not finished yet
  130 interrupted
  141 the reader of its output went away (ducc list | head -1), quietly, as other tools
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE
EXIT_PENDING = 75  # EX_TEMPFAIL: not finished yet
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool its reader left


class TerminalProgress(LogProgress):
    """Stage lines as logs, plus one live line of per-layer bytes on a terminal.

    The live line is written without a newline; every log line of the process takes it off the
    terminal first (``attach``), so no log line is ever glued onto it. It comes back at the next update.
    """

    def __init__(self, stream=sys.stderr) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.stream = stream
        self.layers: dict[Digest, tuple[int, int | None]] = {}
        self.lock = threading.RLock()
        self.last = 0.0
        self.shown = False  # the live line is on the terminal

    def attach(self) -> None:
        """Make the log handlers that write to this terminal clear the live line before each record."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                handler.setStream(_ClearingStream(self))

    def clear(self) -> None:
        with self.lock:
            if self.shown:
                self.stream.write("\r\033[K")
                self.shown = False

    def stage(self, ref: Reference, stage: str, detail: str = "") -> None:
        with self.lock:
            self.clear()
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
            self.stream.write("\r\033[K" + ("  " + " | ".join(parts[:4]) if parts else ""))
            self.stream.flush()
            self.shown = bool(parts)


class _ClearingStream:
    """The terminal as a log handler sees it: the live progress line is cleared before each write."""

    def __init__(self, progress: TerminalProgress) -> None:
        self.progress = progress

    def write(self, text: str) -> int:
        with self.progress.lock:
            self.progress.clear()
            return int(self.progress.stream.write(text))

    def flush(self) -> None:
        self.progress.stream.flush()


def _setup_logging(args: argparse.Namespace, settings: Settings) -> None:
    setup_logging(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else settings.log_level)


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C: stop every registry transfer at once (threads blocked on a slow registry wake up), then
    unwind as Python's own handler does."""
    transfer = sys.modules.get("ducc.registry.transfer")  # not imported here: a signal handler must not import
    if transfer is not None:
        transfer.abort_all()
    raise KeyboardInterrupt


def _progress(args: argparse.Namespace) -> LogProgress:
    if sys.stderr.isatty() and not args.quiet:
        terminal = TerminalProgress()
        terminal.attach()
        return terminal
    return LogProgress()


def _platform(args: argparse.Namespace, settings: Settings) -> Platform:
    return args.platform or settings.platform


def _platform_arg(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _seconds_arg(text: str) -> float:
    """A number of seconds to wait: finite and not negative (``nan`` would never compare as over)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return seconds


def _count_arg(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return count


def _duration_arg(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _services(args: argparse.Namespace, settings: Settings) -> Services:
    return Services(settings, root=getattr(args, "root", None), progress=_progress(args))


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    refs = [Reference.parse(text) for text in args.images]  # a bad one is a usage error, before any work
    services = _services(args, settings)
    services.publisher  # noqa: B018  # a root that cannot be created or written: one error, before any work
    platform = _platform(args, settings)
    failures = []
    thin_of: dict[Reference, Reference] = {}  # thin target -> the image pushed there
    for text, ref in zip(args.images, refs, strict=True):
        try:
            thin = _thin_target(args.thin, ref, thin_of)
            result = services.converter.run(ConversionRequest(ref, platform, thin=thin), force=args.force)
        except DuccError as exc:
            if len(args.images) > 1:
                log.error("%s: %s", text, exc)
            failures.append((text, str(exc)))
            continue
        print(f"{result.state}\t{services.view.public_path(ref, platform)}")
        if result.thin is not None:
            print(f"thin\t{result.thin}")
    return _summary(len(args.images), failures)


def _thin_target(output: str | None, ref: Reference, thin_of: dict[Reference, Reference]) -> Reference | None:
    """``--thin``: a reference, or a wishlist ``output_format`` with DUCC's ``$(...)`` variables
    (several images need those: two images are never pushed to one tag)."""
    from ducc.thin import thin_reference

    if output is None:
        return None
    target = thin_reference(output, ref)
    other = thin_of.setdefault(target, ref)
    if other != ref:
        raise DuccError(f"--thin {output}: {other} and {ref} would both be pushed to {target}; use $(image) or $(tag)")
    return target


def _summary(total: int, failures: list[tuple[str, str]]) -> int:
    """One line for one image (``ducc: IMAGE: why``), a list at the end for several; EXIT_FAILED if any."""
    if not failures:
        return EXIT_OK
    if total == 1:
        ((what, why),) = failures
        return _fail(why if what in why else f"{what}: {why}", EXIT_FAILED)
    print(f"\n{len(failures)} of {total} failed:", file=sys.stderr)
    for what, why in failures:
        print(f"  {_one_line(what)}: {_one_line(why)}", file=sys.stderr)
    return EXIT_FAILED


def _load_wishlist(path: str | Path):  # type: ignore[no-untyped-def]
    from ducc.wishlist import read

    return read(Path(path))


def _wishlist_repository(settings: Settings, repo: str) -> Settings:
    """The wishlist's ``cvmfs_repo``, where neither ``--cvmfs-repo``/``DUCC_CVMFS_REPO`` nor a directory
    root (``--root``/``DUCC_ROOT``/``DUCC_PUBLISHER=directory``) was asked for, and this machine is its publisher."""
    if "DUCC_ROOT" in settings.env or "DUCC_PUBLISHER" in settings.env:
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
    if wishes.cvmfs_repo and args.root is None and settings.publisher == "directory":
        settings = _wishlist_repository(settings, wishes.cvmfs_repo)
    services = _services(args, settings)
    services.publisher  # noqa: B018  # a root that cannot be created or written: one error, before any work
    report = sync(wishes, services.client, services.converter.run, concurrency=settings.sync.concurrency,
                  per_registry=settings.sync.registry_concurrency, origin=wishlist_origin(args.wishlist))
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.state] = counts.get(result.state, 0) + 1
    print(
        f"synced {len(report.results) + len(report.failures)} images: "
        + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        + (f", {len(report.failures)} failed" if report.failures else "")
    )
    return _summary(len(report.results) + len(report.failures), report.failures)


def cmd_check_wishlist(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.sync import SyncReport, plan

    wishes = _load_wishlist(args.wishlist)
    print(f"wishlist OK: version {wishes.version}, {len(wishes.wishes)} entries"
          + (f", repository {wishes.cvmfs_repo}" if wishes.cvmfs_repo else ""))
    if args.no_expand:
        for wish in wishes.wishes:
            print(f"  {wish.text}  ->  {', '.join(map(str, wish.platforms))}")
        return 0
    client = _services(args, settings).client
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
    return _summary(len(work) + unexpanded, report.failures)


def cmd_gc(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.gc import collect

    services = _services(args, settings)
    if not services.view.exists():
        print(f"nothing to collect: there is no repository at {services.view.location}")
        return 0
    grace = settings.gc.grace if args.grace is None else args.grace
    collection = collect(services.publisher, grace=grace, dry_run=args.dry_run)
    for line in collection.lines():
        print(line)
    print(collection.summary())
    return 0


def cmd_rm(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.unpublish import unpublish

    services = _services(args, settings)
    _existing(services.view)  # nothing to unpublish from a repository that is not there (never created)
    platform = _platform(args, settings)
    targets = [(Reference.parse(text), platform) for text in args.images]  # all parsed before anything goes
    results = unpublish(services.publisher, targets)
    for result in results:
        print(f"{result.outcome}\t{result.path}")
    if any(r.outcome == "unpublished" for r in results):
        print(f"ducc: the flat roots and layers they used go with the first 'ducc gc' after the grace period "
              f"({settings.gc.grace}s, DUCC_GC_GRACE)", file=sys.stderr)
    return 0 if all(r.outcome == "unpublished" for r in results) else 1


def _existing(view: RepositoryView) -> RepositoryView:
    """``view``, if its repository exists; a missing one is a one-line error (reading never creates it)."""
    if not view.exists():
        raise NotFound(f"no repository at {view.location} (nothing was ever published there)")
    return view


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Check this publisher's CVMFS repository: one line per check, exit 0 only when every one holds."""
    from ducc.publish.cvmfs_server import CvmfsServer, diagnose
    from ducc.publish.cvmfs_view import split_repository

    if not settings.cvmfs.repo:
        raise ValueError("ducc doctor checks a CVMFS repository: --cvmfs-repo REPO or DUCC_CVMFS_REPO")
    repository, _ = split_repository(settings.cvmfs.repo)
    server = CvmfsServer(repository, binary=settings.cvmfs.server, mount=settings.cvmfs.mount,
                         gateway=settings.cvmfs.gateway, env=dict(settings.env) or None, timeout=300)
    results = diagnose(server)
    for what, wrong in results:
        print(f"ok    {what}" if wrong is None else f"FAIL  {what}: {' '.join(wrong.split())}")
    return EXIT_OK if all(wrong is None for _, wrong in results) and len(results) == 4 else EXIT_FAILED


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    view = _existing(_services(args, settings).view)
    for path, flat in sorted(view.published()):
        print(f"{printable(str(path))}\t{flat.name[:12] if flat.exists() else '(dangling)'}")
    return 0


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    ref = Reference.parse(args.image)
    view = _existing(_services(args, settings).view)
    platform = _platform(args, settings)
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


JOB_ID = re.compile(r"^[0-9a-f]{8,16}-[0-9a-f]{10}$")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    queue = Services(settings).queue
    platform = _platform(args, settings)
    thin_of: dict[Reference, Reference] = {}
    for text in args.images:
        ref = Reference.parse(text)
        thin = _thin_target(args.thin, ref, thin_of)
        submission = queue.submit(ConversionRequest(ref, platform, thin=thin), "cli")
        note = f" (coalesced into {submission.into})" if submission.into else ""
        print(f"{ref} ({platform}): job {submission.job_id}{note}", file=sys.stderr)
        print(submission.job_id)
    return 0


def _print_job(job) -> None:  # type: ignore[no-untyped-def]
    """A job's timeline, one line per event; every text in it is escaped (a reason may quote a registry)."""
    what = f"{job.image} ({job.platform})" if job.platform else job.image
    kind = "" if job.kind == "convert" else f"{job.kind} "
    print(printable(f"job {job.id}: {kind}{what} from {job.source}: {job.state.upper()}"))
    for event in job.events:
        suffix = f" [{event['job']}]" if event.get("job") else ""
        print(f"  {_when(event['at'])}  " + printable(f"{event['state']:<11} {event.get('detail', '')}{suffix}"))
    if job.bytes:
        print(f"  bytes fetched so far: {job.bytes}")
    if job.error:
        print(f"  error: {printable(str(job.error))}" + (" (temporary)" if job.temporary else ""))
    if job.result.get("path"):
        print(f"  path: {printable(str(job.result['path']))}")


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(args, settings)
    deadline = time.monotonic() + (args.wait or 0)
    platform = _platform(args, settings)
    ref = None if JOB_ID.match(args.target) else Reference.parse(args.target)
    while True:
        try:
            if ref is None:
                job = services.jobs.get(args.target)
            else:
                found = [j for j in services.jobs.for_image(str(ref)) if j.platform == str(platform)]
                job = found[0] if found else None
        except (redis.ConnectionError, ServiceUnavailable):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)  # --wait: a service (re)starting its Redis is waited for too
            continue
        if job is None and ref is not None:
            record = services.view.read_record(ref, platform)
            if record is not None:
                print(f"{ref} ({platform}) is published (no job on record): config {record.config_digest.short}")
                return EXIT_OK
        if job is None:
            print(f"ducc: no job or published image for {args.target}", file=sys.stderr)
            return EXIT_FAILED
        if job.finished or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    _print_job(job)
    if job.state in ("published", "done"):
        return EXIT_OK
    return EXIT_FAILED if job.finished else EXIT_PENDING


def _who() -> str:
    """Who runs this command, for a job's timeline: ``cli (user@host)``, the user from the account
    database (not from the environment, which anyone can set)."""
    import pwd
    import socket

    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid {os.getuid()}"
    return f"cli ({user}@{socket.gethostname()})"


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    queue = Services(settings).queue
    by = _who()
    code = EXIT_OK
    for job_id in args.jobs:
        done = queue.cancel(job_id, by)
        via = f" (job {done.asked} had joined it)" if done.asked else ""
        if done.outcome == "cancelled":
            print(f"job {done.job_id}: cancelled{via}; it was {done.state}")
        elif done.outcome == "published":
            print(f"job {done.job_id}: its image was already published{via}; the thin push it was {done.state} "
                  "for is cancelled and the job ends published")
        elif done.outcome == "requested" and done.state in ("publishing", "thin"):
            print(f"job {done.job_id}: cancel requested{via}; it is {done.state}: its image is published all the "
                  f"same, only a thin push not yet begun is skipped (ducc status {done.job_id} --wait 60)")
        elif done.outcome == "requested":
            print(f"job {done.job_id}: cancel requested{via}; it is {done.state} and stops at its next cancel "
                  f"point (ducc status {done.job_id} --wait 60)")
        elif done.outcome == "finished":
            code = _fail(f"job {done.job_id}{via} has already finished: {done.state}", EXIT_FAILED)
        elif done.outcome == "busy":
            code = _fail(f"job {done.job_id}{via} is {done.state}: it removes things and is never stopped halfway; "
                         f"it ends in a moment (ducc status {done.job_id} --wait 60)", EXIT_FAILED)
        else:
            code = _fail(f"no job {done.job_id}", EXIT_FAILED)
    return code


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.service.keys import RECENT_JOBS

    for job in Services(settings).jobs.recent_jobs(min(args.limit, RECENT_JOBS)):
        took = f"{job.updated_at - job.received_at:7.1f}s"
        what = f"{job.image} ({job.platform})" if job.platform else job.image
        kind = "" if job.kind == "convert" else f"{job.kind}: "
        print(printable(f"{job.id}  {_when(job.received_at)}  {job.state:<10} {took}  {job.source:<9} {kind}{what}"
                        + (f"  -> {job.coalesced_into}" if job.coalesced_into else "")
                        + (f"  {job.error}" if job.error else "")))
    if args.limit > RECENT_JOBS:
        print(f"ducc: --limit {args.limit}: ducc keeps only the {RECENT_JOBS:,} most recent jobs in its list; "
              "ducc status JOB_ID still finds an older job until DUCC_JOB_TTL", file=sys.stderr)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.service import keys
    from ducc.service.tasks import register

    if args.ping:
        return _ping_worker(args, settings)
    services = Services(settings, shared_locks=True)
    app = register(services.celery(), services)
    concurrency = args.concurrency or settings.jobs.worker_concurrency
    app.worker_main(["worker", f"--loglevel={settings.log_level}", f"--concurrency={concurrency}",
                     "-Q", keys.CELERY_QUEUE, "--without-gossip", "--without-mingle", "-n", args.name])
    return 0


def _ping_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Celery's own ping of the worker node ``--name`` (a liveness probe): its main process answers
    over the broker even while every slot converts."""
    from celery.utils.nodenames import host_format
    from kombu.exceptions import OperationalError

    name = host_format(args.name)
    app = Services(settings).celery()
    try:
        replies = app.control.ping(destination=[name], timeout=args.timeout)
    except OperationalError as exc:  # kombu's word for a broker it cannot reach
        raise ServiceUnavailable(f"Redis at {_redis_location(settings)} unreachable: {exc}") from exc
    if any(name in reply for reply in replies or []):
        print(f"{name}: pong")
        return 0
    print(f"ducc: worker {name} did not answer a ping within {args.timeout:g}s", file=sys.stderr)
    return 1


def cmd_beat(args: argparse.Namespace, settings: Settings) -> int:
    app = Services(settings).celery()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app.start(["beat", f"--loglevel={settings.log_level}", "--schedule", str(settings.state_dir / "beat-schedule")])
    return 0


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    listen = args.listen or settings.web.listen
    # The app needs Redis from its first request on: with none to find, say so in one line here rather
    # than let every gunicorn worker fail to boot with a traceback.
    Services(settings).redis_url  # noqa: B018 - raises ServiceUnavailable (exit 69)
    # The access log shows the path without the query string: Docker Hub and Quay send their token as ?token=.
    access_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "--bind", listen, "--workers", str(args.workers),
                               "--access-logfile", "-", "--access-logformat", access_format,
                               "--graceful-timeout", "10", "ducc.web.wsgi:app"])
    return 0  # pragma: no cover - exec does not return


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.service.embedded import serve

    return serve(settings, root=args.root or settings.root, wishlist=args.wishlist or settings.sync.wishlist,
                 web=not args.no_web, initial_sync=not args.no_initial_sync)


def _additions(raw: bytes | None) -> list[str]:
    try:
        return list(json.loads(raw)["added"]) if raw else []
    except (ValueError, KeyError, TypeError):
        return []


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other failure (``ducc: <what>: <why>``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ducc").strip()
        hint = f"ducc {command} --help" if command else "ducc --help"
        self.exit(EXIT_USAGE, f"ducc: {command + ': ' if command else ''}{_one_line(message)} (see {hint})\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        where = p.add_mutually_exclusive_group()
        where.add_argument("--root", type=Path, help="directory repository root (default: $DUCC_ROOT)")
        with_cvmfs(where)

    def with_cvmfs(p: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup) -> None:
        p.add_argument("--cvmfs-repo", metavar="REPO[/SUBDIR]",
                       help="publish into this CVMFS repository through cvmfs_server, on its publisher "
                       "(default: $DUCC_CVMFS_REPO; read from $DUCC_CVMFS_MOUNT or /cvmfs/REPO)")

    p = sub.add_parser("convert", help="convert images now", description="Pull, unpack and publish images.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. ubuntu:24.04, ghcr.io/org/img:tag, reg:5000/a/b@sha256:…")
    with_root(p)
    p.add_argument("--platform", type=_platform_arg, help="os/arch[/variant] to take from multi-arch images (default: $DUCC_PLATFORM or linux/amd64)")
    p.add_argument("--force", action="store_true", help="convert even if the tag is already published at this digest")
    p.add_argument("--thin", metavar="OUTPUT_REF", help="also push a thin image there (after publishing), e.g. "
                   "reg.example.org/thin/app:1 or an output_format like '$(scheme)://reg/thin/$(image)'")
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
                       "DUCC_REDIS_URL is set, a worker, the scheduler (wishlist sync) and the web app. The "
                       "wishlist is synced once at start, then on DUCC_SYNC_SCHEDULE. One ducc serve per state "
                       "directory: a second one refuses to start (exit 69).")
    with_root(p)
    p.add_argument("--wishlist", type=Path, help="wishlist to sync at start and on DUCC_SYNC_SCHEDULE "
                   "(default $DUCC_WISHLIST); checked before anything starts")
    p.add_argument("--no-initial-sync", action="store_true", help="do not sync the wishlist at start, "
                   "only on DUCC_SYNC_SCHEDULE")
    p.add_argument("--no-web", action="store_true", help="do not run the web app")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("submit", help="queue conversions; prints one job id per image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--platform", type=_platform_arg)
    p.add_argument("--thin", metavar="OUTPUT_REF", help="also push a thin image there, as with convert --thin")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="the timeline of a job (by id) or of an image's latest job",
                       description="Exit status: 0 published (or done, for an unpublish or a garbage collection), "
                       "1 failed, cancelled or unknown, 75 not finished yet, 69 Redis unreachable.")
    p.add_argument("target", metavar="JOB_ID|IMAGE")
    p.add_argument("--wait", type=_seconds_arg, default=0, metavar="SECONDS",
                   help="wait up to SECONDS for the job to finish")
    p.add_argument("--platform", type=_platform_arg)
    with_root(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel jobs: queued or retrying ones end now, running ones stop at their "
                       "next cancel point", description="Cancel jobs. A queued or retrying job ends at once; a "
                       "running conversion stops at its next cancel point (in a download, before each stage, last "
                       "just before the tag moves) and publishes nothing; jobs coalesced into it end with it. A "
                       "conversion whose image is already published stays published (only a thin push not yet "
                       "begun is skipped). The timeline says who cancelled. Exit status: 0 cancelled "
                       "(or stopping), 1 unknown or already finished, 69 Redis unreachable.")
    p.add_argument("jobs", nargs="+", metavar="JOB_ID")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("jobs", help="recent jobs, newest first")
    p.add_argument("--limit", type=_count_arg, default=30, metavar="N",
                   help="how many (ducc keeps the 1,000 most recent in its list)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("worker", help="run a conversion worker (production; needs DUCC_REDIS_URL)")
    p.add_argument("--concurrency", type=int, help="conversions at once (default $DUCC_WORKER_CONCURRENCY)")
    p.add_argument("--name", default="ducc@%h", help="worker node name")
    p.add_argument("--ping", action="store_true", help="do not run a worker: ask the running worker --name "
                   "to answer Celery's ping (a liveness probe); exit 0 if it does, 1 if not")
    p.add_argument("--timeout", type=_seconds_arg, default=10.0, metavar="SECONDS", help="how long --ping waits")
    with_cvmfs(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="run the scheduler: wishlist sync on DUCC_SYNC_SCHEDULE, reconciliation")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("web", help="run the web app under gunicorn on DUCC_LISTEN")
    p.add_argument("--listen", help="host:port (default $DUCC_LISTEN)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_web)

    p = sub.add_parser(
        "gc", help="delete flat roots and layers no published image uses, after a grace period",
        description="Mark and sweep: every flat root a published path leads to, and every layer its record "
        "lists, is kept; everything else under .flat and .layers is deleted once ducc has seen it unreferenced "
        "for the grace period (jobs keep running from a tag's old target meanwhile). Prints one line per "
        "deleted, waiting or in-use tree and a summary. On CVMFS, reclaiming the object store is then "
        "'cvmfs_server gc', a separate step.")
    with_root(p)
    p.add_argument("--grace", type=_duration_arg, metavar="DURATION",
                   help="how long a tree stays once unreferenced: seconds (0 included) or 90s, 30m, 12h, 7d "
                   "(default: $DUCC_GC_GRACE or 7d)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser(
        "rm", help="unpublish images (the tag link and its record, at once)",
        description="Unpublish each IMAGE: its tag link and .metadata record go together, in one transaction. "
        "Its flat root and layers stay until 'ducc gc' finds them unreferenced for the grace period. "
        "Exit status 1 if an IMAGE was not published.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    with_root(p)
    p.add_argument("--platform", type=_platform_arg, help="os/arch[/variant] (default: $DUCC_PLATFORM or linux/amd64)")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("doctor", help="check a CVMFS publisher: the command, the mount, the revision, a transaction",
                       description="One line per check: cvmfs_server found, the repository mounted, its revision "
                       "readable, a throw-away transaction opened and aborted. Exit status 0 only when all hold.")
    with_cvmfs(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("list", help="list published images")
    with_root(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("inspect", help="show a published image: config, layers, paths")
    p.add_argument("image")
    with_root(p)
    p.add_argument("--platform", type=_platform_arg)
    p.set_defaults(func=cmd_inspect)
    return parser


def _redis_location(settings: Settings) -> str:
    from ducc.service.broker import display_url

    return display_url(settings.redis.url) if settings.redis.url else settings.embedded_redis_url


def _one_line(message: object) -> str:
    """``message`` as part of one line: whitespace folded (a message from below may carry newlines), other
    control characters escaped (a registry's error body may carry terminal escape sequences)."""
    return printable(" ".join(str(message).split()))


def _fail(message: object, code: int) -> int:
    """The one line a failure prints."""
    print("ducc: " + _one_line(message), file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure a user can cause ends as one line on stderr and an exit status
    of the table in ``EXAMPLES`` (``-v`` also logs the traceback, for reporting a bug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        return _fail(exc, EXIT_USAGE)
    _setup_logging(args, settings)
    if getattr(args, "cvmfs_repo", None):
        settings = settings.with_cvmfs_repo(args.cvmfs_repo)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupted)  # the service's processes put their own in place
    try:
        code = int(args.func(args, settings))
        sys.stdout.flush()  # a reader that went away is found here, not at exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except KeyboardInterrupt:
        print("ducc: interrupted; nothing half-published (staging is cleaned on the next run)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        log.debug("the command failed", exc_info=True)
        return _fail(*_failure(exc, settings))


def _reader_gone() -> int:
    """The reader of stdout went away (``ducc list | head -1``): stop quietly, as other tools do. Whatever
    is still buffered goes nowhere, so Python's own flush at exit cannot complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _failure(exc: Exception, settings: Settings) -> tuple[str, int]:
    """What to say about ``exc`` and with which exit status; anything unforeseen is re-raised."""
    if isinstance(exc, (WishlistError, RepositoryUnusable)):
        return str(exc), EXIT_USAGE
    if isinstance(exc, (ServiceUnavailable, StateDirectoryInUse)):
        return str(exc), EXIT_UNAVAILABLE
    if isinstance(exc, ValueError):  # settings or arguments that do not make sense (a reference, say)
        return str(exc), EXIT_USAGE
    if isinstance(exc, DuccError):
        return str(exc), EXIT_FAILED
    if isinstance(exc, redis.AuthenticationError):
        return f"Redis at {_redis_location(settings)} refused the password: {exc}", EXIT_UNAVAILABLE
    if isinstance(exc, redis.RedisError):
        return f"Redis at {_redis_location(settings)} unreachable: {exc}", EXIT_UNAVAILABLE
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot access{where}: {exc.strerror}", EXIT_FAILED
    raise exc


if __name__ == "__main__":
    sys.exit(main())
