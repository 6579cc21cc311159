"""Submitting conversion requests: one job per request, one conversion per image at a time.

``submit`` records the request (it is "accepted" once this returns), then
either coalesces it onto a job for the same image and platform that is still
waiting in the queue (both ids then report that job's outcome) or sends a new
task. Once a worker starts a job it clears the "waiting" mark *before*
resolving the tag, so a request that arrives later gets a job of its own and
sees the registry as it is then. Nothing here converts: the web process
imports this module and stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from ducc.errors import DuccError
from ducc.jobs import PREFIX, JobStore, image_key

log = logging.getLogger(__name__)

CONVERT_TASK = "ducc.convert"
SYNC_TASK = "ducc.sync"
RECONCILE_TASK = "ducc.reconcile"
WAITING_TTL = 24 * 3600

# Compare-and-delete: a worker clears the waiting mark only if it is still its own job's.
_CLEAR_IF_MINE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class QueueUnavailable(DuccError):
    """The broker did not take the request; the sender should retry (HTTP 503)."""

    temporary = True


def waiting_key(image: str, platform: str) -> str:
    return f"{PREFIX}:waiting:{image_key(image, platform)}"


class Queue:
    def __init__(self, client: redis.Redis, jobs: JobStore, send: Callable[[str, list[str]], None]) -> None:
        self.redis = client
        self.jobs = jobs
        self._send = send

    def submit(self, image: str, platform: str, source: str) -> tuple[str, str | None]:
        """Accept a request for ``image`` on ``platform``; returns (job id, id it was coalesced into or None)."""
        try:
            job_id = self.jobs.create(image, platform, source)
            answer = self.redis.set(waiting_key(image, platform), job_id, nx=True, ex=WAITING_TTL, get=True)
            existing = str(answer) if isinstance(answer, (str, bytes)) else None
        except redis.RedisError as exc:
            raise QueueUnavailable(f"cannot record the request: {exc}") from exc
        if existing and existing != job_id and self.jobs.get(existing, follow=False) is not None:
            self.jobs.coalesce(job_id, existing)
            log.info("job %s (%s %s from %s) coalesced into %s", job_id, image, platform, source, existing)
            return job_id, existing
        if existing:  # a stale mark (its job expired): take it over
            self.redis.set(waiting_key(image, platform), job_id, ex=WAITING_TTL)
        self.enqueue(job_id, "queued", f"from {source}")
        log.info("job %s: %s (%s) queued from %s", job_id, image, platform, source)
        return job_id, None

    def enqueue(self, job_id: str, state: str = "queued", detail: str = "") -> None:
        """Send (or send again) the task for an existing job."""
        try:
            self._send(CONVERT_TASK, [job_id])
        except Exception as exc:  # kombu raises many types; all mean "not queued"
            job = self.jobs.get(job_id, follow=False)
            if job is not None:
                self.redis.eval(_CLEAR_IF_MINE, 1, waiting_key(job.image, job.platform), job_id)
                self.jobs.event(job_id, "failed", f"queue unavailable: {exc}", error=f"queue unavailable: {exc}",
                                temporary=1)
            raise QueueUnavailable(f"the queue did not accept job {job_id}: {exc}") from exc
        self.jobs.event(job_id, state, detail)

    def started(self, job_id: str, image: str, platform: str) -> None:
        """Called by the worker before it resolves: later requests must not coalesce onto this job."""
        self.redis.eval(_CLEAR_IF_MINE, 1, waiting_key(image, platform), job_id)
