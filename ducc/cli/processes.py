"""The verbs that run the service's processes: ``serve`` (all of them on one machine), ``worker``, ``beat``
and ``web`` (one each, as the Procfile and the chart run them)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ducc.cli.arguments import seconds_arg, with_repository
from ducc.cli.exits import redis_location
from ducc.errors import ServiceUnavailable
from ducc.settings import Settings
from ducc.wiring import Services


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the whole service on this machine (Redis, worker, beat, web)",
                       description="Run everything in one command: an embedded Redis under DUCC_STATE_DIR unless "
                       "DUCC_REDIS_URL is set, a worker, the scheduler (wishlist sync) and the web app. The "
                       "wishlist is synced once at start, then on DUCC_SYNC_SCHEDULE. One ducc serve per state "
                       "directory: a second one refuses to start (exit 69).")
    with_repository(p)
    p.add_argument("--wishlist", type=Path, help="wishlist to sync at start and on DUCC_SYNC_SCHEDULE "
                   "(default $DUCC_WISHLIST); checked before anything starts")
    p.add_argument("--no-initial-sync", action="store_true", help="do not sync the wishlist at start, "
                   "only on DUCC_SYNC_SCHEDULE")
    p.add_argument("--no-web", action="store_true", help="do not run the web app")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a conversion worker (production; needs DUCC_REDIS_URL)")
    p.add_argument("--concurrency", type=int, help="conversions at once (default $DUCC_WORKER_CONCURRENCY)")
    p.add_argument("--name", default="ducc@%h", help="worker node name")
    p.add_argument("--ping", action="store_true", help="do not run a worker: ask the running worker --name "
                   "to answer Celery's ping (a liveness probe); exit 0 if it does, 1 if not")
    p.add_argument("--timeout", type=seconds_arg, default=10.0, metavar="SECONDS", help="how long --ping waits")
    with_repository(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="run the scheduler: wishlist sync on DUCC_SYNC_SCHEDULE, reconciliation")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("web", help="run the web app under gunicorn on DUCC_LISTEN")
    p.add_argument("--listen", help="host:port (default $DUCC_LISTEN)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_web)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.service.embedded import serve

    return serve(settings, root=settings.root, wishlist=args.wishlist or settings.sync.wishlist,
                 web=not args.no_web, initial_sync=not args.no_initial_sync)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from ducc.service import keys
    from ducc.service.tasks import register

    if args.ping:
        return _ping_worker(args, settings)
    services = Services(settings, shared_locks=True)
    services.check_stores()  # a store it could not write: one line now, not a failure per image
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
        raise ServiceUnavailable(f"Redis at {redis_location(settings)} unreachable: {exc}") from exc
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
