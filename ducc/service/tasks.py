"""Celery tasks: thin adapters from a message to one use case. Task names are stable:

- ``ducc.convert(job_id)``   convert the image of one job (``ducc.queue`` creates jobs)
- ``ducc.sync()``            check every wishlist image (one HEAD each) and queue those that changed
- ``ducc.propagation(job_id, revision, pending, deadline)``  poll the stratum 1s still ``pending``
                             until they serve ``revision`` (DUCC_STRATUM1_URLS); "visible on" events
- ``ducc.reconcile()``       requeue jobs whose worker died (their lease lapsed); runs at worker
                             start and every DUCC_JOB_LEASE seconds from beat
- ``ducc.unpublish(job_id)`` unpublish a tag (an optional policy queued it): after a clean 404 of its
                             manifest for a registry's delete notification, as asked for a tag that
                             left the wishlist
- ``ducc.gc(job_id=None)``   garbage collection of the repository (beat, on DUCC_GC_SCHEDULE): a job
                             of its own with a timeline, under the repository's lease; metrics

Reliability: messages are acknowledged late and rejected when a worker is lost,
so the broker redelivers them; a redelivered job that already finished does
nothing, one still running elsewhere (its lease alive) is left alone, and a
conversion is idempotent anyway. Temporary errors are retried with doubling
delays (``DUCC_JOB_RETRY_BASE``), permanent ones fail at once with the reason.
A thin image that could not be pushed after its image was published is retried
the same way (the retry pushes only the thin image); when it fails for good the
job fails with ``published, thin image not pushed: <why>``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from celery import Celery, Task
from celery.signals import worker_ready

from ducc.errors import CvmfsError, DuccError, JobCancelled, ThinImageNotPushed, WishlistError
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest, ConversionResult, UnpublishRequest
from ducc.service import keys, lastsync
from ducc.service.jobs import ACTIVE_STATES, PROPAGATION, RECHECK, Job, JobCancelCheck, JobProgress, JobState, JobStore
from ducc.service.lastsync import ImageOutcome, LastSync
from ducc.service.locks import try_lease
from ducc.service.metrics import record_conversion, record_gc
from ducc.service.queue import (
    CONVERT_TASK,
    GC_TASK,
    PROPAGATION_TASK,
    RECONCILE_TASK,
    SYNC_TASK,
    UNPUBLISH_TASK,
    Dispatcher,
    Queue,
)
from ducc.service.running import heartbeat, running
from ducc.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    import redis

    from ducc.convert import Converter
    from ducc.publish import Publisher, RepositoryView
    from ducc.publish.sinks import ImageSink
    from ducc.registry.client import RegistryClient
    from ducc.sync import SyncReport

log = logging.getLogger(__name__)


class Collaborators(Protocol):
    """What the task bodies use, passed in by whoever starts the worker (the composition root,
    ``ducc.wiring.Services``, built with shared locks): the service package never imports it."""

    @property
    def settings(self) -> Settings: ...
    @property
    def redis(self) -> redis.Redis: ...
    @property
    def jobs(self) -> JobStore: ...
    @property
    def queue(self) -> Queue: ...
    @property
    def view(self) -> RepositoryView: ...
    @property
    def client(self) -> RegistryClient: ...
    @property
    def publisher(self) -> Publisher: ...
    @property
    def converter(self) -> Converter: ...
    @property
    def sinks(self) -> Sequence[ImageSink]: ...


def _runnable(jobs: JobStore, job_id: str) -> Job | str:
    """The job to run now, or what its task answers instead: a delivery of a job with no record
    (expired?), one that finished or was coalesced into another, or one a live worker runs (its lease
    alive) does nothing."""
    job = jobs.get(job_id, follow=False)
    if job is None:
        log.warning("job %s: no record (expired?); nothing to do", job_id)
        return "unknown"
    if job.finished or job.coalesced_into:
        return job.state
    if job.state in ACTIVE_STATES and jobs.lease_alive(job_id):
        log.info("job %s is running on another worker", job_id)
        return "running"
    return job


def _retry_delay(settings: Settings, attempts: int) -> int:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling from
    DUCC_JOB_RETRY_BASE, an hour at most."""
    return int(min(settings.jobs.retry_base * 2 ** (attempts - 1), 3600))


def run_conversion(services: Collaborators, job_id: str, task: Task) -> str:
    jobs, settings = services.jobs, services.settings
    job = _runnable(jobs, job_id)
    if isinstance(job, str):
        return job
    try:
        request = job.request
    except ValueError as exc:  # submitters validate; a record edited by hand must still end somewhere
        jobs.event(job_id, JobState.FAILED, str(exc), error=str(exc), temporary=0, attempts=job.attempts + 1)
        return JobState.FAILED
    if isinstance(request, UnpublishRequest):  # sent here by a dispatcher that predates ducc.unpublish
        return run_unpublish(services, job_id, task)
    attempts = job.attempts + 1
    started = time.monotonic()

    def fail(detail: str, error: str, temporary: bool) -> str:
        jobs.event(job_id, JobState.FAILED, detail, error=error, temporary=int(temporary), attempts=attempts)
        record_conversion(services.redis, "failed", time.monotonic() - started)
        return JobState.FAILED

    def cancelled(exc: JobCancelled, published: bool = False) -> str:
        now = jobs.get(job_id, follow=False)
        if now is not None and (published or now.published) and now.state != JobState.CANCELLED:
            # the image was published (by this attempt or an earlier one): only its thin push is not done
            log.warning("job %s (%s): %s; its image stays published, its thin image is not pushed", job_id,
                        job.image, exc)
            jobs.event(job_id, JobState.PUBLISHED, f"{exc} after publication: the image stays published; its thin "
                       "image is not pushed", error="", temporary=0, attempts=attempts)
            record_conversion(services.redis, JobState.PUBLISHED, time.monotonic() - started)
            return JobState.PUBLISHED
        log.warning("job %s (%s): %s; nothing was published", job_id, job.image, exc)
        if now is None or now.state != JobState.CANCELLED:  # not ended by the cancel itself already
            jobs.event(job_id, JobState.CANCELLED, f"{exc}; stopped, nothing half published",
                       error=str(exc), temporary=0, attempts=attempts)
        record_conversion(services.redis, JobState.CANCELLED, time.monotonic() - started)
        return JobState.CANCELLED

    with running(services.redis, services.queue, jobs, job_id, request, settings.jobs.lease) as run:
        outcome: ConversionResult | None = None  # what the job did so far: a recheck never replaces it
        request = _grown(jobs, job_id, request)  # joined while it was still waiting: read once it runs
        try:
            progress, cancel = JobProgress(jobs, job_id), JobCancelCheck(jobs, job_id)
            while True:
                try:
                    result = services.converter.run(request, progress=progress, cancel=cancel)
                except JobCancelled as exc:
                    if outcome is None:
                        raise  # never "look again": requests that joined this job are cancelled with it
                    jobs.event(job_id, JobState.RESOLVING, f"stopped checking the tag again: {exc}", kind=RECHECK)
                    run.finish(recheck=False)
                    break
                except DuccError as exc:
                    # A request that arrived meanwhile may be for a push that converts: look again first.
                    # A recheck that fails keeps what the job did before (a thin image not pushed is
                    # retried as such: the job still owes it).
                    kept = outcome is not None and not isinstance(exc, ThinImageNotPushed)
                    if kept:
                        jobs.event(job_id, JobState.RESOLVING, f"checked the tag again: {exc}", kind=RECHECK)
                    if not run.finish():
                        if not kept:
                            raise
                        break
                    why = f"{exc}; a request arrived during the conversion: checking the tag again"
                else:
                    if outcome is not None:
                        jobs.event(job_id, JobState.RESOLVING, _recheck_line(result), kind=RECHECK)
                    outcome = result if outcome is None else outcome.then(result)
                    if not run.finish():
                        break
                    why = "a request arrived during the conversion: checking the tag again"
                log.info("job %s (%s): %s", job_id, job.image, why)
                jobs.event(job_id, JobState.RESOLVING, why)
                request = _grown(jobs, job_id, request)  # a request that joined may have asked for a thin image
        except JobCancelled as exc:
            run.finish(recheck=False)
            return cancelled(exc)
        except DuccError as exc:
            published = isinstance(exc, ThinImageNotPushed) or job.published
            now = jobs.get(job_id, follow=False)
            if now is not None and now.cancelled_by:  # cancelled while this attempt failed: no retry
                run.finish(recheck=False)
                return cancelled(JobCancelled(now.cancelled_by), published)
            if exc.temporary and attempts < settings.jobs.max_attempts:
                delay = _retry_delay(settings, attempts)
                log.warning("job %s (%s): %s; retry %d in %ds", job_id, job.image, exc, attempts, delay)
                jobs.event(job_id, JobState.RETRYING, f"{exc}; attempt {attempts} failed, next in {delay}s",
                           error=str(exc), temporary=1, attempts=attempts, retry_at=time.time() + delay,
                           published=int(published))
                raise task.retry(countdown=delay) from exc
            # The timeline keeps a command's whole output; the error (what users see first) is one line.
            detail = exc.detail if isinstance(exc, CvmfsError) else str(exc)
            log.error("job %s (%s) failed: %s", job_id, job.image, detail)
            return fail(detail, str(exc), exc.temporary)
        except Exception as exc:
            run.finish(recheck=False)
            log.exception("job %s (%s): unexpected error", job_id, job.image)
            return fail(f"internal error: {exc.__class__.__name__}: {exc}", f"internal error: {exc}", False)
    assert outcome is not None  # the loop ends with a result or raises
    result = outcome
    changed = result.state == "published" or job.published  # an earlier attempt published it: this one pushed thin
    detail = (
        "published by an earlier attempt" if result.state == "unchanged" and job.published
        else f"already current at {result.tag_digest.short}" if result.state == "unchanged" and result.tag_digest
        else f"{result.layers_unpacked} layers unpacked, {result.layers_reused} reused, {result.seconds:.1f}s"
    ) + (f"; thin image {result.thin}" if result.thin else "")
    if result.thin_error:
        detail += f"; thin image {result.request.thin} not pushed: {result.thin_error}"
    if result.state == "published" and result.revision is not None:
        detail += f"; in revision {result.revision} of {services.view.name}"
    late = jobs.cancelled_by(job_id)  # a cancel that came after the last cancel point
    if late and not result.thin_error:
        detail += f"; cancelled by {late} after " + (
            "publication: the image stays published" if changed else "the tag was found current")
    jobs.event(job_id, JobState.PUBLISHED, detail, error="", attempts=attempts, result=_job_result(result, changed))
    record_conversion(services.redis, "published" if changed else result.state, result.seconds)
    log.info("job %s: %s published (%s)", job_id, job.image, detail)
    if result.state == "published" and result.revision is not None and settings.cvmfs.stratum1_urls:
        task.app.send_task(PROPAGATION_TASK, args=[job_id, result.revision, list(settings.cvmfs.stratum1_urls),
                                                  time.time() + settings.cvmfs.stratum1_timeout])
    return JobState.PUBLISHED


def _recheck_line(result: ConversionResult) -> str:
    """The timeline's line for a recheck's outcome (the job's own result stays what it was)."""
    if result.state == "published":
        return f"checked the tag again: it had moved; {result.layers_unpacked} layers unpacked"
    line = f"checked the tag again: unchanged, {result.tag_digest.short if result.tag_digest else 'its digest'} is published"
    if result.thin is not None and result.thin_pushed:
        line += f"; thin image pushed: {result.thin}"
    return line


def _grown(jobs: JobStore, job_id: str, request: ConversionRequest) -> ConversionRequest:
    """The job's request as it is now: a request that joined the running job may have added a thin image
    (``ducc.service.queue``); the one it started with if the record cannot say."""
    job = jobs.get(job_id, follow=False)
    try:
        now = job.request if job is not None else request
    except ValueError:
        return request
    return now if isinstance(now, ConversionRequest) and now.key == request.key else request


def run_unpublish(services: Collaborators, job_id: str, task: Task) -> str:
    """Unpublish the job's tag (``ducc.unpublish``): a registry error never unpublishes; a temporary one
    is retried like a conversion's, with doubling delays; a permanent one fails the job, tag kept."""
    from ducc.unpublish import unpublish, unpublish_if_gone

    jobs, settings = services.jobs, services.settings
    job = _runnable(jobs, job_id)
    if isinstance(job, str):
        return job
    try:
        request = job.request
        if not isinstance(request, UnpublishRequest):
            raise ValueError(f"job {job_id} is not an unpublish")
    except ValueError as exc:
        jobs.event(job_id, JobState.FAILED, str(exc), error=str(exc), temporary=0, attempts=job.attempts + 1)
        return JobState.FAILED
    attempts = job.attempts + 1
    ref, platform = request.reference, request.platform
    with running(services.redis, services.queue, jobs, job_id, request, settings.jobs.lease) as run:
        try:
            if request.confirm:
                jobs.event(job_id, JobState.RESOLVING,
                           f"{request.reason + '; ' if request.reason else ''}asking {ref.registry} whether {ref} "
                           "is gone (only a 404 of its manifest says so)")
                done = unpublish_if_gone(services.client, services.publisher, ref, platform, services.sinks)
            else:
                jobs.event(job_id, JobState.UNPUBLISHING, request.reason)
                [done] = unpublish(services.publisher, [(ref, platform)], services.sinks)
        except DuccError as exc:
            run.finish(recheck=False)
            if exc.temporary and attempts < settings.jobs.max_attempts:
                delay = _retry_delay(settings, attempts)
                jobs.event(job_id, JobState.RETRYING, f"kept for now: {exc}; attempt {attempts} failed, next in {delay}s",
                           error=str(exc), temporary=1, attempts=attempts, retry_at=time.time() + delay)
                raise task.retry(countdown=delay) from exc
            why = f"kept: cannot tell whether {ref} is gone: {exc}"
            log.error("job %s: %s", job_id, why)
            jobs.event(job_id, JobState.FAILED, why, error=why, temporary=int(exc.temporary), attempts=attempts)
            return JobState.FAILED
        run.finish(recheck=False)
    detail = {
        "unpublished": f"unpublished {done.path}" + (f" ({done.why})" if done.why else ""),
        "kept": f"kept: {done.why}",
        "not published": "nothing to unpublish: not published",
    }[done.outcome]
    jobs.event(job_id, JobState.DONE, detail, error="", attempts=attempts,
               result={"action": "unpublish", "outcome": done.outcome, "path": str(done.path)})
    log.info("job %s (%s): %s", job_id, job.image, detail)
    return JobState.DONE


def run_gc(services: Collaborators, job_id: str | None = None, tick: str | None = None) -> str:
    """Garbage collection of the repository as a job (``ducc.gc``): the job of the schedule's ``tick``
    (the id of beat's message: a message redelivered after its worker died finds the job it created),
    or ``job_id`` (a requeued one). One worker runs a job at a time: it claims the job's lease first.
    Its timeline ends with the summary; every line of the plan is logged."""
    from ducc.gc import Kind, collect, when

    jobs, settings = services.jobs, services.settings
    created = False
    if job_id is None:
        job_id, created = jobs.create("gc", f"garbage collection of {services.view.name}", "schedule",
                                      once=keys.delivery("schedule", tick) if tick else None)
    if not created:
        job = _runnable(jobs, job_id)
        if isinstance(job, str):
            return job
    if not jobs.claim_lease(job_id, settings.jobs.lease):  # a requeue and a redelivery of one tick
        log.info("job %s is running on another worker", job_id)
        return "running"
    with heartbeat(jobs, job_id, settings.jobs.lease):
        jobs.event(job_id, JobState.COLLECTING,
                   f"reading {services.view.name}; grace {settings.gc.grace}s (DUCC_GC_GRACE)")
        try:
            collection = collect(services.publisher, grace=settings.gc.grace, sinks=services.sinks)
        except DuccError as exc:
            log.error("job %s: garbage collection failed: %s", job_id, exc)
            jobs.event(job_id, JobState.FAILED, str(exc), error=str(exc), temporary=int(exc.temporary), attempts=1)
            return JobState.FAILED
        except Exception as exc:
            log.exception("job %s: garbage collection: unexpected error", job_id)
            jobs.event(job_id, JobState.FAILED, f"internal error: {exc.__class__.__name__}: {exc}",
                       error=f"internal error: {exc}", temporary=0, attempts=1)
            return JobState.FAILED
    for line in collection.lines():
        log.info("gc: %s", line)
    summary = collection.summary()
    log.info("job %s: %s", job_id, summary)
    flats, flat_size = collection.holds(Kind.FLAT)
    layers, layer_size = collection.holds(Kind.LAYER)
    freed = collection.freed
    record_gc(services.redis, {"flat": collection.deleted_of(Kind.FLAT), "layer": collection.deleted_of(Kind.LAYER)},
              freed.bytes, {"flats": flat_size.bytes, "layers": layer_size.bytes})
    waiting = collection.plan.waiting
    jobs.event(job_id, JobState.DONE, summary, error="", attempts=1, result={
        "action": "gc", "deleted": [str(item) for item in collection.deleted], "entries_freed": freed.entries,
        "bytes_freed": freed.bytes, "waiting": len(waiting), "next_deletion": when(waiting[0].until) if waiting else None,
        "in_use": len(collection.plan.in_use), "flats": flats, "layers": layers,
        "flat_bytes": flat_size.bytes, "layer_bytes": layer_size.bytes,
    })
    return JobState.DONE


PROPAGATION_POLL = 5.0


def run_propagation(services: Collaborators, job_id: str, revision: int, pending: list[str], deadline: float,
                    task: Task) -> list[str]:
    """Record "visible on <host> at <time>" for each stratum 1 in ``pending`` that serves ``revision``;
    poll the others again later, until ``deadline``. Returns those still pending (none at the end)."""
    from datetime import UTC, datetime

    from ducc.publish.stratum1 import host_of, manifest_url, served_revision

    repository = services.view.name.partition("/")[0]
    waiting = []
    for base in pending:
        served = served_revision(manifest_url(base, repository))
        if served is not None and served >= revision:
            at = datetime.now(UTC).isoformat(timespec="seconds")
            services.jobs.event(job_id, JobState.PUBLISHED, f"visible on {host_of(base)} at {at} (revision {served})",
                                kind=PROPAGATION)
            log.info("job %s: revision %d visible on %s", job_id, revision, host_of(base))
        else:
            waiting.append(base)
    if not waiting:
        return []
    if time.time() + PROPAGATION_POLL <= deadline:
        raise task.retry(args=[job_id, revision, waiting, deadline], countdown=PROPAGATION_POLL)
    for base in waiting:
        services.jobs.event(job_id, JobState.PUBLISHED,
                            f"not visible on {host_of(base)} within {services.settings.cvmfs.stratum1_timeout}s "
                            f"(revision {revision})", kind=PROPAGATION)
        log.warning("job %s: revision %d not visible on %s in time", job_id, revision, host_of(base))
    return waiting


def _job_result(result: ConversionResult, changed: bool) -> dict[str, Any]:
    """What a job's record keeps of its result: the result itself, whether anything changed, and the
    count (not the list) of skipped entries."""
    out = result.to_json()
    out["changed"] = changed
    out["skipped_entries"] = len(result.skipped_entries)
    return out


def run_sync(services: Collaborators) -> dict[str, Any]:
    """Queue a conversion for every wishlist image whose tag moved; the checks are manifest HEADs only.
    What became of each image is recorded for the status page (``ducc.service.lastsync``)."""
    from ducc.sync import check_all
    from ducc.wishlist import read, wishlist_origin

    path = services.settings.sync.wishlist
    if path is None:
        log.info("no wishlist configured (DUCC_WISHLIST): nothing to sync")
        return {"checked": 0}
    try:
        wishes = read(path)
    except WishlistError as exc:
        log.error("%s", exc)
        return {"error": str(exc)}
    queued: list[str] = []
    outcomes: list[ImageOutcome] = []
    guard = threading.Lock()
    origin = wishlist_origin(str(path))

    def check(ref: Reference, platform: Platform) -> str:
        try:
            # with the thin image the wishlist's output_format names, and the wishlist named in the record
            request = replace(wishes.request(ref, platform), origin=origin)
            current, _ = services.converter.is_current(ref, platform, thin=request.thin)
            job = "" if current else services.queue.submit(request, "wishlist").job_id
        except DuccError as exc:
            with guard:
                outcomes.append(ImageOutcome(str(ref), str(platform), "failed", error=str(exc)))
            raise
        with guard:
            outcomes.append(ImageOutcome(str(ref), str(platform), "queued" if job else "unchanged", job=job))
            if job:
                queued.append(job)
        return "queued" if job else "unchanged"

    report = check_all(wishes, services.client, check, per_registry=services.settings.sync.registry_concurrency)
    texts = {wish.text for wish in wishes.wishes}
    lastsync.record(services.redis, LastSync(time.time(), str(path), tuple(outcomes),
                                             {what: why for what, why in report.failures if what in texts}))
    summary = {"checked": len(report.outcomes), "queued": len(queued), "failed": len(report.failures)}
    log.info("wishlist sync: %(checked)d checked, %(queued)d queued, %(failed)d failed", summary)
    for what, why in report.failures:
        log.error("wishlist sync: %s: %s", what, why)
    if services.settings.sync.unpublish_removed_wishes:
        summary["unpublishing"] = queue_removed_wishes(services, origin, report)
    return summary


def queue_removed_wishes(services: Collaborators, origin: str, report: SyncReport) -> int:
    """Queue the unpublishing of every tag this wishlist published that its expansion no longer lists
    (DUCC_UNPUBLISH_REMOVED_WISHES). Nothing when a wish could not be expanded: its tags would look removed."""
    from ducc.sync import removed_wishes

    if report.unexpanded:
        log.warning("wishlist sync: not unpublishing tags that left the wishlist: %s could not be expanded",
                    ", ".join(report.unexpanded))
        return 0
    view = services.view
    removed = removed_wishes(((link, view.read_record_at(link)) for link, _ in view.published()), origin,
                             report.planned)
    for ref, platform in removed:
        services.queue.submit(UnpublishRequest(ref, platform, confirm=False, reason=f"left the {origin}"), "wishlist")
    if removed:
        log.info("wishlist sync: %d tags left the wishlist: unpublishing them", len(removed))
    return len(removed)


def run_reconcile(services: Collaborators) -> int:
    """Requeue jobs whose worker died and jobs a dispatcher dropped; returns how many."""
    settings, client = services.settings, services.redis
    if not try_lease(client, keys.RECONCILE_LEASE, max(1, settings.jobs.lease // 3)):
        return 0
    requeued = 0
    now = time.time()
    for job in services.jobs.unfinished():
        if services.jobs.lease_alive(job.id):
            continue
        lost = job.state in ACTIVE_STATES
        overdue_retry = (job.state == JobState.RETRYING
                         and now - job.updated_at > settings.jobs.retry_base * 2 ** job.attempts + 60)
        if lost or overdue_retry:
            log.warning("job %s (%s) was %s with no live worker: requeued", job.id, job.image, job.state)
            services.queue.requeue(job.id, f"requeued: its worker stopped while {job.state}")
            requeued += 1
    # Jobs a dispatcher took but did not hand to Celery: seen there at two reconciliations in a row.
    current = {str(j) for j in client.lrange(keys.DISPATCHING, 0, -1)}
    previous = {str(j) for j in client.smembers(keys.DISPATCHING_SEEN)}
    pipe = client.pipeline()
    pipe.delete(keys.DISPATCHING_SEEN)
    if current:
        pipe.sadd(keys.DISPATCHING_SEEN, *current)
        pipe.expire(keys.DISPATCHING_SEEN, settings.jobs.lease * 4)
    pipe.execute()
    for job_id in current & previous:
        if client.lrem(keys.DISPATCHING, 1, job_id):
            client.lpush(keys.INCOMING, job_id)
            log.warning("job %s was dropped by a dispatcher: queued again", job_id)
            requeued += 1
    return requeued


def start_dispatcher(services: Collaborators, app: Celery) -> threading.Event:
    """Run a dispatcher thread in this (worker main) process; set the returned event to stop it."""
    stop = threading.Event()
    dispatcher = Dispatcher(services.redis, lambda name, args: app.send_task(name, args=args))
    threading.Thread(target=dispatcher.run, args=(stop,), name="ducc-dispatcher", daemon=True).start()
    return stop


def register(app: Celery, services: Collaborators) -> Celery:
    """Add the task bodies to ``app`` (worker processes only)."""

    @app.task(name=CONVERT_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def convert(self: Task, job_id: str) -> str:
        return run_conversion(services, job_id, self)

    @app.task(name=SYNC_TASK)  # type: ignore[untyped-decorator]
    def sync() -> dict[str, Any]:
        return run_sync(services)

    @app.task(name=PROPAGATION_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def propagation(self: Task, job_id: str, revision: int, pending: list[str], deadline: float) -> list[str]:
        return run_propagation(services, job_id, revision, pending, deadline, self)

    @app.task(name=RECONCILE_TASK)  # type: ignore[untyped-decorator]
    def reconcile() -> int:
        return run_reconcile(services)

    @app.task(name=UNPUBLISH_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def unpublish(self: Task, job_id: str) -> str:
        return run_unpublish(services, job_id, self)

    @app.task(name=GC_TASK, bind=True)  # type: ignore[untyped-decorator]
    def gc(self: Task, job_id: str | None = None) -> str:
        return run_gc(services, job_id, tick=self.request.id)

    def at_start(sender: object = None, **_: object) -> None:
        start_dispatcher(services, app)
        try:
            run_reconcile(services)
        except Exception:  # never keep a worker from starting
            log.exception("reconciliation at start-up failed")

    worker_ready.connect(at_start, weak=False)
    return app
