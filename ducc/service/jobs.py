"""Job status in Redis: every request's id and timeline (docs/design.md §10), queryable by id or image.

A job is a hash ``ducc:job:<id>`` plus a list of timeline events
``ducc:job:<id>:events``; both expire (``ttl``) so Redis never fills up. Jobs
are created by ``ducc.queue`` (atomically with their queueing); everything
after that is written here. Losing Redis loses no published data: the
repository stays the source of truth, and the next wishlist sync converges.

States, in order: received, queued, resolving, fetching, unpacking,
flattening, publishing, thin (only when a thin image was asked for: pushing it,
then "thin image pushed: <ref>@<digest>"), then published, failed or cancelled
(retrying in between for temporary errors). A request coalesced onto another job records
``coalesced_into`` and reports that job's state and outcome. A job that checked its tag
again because a request joined it while it ran has a line for each recheck (kind
``recheck``: "checked the tag again: ..."); its result stays what the job did.

A final state is final: ``event`` never moves a job out of published, failed or
cancelled into a working state (a worker that had not yet noticed a cancel cannot
bring the job back). ``cancelled_by`` says who asked for a cancel; a converting
worker learns of it at the conversion's cancel points (``JobCancelCheck`` raises
``JobCancelled``; ``ducc.cancel`` lists the points), never from a progress report.
A cancel that comes after the image was published leaves the job published.

Jobs of other kinds (``Job.kind``, the ``action`` of the request they carry) have
timelines too, ending in done or failed: an unpublish (received, queued,
resolving: asking the registry, unpublishing, done) and a garbage collection
(received, collecting, done), which the scheduled task creates itself
(``JobStore.create``) rather than queueing.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from ducc.errors import JobCancelled
from ducc.model.request import ConversionRequest, UnpublishRequest, parse_request
from ducc.service import keys


class JobState(StrEnum):
    """A job's state; the timeline records every one it passed through."""

    RECEIVED = "received"
    QUEUED = "queued"
    RESOLVING = "resolving"
    FETCHING = "fetching"
    UNPACKING = "unpacking"
    FLATTENING = "flattening"
    PUBLISHING = "publishing"
    THIN = "thin"  # pushing the thin image, after the image is published
    RETRYING = "retrying"
    PUBLISHED = "published"
    FAILED = "failed"
    CANCELLED = "cancelled"  # by ducc cancel or the API: stopped, nothing half published
    UNPUBLISHING = "unpublishing"  # an unpublish job removing the tag
    COLLECTING = "collecting"  # a garbage collection reading and sweeping the repository
    DONE = "done"  # an unpublish or a garbage collection finished (the detail says what it did)


PROPAGATION = "propagation"  # the kind of "visible on <host> at <time>" events (DUCC_STRATUM1_URLS)
RECHECK = "recheck"  # the kind of "checked the tag again: ..." events (a request joined a running job)

FINAL_STATES = frozenset({JobState.PUBLISHED, JobState.FAILED, JobState.CANCELLED, JobState.DONE})
ACTIVE_STATES = frozenset({JobState.RESOLVING, JobState.FETCHING, JobState.UNPACKING, JobState.FLATTENING,
                           JobState.PUBLISHING, JobState.THIN, JobState.UNPUBLISHING, JobState.COLLECTING})
# The final states as a Lua set, for every script that must tell a finished job (``final[state]``).
LUA_FINAL_STATES = "{" + ", ".join(f"{state} = true" for state in sorted(FINAL_STATES)) + "}"


# KEYS: job, events, active. ARGV: job id, state, is the state final (1/0), event JSON, ttl,
# membership of the active set (add | remove | ''), then field, value, ... for the job's hash.
_EVENT = """
local final = """ + LUA_FINAL_STATES + """
local current = redis.call('HGET', KEYS[1], 'state')
if current and final[current] and ARGV[3] == '0' then
  return
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
if ARGV[6] == 'add' then redis.call('SADD', KEYS[3], ARGV[1]) elseif ARGV[6] == 'remove' then redis.call('SREM', KEYS[3], ARGV[1]) end
"""


# KEYS: job, events, recent, once ('' for none). ARGV: job id, the job's fields as JSON, "received" event
# JSON, now, how many recent jobs are kept, ttl. Returns the id of the job: the new one, or the one ``once`` names.
_CREATE = """
if KEYS[4] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then return seen end
  redis.call('SET', KEYS[4], ARGV[1], 'EX', tonumber(ARGV[6]))
end
for name, value in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], name, value) end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[5]) - 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
return ARGV[1]
"""


def new_job_id() -> str:
    """Sortable by time, unguessable: ``<ms since epoch, hex>-<random>``."""
    return f"{int(time.time() * 1000):x}-{secrets.token_hex(5)}"


@dataclass
class Job:
    id: str
    image: str
    platform: str
    source: str
    state: str
    received_at: float
    updated_at: float
    error: str = ""
    temporary: bool = False
    attempts: int = 0
    bytes: int = 0
    coalesced_into: str = ""
    cancelled_by: str = ""  # who asked for a cancel (the job may still be stopping)
    published: bool = False  # its image is published; it retries only its thin push
    result: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    request_json: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def kind(self) -> str:
        """``convert`` (most jobs), ``unpublish`` or ``gc``."""
        return str(self.request_json.get("action") or "convert")

    @property
    def stops_on_cancel(self) -> bool:
        """Whether a running job of this kind stops when cancelled: a conversion does (nothing is half
        published); an unpublish or a garbage collection removes things and is never stopped halfway."""
        return self.kind == "convert"

    @property
    def request(self) -> ConversionRequest | UnpublishRequest:
        """The request this job carries out (ValueError if its record does not parse, or it has none: gc)."""
        return parse_request(self.request_json or {"image": self.image, "platform": self.platform})

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "image": self.image, "platform": self.platform, "source": self.source,
            "state": self.state, "received_at": self.received_at, "updated_at": self.updated_at,
            "error": self.error or None, "temporary": self.temporary, "attempts": self.attempts,
            "bytes": self.bytes, "coalesced_into": self.coalesced_into or None, "result": self.result,
            "cancelled_by": self.cancelled_by or None, "timeline": self.events,
        }


class JobStore:
    """Reads and writes job records; one instance per process, built by ``ducc.wiring``."""

    def __init__(self, client: redis.Redis, *, ttl: int = 14 * 86400, recent: int = keys.RECENT_JOBS) -> None:
        self.redis = client
        self.ttl = ttl
        self.recent = recent
        self._event = client.register_script(_EVENT)
        self._create = client.register_script(_CREATE)

    # -- writing ------------------------------------------------------------------------

    def event(self, job_id: str, state: str, detail: str = "", *, kind: str = "", **fields: Any) -> None:
        """Append a timeline event and move the job to ``state``, unless the job is in a final state and
        ``state`` is not one (then nothing changes). Who asked for a cancel is ``cancelled_by``'s to say.

        ``kind`` marks events that report on something other than the conversion's stage (``PROPAGATION``:
        where a published revision is visible), so pages can show them apart. Jobs a worker has started
        and not finished are also kept in ``ducc:jobs:active``, which reconciliation walks: it finds an
        interrupted job however many jobs came after it.
        """
        now = time.time()
        mapping: dict[str, str | int | float] = {"state": state, "updated_at": now}
        for name, value in fields.items():
            if isinstance(value, (dict, list)):
                mapping[name] = json.dumps(value)
            else:
                mapping[name] = value if isinstance(value, (int, float)) else str(value)
        entry: dict[str, Any] = {"state": str(state), "at": now, "detail": detail}
        if kind:
            entry["kind"] = kind
        membership = "add" if state in ACTIVE_STATES or state == JobState.RETRYING else \
            "remove" if state in FINAL_STATES else ""
        pairs = [str(item) for pair in mapping.items() for item in pair]
        self._event(keys=[keys.job(job_id), keys.events(job_id), keys.ACTIVE], args=[
            job_id, str(state), int(state in FINAL_STATES), json.dumps(entry),
            self.ttl, membership, *pairs,
        ])

    def set_bytes(self, job_id: str, count: int) -> None:
        """Record the bytes fetched so far."""
        self.redis.hset(keys.job(job_id), mapping={"bytes": count, "updated_at": time.time()})

    def cancelled_by(self, job_id: str) -> str:
        """Who asked for a cancel of ``job_id``; empty if nobody did."""
        return str(self.redis.hget(keys.job(job_id), "cancelled_by") or "")

    def create(self, kind: str, subject: str, source: str, *, once: str | None = None) -> tuple[str, bool]:
        """A new job of ``kind`` about ``subject`` (shown where a conversion shows its image) that no
        queue dispatches: its task runs it at once (the scheduled garbage collection). With ``once``
        (a key naming the message that asks, see ``keys.delivery``), a message delivered again gets the
        job it created the first time. Returns the job's id and whether it is new."""
        job_id = new_job_id()
        now = time.time()
        made = self._create(keys=[keys.job(job_id), keys.events(job_id), keys.RECENT, once or ""], args=[
            job_id, json.dumps({"id": job_id, "image": subject, "platform": "", "source": source,
                                "state": str(JobState.RECEIVED), "request": json.dumps({"action": kind}),
                                "received_at": repr(now), "updated_at": repr(now)}),
            json.dumps({"state": str(JobState.RECEIVED), "at": now, "detail": source}), now, self.recent, self.ttl,
        ])
        return str(made), str(made) == job_id

    def claim_lease(self, job_id: str, seconds: int) -> bool:
        """Take the job's lease unless a live worker holds it: whoever takes it runs the job."""
        return bool(self.redis.set(keys.job_lease(job_id), "1", nx=True, ex=seconds))

    # -- reading ------------------------------------------------------------------------

    def get(self, job_id: str, *, follow: bool = True) -> Job | None:
        """The job; a coalesced job reports the state, outcome and timeline of the job it joined."""
        raw = self.redis.hgetall(keys.job(job_id))
        if not raw:
            return None
        job = self._decode({str(k): str(v) for k, v in raw.items()})
        job.events = [json.loads(e) for e in self.redis.lrange(keys.events(job_id), 0, -1)]
        if follow and job.coalesced_into:
            target = self.get(job.coalesced_into, follow=True)
            if target is not None:
                job.state, job.error, job.temporary = target.state, target.error, target.temporary
                job.result, job.bytes, job.attempts = target.result, target.bytes, target.attempts
                job.cancelled_by = target.cancelled_by
                job.events = job.events + [dict(e, job=target.id) for e in target.events if e["state"] != "received"]
        return job

    def _decode(self, raw: dict[str, str]) -> Job:
        return Job(
            id=raw["id"], image=raw.get("image", ""), platform=raw.get("platform", ""), source=raw.get("source", ""),
            state=raw.get("state", "received"), received_at=float(raw.get("received_at", 0)),
            updated_at=float(raw.get("updated_at", 0)), error=raw.get("error", ""),
            temporary=raw.get("temporary") in ("1", "True", "true"), attempts=int(raw.get("attempts", 0) or 0),
            bytes=int(raw.get("bytes", 0) or 0), coalesced_into=raw.get("coalesced_into", ""),
            cancelled_by=raw.get("cancelled_by", ""), published=raw.get("published") == "1",
            result=json.loads(raw["result"]) if raw.get("result") else {},
            request_json=json.loads(raw["request"]) if raw.get("request") else {},
        )

    def for_image(self, image: str) -> list[Job]:
        jobs = (self.get(str(job_id)) for job_id in self.redis.lrange(keys.by_image(image), 0, -1))
        return [job for job in jobs if job is not None]

    def recent_jobs(self, limit: int = 50) -> list[Job]:
        ids = self.redis.zrevrange(keys.RECENT, 0, limit - 1)
        jobs = (self.get(str(job_id)) for job_id in ids)
        return [job for job in jobs if job is not None]

    def unfinished(self) -> Iterator[Job]:
        """Jobs a worker started and did not finish: what reconciliation looks at."""
        for job_id in self.redis.smembers(keys.ACTIVE):
            job = self.get(str(job_id), follow=False)
            if job is None or job.finished:
                self.redis.srem(keys.ACTIVE, job_id)  # expired or already done
            elif not job.coalesced_into:
                yield job

    # -- worker leases ------------------------------------------------------------------

    def touch_lease(self, job_id: str, seconds: int) -> None:
        """A running job renews this; when it lapses the worker is presumed dead."""
        self.redis.set(keys.job_lease(job_id), "1", ex=seconds)

    def lease_alive(self, job_id: str) -> bool:
        return bool(self.redis.exists(keys.job_lease(job_id)))

    def drop_lease(self, job_id: str) -> None:
        self.redis.delete(keys.job_lease(job_id))


class JobProgress:
    """Progress of a conversion recorded in its job's timeline (stages) and byte count (throttled).

    A report never stops the conversion: cancelling is ``JobCancelCheck``'s, at the cancel points.
    """

    def __init__(self, store: JobStore, job_id: str, interval: float = 1.0) -> None:
        self.store = store
        self.job_id = job_id
        self.interval = interval
        self.layers: dict[object, int] = {}
        self.last = 0.0
        self.lock = threading.Lock()  # layers report from several threads

    def stage(self, ref: object, stage: str, detail: str = "") -> None:
        if stage in (JobState.PUBLISHED, "unchanged"):
            return  # the task records the outcome itself, with the result
        self.store.event(self.job_id, stage, detail)

    def layer(self, digest: object, done: int, total: int | None) -> None:
        with self.lock:
            self.layers[digest] = done
            now = time.monotonic()
            if now - self.last >= self.interval or (total is not None and done >= total):
                self.last = now
                self.store.set_bytes(self.job_id, sum(self.layers.values()))


class JobCancelCheck:
    """The cancel check (``ducc.cancel.CancelCheck``) of a job's conversion: raises ``JobCancelled`` once
    someone cancelled the job. A point checked again within ``interval`` seconds (a download checks at
    every chunk) is answered by the last look, so a download stops within about ``interval`` seconds."""

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.5) -> None:
        self.store = store
        self.job_id = job_id
        self.interval = interval
        self.looked: dict[str, float] = {}
        self.lock = threading.Lock()  # layers check from several threads

    def __call__(self, point: str) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.looked.get(point, -self.interval) < self.interval:
                return
            self.looked[point] = now
        cancelled_by = self.store.cancelled_by(self.job_id)
        if cancelled_by:
            raise JobCancelled(cancelled_by, point)
