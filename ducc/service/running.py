"""One running job: its leases, its heartbeat and its finish, owned by one context manager.

``running(...)`` takes, in this order, the image lease (one conversion per
request key across workers), marks the job as the running one for its key
(later requests coalesce onto it and make it check the tag again), and keeps
one heartbeat thread renewing all three every ``seconds / 3``: the image
lease, the running mark and the job lease (reconciliation requeues a job
whose job lease lapsed). On exit, however the block ends, the heartbeat stops
and the job lease and image lease are released. ``RunningJob.finish`` is the
atomic "look again, or stop being the running job" of ``Queue.finish``.

``heartbeat(...)`` is that thread; alone, renewing the job lease only, it serves a
job that is no request's (the scheduled garbage collection): reconciliation
requeues it if its worker dies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from ducc.model.request import QueuedRequest
from ducc.service import keys
from ducc.service.jobs import JobStore
from ducc.service.locks import Lease
from ducc.service.queue import Queue

log = logging.getLogger(__name__)


@dataclass
class RunningJob:
    job_id: str
    request: QueuedRequest
    queue: Queue

    def finish(self, *, recheck: bool = True) -> bool:
        """True if a request arrived meanwhile and the tag must be checked again; otherwise the job
        stops being the running one (``recheck=False``: stop in any case, on failure)."""
        return self.queue.finish(self.job_id, self.request, recheck=recheck)


@contextmanager
def running(
    client: redis.Redis, queue: Queue, jobs: JobStore, job_id: str, request: QueuedRequest, seconds: int
) -> Iterator[RunningJob]:
    image_lease = Lease(client, keys.image_lease(request.key), seconds=seconds)
    image_lease.acquire()
    try:
        queue.started(job_id, request, seconds)
        with heartbeat(jobs, job_id, seconds, also=lambda: queue.renew(job_id, request, seconds),
                       leases=(image_lease,)):
            yield RunningJob(job_id, request, queue)
    finally:
        image_lease.release()


@contextmanager
def heartbeat(
    jobs: JobStore, job_id: str, seconds: int, *, also: Callable[[], object] = lambda: None,
    leases: Sequence[Lease] = (),
) -> Iterator[None]:
    """Keep ``job_id``'s job lease alive while the block runs, from one thread every ``seconds / 3``,
    with ``also`` (another Redis renewal) and ``leases``; the job lease is dropped at the end."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                jobs.touch_lease(job_id, seconds)
                also()
            except redis.RedisError as exc:
                log.warning("job %s: cannot renew its lease: %s", job_id, exc)
            for lease in leases:
                lease.renew()
            if stop.wait(seconds / 3):
                return

    thread = threading.Thread(target=beat, name=f"job-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        jobs.drop_lease(job_id)
