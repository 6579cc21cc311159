"""Celery tasks: thin adapters from a message to one use case. Task names are stable:

- ``ducc.convert(job_id)``   convert the image of one job (``ducc.queue`` creates jobs)
- ``ducc.sync()``            check every wishlist image (one HEAD each) and queue those that changed
- ``ducc.reconcile()``       requeue jobs whose worker died (their lease lapsed); runs at worker
                             start and every DUCC_JOB_LEASE seconds from beat

Reliability: messages are acknowledged late and rejected when a worker is lost,
so the broker redelivers them; a redelivered job that already finished does
nothing, one still running elsewhere (its lease alive) is left alone, and a
conversion is idempotent anyway. Temporary errors are retried with doubling
delays (``DUCC_JOB_RETRY_BASE``), permanent ones fail at once with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import worker_ready

from ducc.broker import build_redis
from ducc.convert import Converter
from ducc.errors import DuccError, WishlistError
from ducc.jobs import ACTIVE_STATES, Job, JobProgress, JobStore, image_key
from ducc.locks import lease, try_lease
from ducc.metrics import record_conversion
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.queue import CONVERT_TASK, DISPATCHING, INCOMING, RECONCILE_TASK, SYNC_TASK, Dispatcher, Queue
from ducc.settings import Settings

log = logging.getLogger(__name__)

@dataclass
class Runtime:
    """The collaborators of one worker process, built on first use from settings (``ducc.services``)."""

    settings: Settings
    app: Celery

    @cached_property
    def redis(self) -> redis.Redis:
        return build_redis(self.settings)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.redis, ttl=self.settings.job_ttl)

    @cached_property
    def queue(self) -> Queue:
        return Queue(self.redis, self.jobs)

    @cached_property
    def converter(self) -> Converter:
        from ducc.services import build_converter

        return build_converter(self.settings, redis_client=self.redis)


def _heartbeat(rt: Runtime, job: Job, stop: threading.Event) -> None:
    seconds = rt.settings.job_lease
    while True:
        try:
            rt.jobs.touch_lease(job.id, seconds)
            rt.queue.renew(job.id, job.image, job.platform, seconds)
        except redis.RedisError as exc:
            log.warning("job %s: cannot renew its lease: %s", job.id, exc)
        if stop.wait(seconds / 3):
            return


def run_conversion(rt: Runtime, job_id: str, task: Task) -> str:
    job = rt.jobs.get(job_id, follow=False)
    if job is None:
        log.warning("job %s: no record (expired?); nothing to do", job_id)
        return "unknown"
    if job.finished or job.coalesced_into:
        return job.state
    if job.state in ACTIVE_STATES and rt.jobs.lease_alive(job_id):
        log.info("job %s is running on another worker", job_id)
        return "running"
    try:
        ref, platform = Reference.parse(job.image), Platform.parse(job.platform)
    except ValueError as exc:  # submitters validate; a record edited by hand must still end somewhere
        rt.jobs.event(job_id, "failed", str(exc), error=str(exc), temporary=0, attempts=job.attempts + 1)
        return "failed"
    with lease(rt.redis, f"image:{image_key(job.image, job.platform)}", seconds=rt.settings.job_lease):
        rt.queue.started(job_id, job.image, job.platform, rt.settings.job_lease)
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(rt, job, stop), daemon=True)
        beat.start()
        attempts = job.attempts + 1
        started = time.monotonic()
        changed = False

        def fail(detail: str, error: str, temporary: bool) -> str:
            rt.jobs.event(job_id, "failed", detail, error=error, temporary=int(temporary), attempts=attempts)
            record_conversion(rt.redis, "failed", time.monotonic() - started)
            return "failed"

        try:
            progress = JobProgress(rt.jobs, job_id)
            while True:
                try:
                    result = rt.converter.convert(ref, platform, progress=progress)
                except DuccError as exc:
                    # A request that arrived meanwhile may be for a push that converts: look again first.
                    if not rt.queue.finish(job_id, job.image, job.platform):
                        raise
                    why = f"{exc}; a request arrived during the conversion: checking the tag again"
                else:
                    changed = changed or result.state == "published"
                    if not rt.queue.finish(job_id, job.image, job.platform):
                        break
                    why = "a request arrived during the conversion: checking the tag again"
                log.info("job %s (%s): %s", job_id, job.image, why)
                rt.jobs.event(job_id, "resolving", why)
        except DuccError as exc:
            if exc.temporary and attempts < rt.settings.job_max_attempts:
                delay = min(rt.settings.job_retry_base * 2 ** (attempts - 1), 3600)
                log.warning("job %s (%s): %s; retry %d in %ds", job_id, job.image, exc, attempts, delay)
                rt.jobs.event(job_id, "retrying", f"{exc}; attempt {attempts} failed, next in {delay}s",
                              error=str(exc), temporary=1, attempts=attempts, retry_at=time.time() + delay)
                raise task.retry(countdown=delay) from exc
            log.error("job %s (%s) failed: %s", job_id, job.image, exc)
            return fail(str(exc), str(exc), exc.temporary)
        except Exception as exc:
            rt.queue.finish(job_id, job.image, job.platform, recheck=False)
            log.exception("job %s (%s): unexpected error", job_id, job.image)
            return fail(f"internal error: {exc.__class__.__name__}: {exc}", f"internal error: {exc}", False)
        finally:
            stop.set()
            beat.join()
            rt.jobs.drop_lease(job_id)
    detail = (
        f"already current at {result.tag_digest.short}" if result.state == "unchanged" and result.tag_digest
        else f"{result.layers_unpacked} layers unpacked, {result.layers_reused} reused, {result.seconds:.1f}s"
    )
    rt.jobs.event(job_id, "published", detail, error="", attempts=attempts, result={
        "changed": changed,
        "path": result.path,
        "tag_digest": str(result.tag_digest) if result.tag_digest else None,
        "config_digest": str(result.config_digest) if result.config_digest else None,
        "layers_unpacked": result.layers_unpacked,
        "layers_reused": result.layers_reused,
        "bytes_fetched": result.bytes_fetched,
        "seconds": round(result.seconds, 3),
        "skipped_entries": len(result.skipped_entries),
    })
    record_conversion(rt.redis, result.state, result.seconds)
    log.info("job %s: %s published (%s)", job_id, job.image, detail)
    return "published"


def run_sync(rt: Runtime) -> dict[str, Any]:
    """Queue a conversion for every wishlist image whose tag moved; the checks are manifest HEADs only."""
    from ducc import wishlist as wishlist_module
    from ducc.sync import check_all

    path = rt.settings.wishlist
    if path is None:
        log.info("no wishlist configured (DUCC_WISHLIST): nothing to sync")
        return {"checked": 0}
    try:
        wishes = wishlist_module.load(Path(path).read_text(encoding="utf-8"))
    except (OSError, WishlistError) as exc:
        log.error("wishlist %s: %s", path, exc)
        return {"error": str(exc)}
    queued: list[str] = []

    def check(ref: Reference, platform: Platform) -> str:
        current, _ = rt.converter.is_current(ref, platform)
        if current:
            return "unchanged"
        queued.append(rt.queue.submit(str(ref), str(platform), "wishlist").job_id)
        return "queued"

    report = check_all(wishes, rt.converter.client, check, per_registry=rt.settings.registry_concurrency)
    summary = {"checked": len(report.outcomes), "queued": len(queued), "failed": len(report.failures)}
    log.info("wishlist sync: %(checked)d checked, %(queued)d queued, %(failed)d failed", summary)
    for what, why in report.failures:
        log.error("wishlist sync: %s: %s", what, why)
    return summary


def run_reconcile(rt: Runtime) -> int:
    """Requeue jobs whose worker died and jobs a dispatcher dropped; returns how many."""
    if not try_lease(rt.redis, "reconcile", max(1, rt.settings.job_lease // 3)):
        return 0
    requeued = 0
    now = time.time()
    for job in rt.jobs.unfinished():
        if rt.jobs.lease_alive(job.id):
            continue
        lost = job.state in ACTIVE_STATES
        overdue_retry = job.state == "retrying" and now - job.updated_at > rt.settings.job_retry_base * 2 ** job.attempts + 60
        if lost or overdue_retry:
            log.warning("job %s (%s) was %s with no live worker: requeued", job.id, job.image, job.state)
            rt.queue.requeue(job.id, f"requeued: its worker stopped while {job.state}")
            requeued += 1
    # Jobs a dispatcher took but did not hand to Celery: seen there at two reconciliations in a row.
    current = {str(j) for j in rt.redis.lrange(DISPATCHING, 0, -1)}
    seen_key = f"{DISPATCHING}:seen"
    previous = {str(j) for j in rt.redis.smembers(seen_key)}
    pipe = rt.redis.pipeline()
    pipe.delete(seen_key)
    if current:
        pipe.sadd(seen_key, *current)
        pipe.expire(seen_key, rt.settings.job_lease * 4)
    pipe.execute()
    for job_id in current & previous:
        if rt.redis.lrem(DISPATCHING, 1, job_id):
            rt.redis.lpush(INCOMING, job_id)
            log.warning("job %s was dropped by a dispatcher: queued again", job_id)
            requeued += 1
    return requeued


def start_dispatcher(rt: Runtime) -> threading.Event:
    """Run a dispatcher thread in this (worker main) process; set the returned event to stop it."""
    stop = threading.Event()
    dispatcher = Dispatcher(rt.redis, lambda name, args: rt.app.send_task(name, args=args))
    threading.Thread(target=dispatcher.run, args=(stop,), name="ducc-dispatcher", daemon=True).start()
    return stop


def register(app: Celery, settings: Settings) -> Celery:
    """Add the task bodies to ``app`` (worker processes only)."""
    rt = Runtime(settings, app)

    @app.task(name=CONVERT_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def convert(self: Task, job_id: str) -> str:
        return run_conversion(rt, job_id, self)

    @app.task(name=SYNC_TASK)  # type: ignore[untyped-decorator]
    def sync() -> dict[str, Any]:
        return run_sync(rt)

    @app.task(name=RECONCILE_TASK)  # type: ignore[untyped-decorator]
    def reconcile() -> int:
        return run_reconcile(rt)

    def at_start(sender: object = None, **_: object) -> None:
        start_dispatcher(rt)
        try:
            run_reconcile(rt)
        except Exception:  # never keep a worker from starting
            log.exception("reconciliation at start-up failed")

    worker_ready.connect(at_start, weak=False)
    return app
