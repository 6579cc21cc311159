"""The Redis schema: every key ducc (and the Celery transport it uses) keeps in Redis, in one place. Pure.

Redis holds only the queue, locks, job status and metrics (docs/design.md §1); the
repository stays the source of truth, so losing Redis loses no published data.

::

    ducc:job:<id>                     hash   one job (fields: see ducc.service.jobs.Job; ``request`` is its JSON)
    ducc:job:<id>:events              list   its timeline, JSON events, oldest first
    ducc:jobs:recent                  zset   job ids by time received (the newest RECENT_JOBS)
    ducc:jobs:image:<image>           list   the latest job ids of one image, newest first
    ducc:jobs:active                  set    jobs a worker started and did not finish (reconciliation)
    ducc:incoming                     list   accepted jobs waiting for a dispatcher
    ducc:dispatching                  list   jobs a dispatcher took and has not handed to Celery yet
    ducc:dispatching:seen             set    what reconciliation saw there last time
    ducc:waiting:<request key>        string the queued job of an image (coalescing)
    ducc:running:<request key>        string the running job of an image (coalescing, recheck)
    ducc:recheck:<request key>        string "a request arrived while it ran: check the tag again"
    ducc:lease:<id>                   string a running job's worker is alive (expires unless renewed)
    ducc:lock:<name>                  string a lease (ducc.service.locks): image:…, layer:…, publish:…
    ducc:event:<source>:<event id>    string the job a webhook delivery (or beat's message: source schedule) created
    ducc:sync:last                    string the last wishlist sync's outcome per image, JSON (the status page)
    ducc:metrics:requests             hash   <source>|<outcome> → count
    ducc:metrics:conversions          hash   <result> → count
    ducc:metrics:duration             hash   histogram buckets le=<bound>, count, sum
    ducc:metrics:gc                   hash   deleted|<layer|flat> → count, bytes_freed → bytes
    ducc:metrics:repository           hash   <layers|flats> → bytes, as the last garbage collection measured
    ducc                              list   Celery's queue (kombu's Redis transport)
    unacked                           hash   kombu: messages taken by a worker, not yet acknowledged
"""

from __future__ import annotations

PREFIX = "ducc"
RECENT_JOBS = 1000  # how many job ids ducc:jobs:recent keeps

INCOMING = f"{PREFIX}:incoming"
DISPATCHING = f"{PREFIX}:dispatching"
DISPATCHING_SEEN = f"{DISPATCHING}:seen"
RECENT = f"{PREFIX}:jobs:recent"
ACTIVE = f"{PREFIX}:jobs:active"
SYNC_LAST = f"{PREFIX}:sync:last"
METRICS_REQUESTS = f"{PREFIX}:metrics:requests"
METRICS_CONVERSIONS = f"{PREFIX}:metrics:conversions"
METRICS_DURATION = f"{PREFIX}:metrics:duration"
METRICS_GC = f"{PREFIX}:metrics:gc"
METRICS_REPOSITORY = f"{PREFIX}:metrics:repository"

# Celery's own keys (kombu's Redis transport): read for metrics, never written by ducc.
CELERY_QUEUE = "ducc"
KOMBU_UNACKED = "unacked"

# Lua scripts build these from the prefix themselves; they receive it as an argument.
JOB_PREFIX = f"{PREFIX}:job:"
BY_IMAGE_PREFIX = f"{PREFIX}:jobs:image:"


def job(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def events(job_id: str) -> str:
    return f"{job(job_id)}:events"


def by_image(image: str) -> str:
    return f"{BY_IMAGE_PREFIX}{image}"


# ``key`` is a request's coalescing key (``ConversionRequest.key``: image|platform[|repository]).
def waiting(key: str) -> str:
    return f"{PREFIX}:waiting:{key}"


def running(key: str) -> str:
    return f"{PREFIX}:running:{key}"


def recheck(key: str) -> str:
    return f"{PREFIX}:recheck:{key}"


def job_lease(job_id: str) -> str:
    return f"{PREFIX}:lease:{job_id}"


def lock(name: str) -> str:
    return f"{PREFIX}:lock:{name}"


def delivery(source: str, event_id: str) -> str:
    return f"{PREFIX}:event:{source}:{event_id}"


# Names of leases (``lock(name)``): what each one serialises.
def image_lease(key: str) -> str:
    return f"image:{key}"


def layer_lease(digest: object) -> str:
    return f"layer:{digest}"


def publish_lease(repository: str) -> str:
    return f"publish:{repository}"


RECONCILE_LEASE = "reconcile"
