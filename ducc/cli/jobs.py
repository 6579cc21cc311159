"""The verbs that talk to the service's queue: ``submit``, ``status``, ``cancel``, ``jobs``.

None of them converts: they need Redis only (``DUCC_REDIS_URL``, or the embedded Redis of a
``ducc serve`` on this machine).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import redis

from ducc.cli.arguments import count_arg, platform_arg, platform_of, seconds_arg, services, thin_target, with_repository
from ducc.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_PENDING, fail
from ducc.errors import ServiceUnavailable
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest
from ducc.settings import Settings
from ducc.terminal import printable
from ducc.wiring import Services

JOB_ID = re.compile(r"^[0-9a-f]{8,16}-[0-9a-f]{10}$")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("submit", help="queue conversions; prints one job id per image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--platform", type=platform_arg)
    p.add_argument("--thin", metavar="OUTPUT_REF", help="also push a thin image there, as with convert --thin")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="the timeline of a job (by id) or of an image's latest job",
                       description="Exit status: 0 published (or done, for an unpublish or a garbage collection), "
                       "1 failed, cancelled or unknown, 75 not finished yet, 69 Redis unreachable.")
    p.add_argument("target", metavar="JOB_ID|IMAGE")
    p.add_argument("--wait", type=seconds_arg, default=0, metavar="SECONDS",
                   help="wait up to SECONDS for the job to finish")
    p.add_argument("--platform", type=platform_arg)
    with_repository(p)
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
    p.add_argument("--limit", type=count_arg, default=30, metavar="N",
                   help="how many (ducc keeps the 1,000 most recent in its list)")
    p.set_defaults(func=cmd_jobs)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    queue = Services(settings).queue
    platform = platform_of(args, settings)
    thin_of: dict[Reference, Reference] = {}
    for text in args.images:
        ref = Reference.parse(text)
        thin = thin_target(args.thin, ref, thin_of)
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
    built = services(args, settings)
    deadline = time.monotonic() + (args.wait or 0)
    platform = platform_of(args, settings)
    ref = None if JOB_ID.match(args.target) else Reference.parse(args.target)
    while True:
        try:
            if ref is None:
                job = built.jobs.get(args.target)
            else:
                found = [j for j in built.jobs.for_image(str(ref)) if j.platform == str(platform)]
                job = found[0] if found else None
        except (redis.ConnectionError, ServiceUnavailable):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)  # --wait: a service (re)starting its Redis is waited for too
            continue
        if job is None and ref is not None:
            record = built.view.read_record(ref, platform)
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
            code = fail(f"job {done.job_id}{via} has already finished: {done.state}", EXIT_FAILED)
        elif done.outcome == "busy":
            code = fail(f"job {done.job_id}{via} is {done.state}: it removes things and is never stopped halfway; "
                        f"it ends in a moment (ducc status {done.job_id} --wait 60)", EXIT_FAILED)
        else:
            code = fail(f"no job {done.job_id}", EXIT_FAILED)
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
