"""Submitting conversion requests: one job per request, one conversion per image at a time.

Unpublish requests (``UnpublishRequest``) are queued the same way, under keys of their own; a
dispatcher hands each job to the task of its kind (``ducc.convert``, ``ducc.unpublish``, ``ducc.gc``).

``Queue.submit`` takes a request (``QueuedRequest``) and is one Redis round trip (a
Lua script, atomic): it records the job (the request is "accepted" once this returns), answers a redelivered event
with the job it created the first time, coalesces onto a job of the same image
and platform that is still waiting (both ids then report that job's outcome),
or appends the job to ``ducc:incoming``. A request that joins a job keeps
what it asked for: the job takes on its thin image (and the account that
pushes it) and its origin where the job has none, and says so in its
timeline; a request for another thin image than the job pushes is a job of
its own, which the image lease runs after it. A ``Dispatcher`` in every worker
moves incoming jobs to Celery (``ducc.convert``): the web process never pays
for building Celery messages and needs nothing but Redis.

A request for an image that is being converted coalesces onto the running
job too, but that job has already resolved the tag: the request leaves a
"recheck" mark, and the job checks the tag again (one HEAD; a conversion if
it moved) before it finishes. Checking the mark and ceasing to be the
running job is one atomic step, so no request can slip in between and be
answered with an image older than its push.

Delivery is at least once: a dispatcher that dies between taking a job and
sending it leaves the job in ``ducc:dispatching``, and reconciliation puts it
back. A job sent twice is harmless: the task skips finished and running jobs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from ducc.errors import ServiceUnavailable
from ducc.model.request import QueuedRequest
from ducc.service import keys
from ducc.service.jobs import ACTIVE_STATES, LUA_FINAL_STATES, JobStore, new_job_id

log = logging.getLogger(__name__)

CONVERT_TASK = "ducc.convert"
SYNC_TASK = "ducc.sync"
RECONCILE_TASK = "ducc.reconcile"
PROPAGATION_TASK = "ducc.propagation"
UNPUBLISH_TASK = "ducc.unpublish"
GC_TASK = "ducc.gc"
TASK_OF_KIND = {"convert": CONVERT_TASK, "unpublish": UNPUBLISH_TASK, "gc": GC_TASK}
WAITING_TTL = 24 * 3600
EVENT_TTL = 24 * 3600

# KEYS: job, events, recent, by_image, incoming, metrics, waiting, running, recheck, delivery ('' for none)
_SUBMIT = """
local job, events, recent_key, by_image, incoming, metrics = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local waiting, running, recheck, event_key = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local job_prefix, job_id, image, platform, source, request = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now, ttl, waiting_ttl, recent, event_ttl = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
if event_key ~= '' then
  local seen = redis.call('GET', event_key)
  if seen then
    redis.call('HINCRBY', metrics, source .. '|duplicate', 1)
    return {'duplicate', seen}
  end
end
redis.call('HSET', job, 'id', job_id, 'image', image, 'platform', platform, 'source', source, 'request', request,
           'state', 'queued', 'received_at', now, 'updated_at', now)
redis.call('RPUSH', events, cjson.encode({state = 'received', at = tonumber(now), detail = source}))
redis.call('ZADD', recent_key, now, job_id)
redis.call('ZREMRANGEBYRANK', recent_key, 0, -recent - 1)
redis.call('LPUSH', by_image, job_id)
redis.call('LTRIM', by_image, 0, 49)
redis.call('EXPIRE', by_image, ttl)
local outcome, target
-- a job that ended (a cancelled one still marked waiting or running, say) is never joined
local final = FINAL
local function open(id)
  if not id then return false end
  local state = redis.call('HGET', job_prefix .. id, 'state')
  return state and not final[state]
end
-- Joining job ``id`` keeps what this request asks for: the job takes on its thin image (with the account
-- that pushes it and the repository its layer URLs name) and its origin where it has none. The job's request
-- as it becomes, and what it gained;
-- nil if the job pushes another thin image (one job pushes one): then this request is a job of its own.
local mine = cjson.decode(request)
local function joined(id)
  local theirs = cjson.decode(redis.call('HGET', job_prefix .. id, 'request') or '{}')
  if mine.action or theirs.action then return theirs, '' end
  local gained = ''
  if mine.thin then
    if not theirs.thin then
      theirs.thin, theirs.thin_user, theirs.thin_repo = mine.thin, mine.thin_user, mine.thin_repo
      gained = 'thin image ' .. mine.thin
    elseif theirs.thin ~= mine.thin or (mine.thin_user and theirs.thin_user and mine.thin_user ~= theirs.thin_user) then
      return nil
    else
      if mine.thin_user and not theirs.thin_user then theirs.thin_user = mine.thin_user end
      if mine.thin_repo and not theirs.thin_repo then theirs.thin_repo = mine.thin_repo end
    end
  end
  if mine.origin and not theirs.origin then
    theirs.origin = mine.origin
    gained = gained .. (gained == '' and '' or ', ') .. 'origin ' .. mine.origin
  end
  return theirs, gained
end
local function coalesce(into, theirs, gained, why)
  if gained ~= '' then
    local key = job_prefix .. into
    redis.call('HSET', key, 'request', cjson.encode(theirs))
    redis.call('RPUSH', key .. ':events', cjson.encode({state = redis.call('HGET', key, 'state'), at = tonumber(now),
      detail = 'job ' .. job_id .. ' joined it and adds ' .. gained}))
    why = why .. '; it takes on ' .. gained
  end
  redis.call('HSET', job, 'coalesced_into', into)
  redis.call('RPUSH', events, cjson.encode({state = 'queued', at = tonumber(now), detail = 'coalesced into ' .. into .. ' (' .. why .. ')'}))
  outcome, target = 'coalesced', into
end
local queued = redis.call('GET', waiting)
local converting = redis.call('GET', running)
local theirs, gained
if open(queued) then theirs, gained = joined(queued) end
if theirs then
  coalesce(queued, theirs, gained, 'same image already queued')
else
  if open(converting) then theirs, gained = joined(converting) end
  if theirs then
    -- the running job has resolved the tag already: it must look again before it finishes
    redis.call('SET', recheck, '1', 'EX', waiting_ttl)
    coalesce(converting, theirs, gained, 'same image converting; it checks the tag again before it finishes')
  else
    -- a job of its own, after the one that pushes another thin image (the image lease runs them one at a time)
    local other = (open(queued) and queued) or (open(converting) and converting) or nil
    local detail = 'from ' .. source .. (other and ('; job ' .. other .. ' pushes another thin image') or '')
    if not open(queued) then redis.call('SET', waiting, job_id, 'EX', waiting_ttl) end
    redis.call('RPUSH', events, cjson.encode({state = 'queued', at = tonumber(now), detail = detail}))
    redis.call('LPUSH', incoming, job_id)
    outcome, target = 'accepted', job_id
  end
end
redis.call('EXPIRE', job, ttl)
redis.call('EXPIRE', events, ttl)
if event_key ~= '' then redis.call('SET', event_key, job_id, 'EX', event_ttl) end
redis.call('HINCRBY', metrics, source .. '|' .. outcome, 1)
return {outcome, target}
""".replace("FINAL", LUA_FINAL_STATES)

# A worker starting a job: it is no longer waiting (if the mark is still its own), it is running.
_STARTED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
return 1
"""
# A live worker keeps its running mark.
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end return 0"
# A worker about to finish: if a request arrived meanwhile (recheck), it must look again (1);
# otherwise it stops being the running job (0), atomically, so no request can slip in between.
_FINISH = """
if ARGV[2] == '1' and redis.call('GET', KEYS[2]) then
  redis.call('DEL', KEYS[2])
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


# A cancel. KEYS: job, events, active, incoming, waiting, running, job lease, conversion metrics.
# ARGV: job id, who, now, "cancelled" event JSON, "cancel requested" event JSON, ttl, stops on cancel
# (1/0), "published, thin push cancelled" event JSON.
# A job a live worker runs is only marked (the worker stops at its next cancel point and records
# the end); any other unfinished job ends here, atomically, and leaves every queue mark. A job whose
# image is published and that waits to retry its thin push ends published: only the push is cancelled.
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'unknown', ''} end
local final = FINAL
if final[state] then return {'finished', state} end
local working = {WORKING}
local running = working[state] and redis.call('EXISTS', KEYS[7]) == 1
if running and ARGV[7] == '0' then return {'busy', state} end
redis.call('HSET', KEYS[1], 'cancelled_by', ARGV[2], 'updated_at', ARGV[3])
if running then
  redis.call('RPUSH', KEYS[2], ARGV[5])
  return {'requested', state}
end
local outcome = 'cancelled'
if redis.call('HGET', KEYS[1], 'published') == '1' then
  outcome = 'published'
  redis.call('HSET', KEYS[1], 'state', 'published', 'error', '', 'temporary', '0')
  redis.call('RPUSH', KEYS[2], ARGV[8])
  redis.call('HINCRBY', KEYS[8], 'published', 1)
else
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', 'cancelled by ' .. ARGV[2], 'temporary', '0')
  redis.call('RPUSH', KEYS[2], ARGV[4])
end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('LREM', KEYS[4], 0, ARGV[1])
if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
if redis.call('GET', KEYS[6]) == ARGV[1] then redis.call('DEL', KEYS[6]) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
return {outcome, state}
""".replace("WORKING", ", ".join(f"{state} = 1" for state in sorted(ACTIVE_STATES))).replace("FINAL", LUA_FINAL_STATES)


@dataclass(frozen=True)
class Cancellation:
    """What a cancel did: ``cancelled`` (the job ended now), ``published`` (its image was published and the
    job waited to retry its thin push: that push is cancelled, the job ends published), ``requested`` (a
    worker is converting it and stops at its next cancel point), ``busy`` (a worker is running an unpublish or a garbage collection,
    which removes things and is never stopped halfway: it goes on, and ends in a moment), ``finished``
    (too late: it ended as ``state``) or ``unknown``."""

    job_id: str  # the job that was cancelled: the one asked for, or the one it was coalesced into
    outcome: str
    state: str = ""
    asked: str = ""  # the id the caller gave, when it was coalesced into ``job_id``


class QueueUnavailable(ServiceUnavailable):
    """The request could not be recorded; the sender should retry (HTTP 503)."""


@dataclass(frozen=True)
class Submission:
    job_id: str
    outcome: str  # accepted | coalesced | duplicate
    into: str | None = None  # the job this one reports (coalesced or duplicate delivery)


class Queue:
    def __init__(self, client: redis.Redis, jobs: JobStore) -> None:
        self.redis = client
        self.jobs = jobs
        self._submit = client.register_script(_SUBMIT)
        self._started = client.register_script(_STARTED)
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)

    def submit(self, request: QueuedRequest, source: str, event_id: str | None = None) -> Submission:
        """Accept ``request`` (one atomic round trip); ``event_id`` recognises a redelivered webhook event."""
        job_id = new_job_id()
        image, platform = request.image, str(request.platform)
        try:
            outcome, target = self._submit(keys=[
                keys.job(job_id), keys.events(job_id), keys.RECENT, keys.by_image(image), keys.INCOMING,
                keys.METRICS_REQUESTS, keys.waiting(request.key), keys.running(request.key), keys.recheck(request.key),
                keys.delivery(source, event_id) if event_id else "",
            ], args=[
                keys.JOB_PREFIX, job_id, image, platform, source, json.dumps(request.to_json()), f"{time.time():.6f}",
                self.jobs.ttl, WAITING_TTL, self.jobs.recent, EVENT_TTL,
            ])
        except redis.RedisError as exc:
            raise QueueUnavailable(f"cannot record the request: Redis unreachable: {exc}") from exc
        outcome, target = str(outcome), str(target)
        if outcome == "duplicate":
            log.info("%s event %s for %s delivered again: job %s", source, event_id, image, target)
            return Submission(target, outcome, target)
        if outcome == "coalesced":
            log.info("job %s (%s %s from %s) coalesced into %s", job_id, image, platform, source, target)
            return Submission(job_id, outcome, target)
        log.info("job %s: %s (%s) queued from %s", job_id, image, platform, source)
        return Submission(job_id, outcome)

    def cancel(self, job_id: str, by: str) -> Cancellation:
        """Cancel ``job_id`` on behalf of ``by`` (who, for the timeline). A job coalesced into another
        cancels that one: it is the same conversion, and every job that joined it reports its end."""
        job = self.jobs.get(job_id, follow=False)
        if job is None:
            return Cancellation(job_id, "unknown")
        asked = ""
        if job.coalesced_into:
            asked, job_id = job_id, job.coalesced_into
            job = self.jobs.get(job_id, follow=False)
            if job is None:
                return Cancellation(job_id, "unknown", asked=asked)
        try:
            key = job.request.key
        except ValueError:
            key = f"{job.image}|{job.platform}"
        now = time.time()
        ended = json.dumps({"state": "cancelled", "at": now, "detail": f"cancelled by {by}; nothing was published"})
        stopping = ("the image is already published: only a thin push not yet begun is skipped"
                    if job.state in ("publishing", "thin") or job.published else "stopping at the next cancel point")
        asked_event = json.dumps({"state": job.state, "at": now, "detail": f"cancel requested by {by}; {stopping}"})
        thin_cancelled = json.dumps({"state": "published", "at": now, "detail": f"cancelled by {by} after "
                                     "publication: the image stays published; its thin image is not pushed"})
        outcome, state = self._cancel(keys=[
            keys.job(job_id), keys.events(job_id), keys.ACTIVE, keys.INCOMING, keys.waiting(key), keys.running(key),
            keys.job_lease(job_id), keys.METRICS_CONVERSIONS,
        ], args=[job_id, by, f"{now:.6f}", ended, asked_event, self.jobs.ttl, int(job.stops_on_cancel),
                 thin_cancelled])
        if outcome in ("cancelled", "published", "requested"):
            log.info("job %s (%s): cancel %s by %s while %s", job_id, job.image, outcome, by, state)
        return Cancellation(job_id, str(outcome), str(state), asked)

    def requeue(self, job_id: str, detail: str) -> None:
        """Queue an existing job again (reconciliation)."""
        self.jobs.event(job_id, "queued", detail)
        self.redis.lpush(keys.INCOMING, job_id)

    def started(self, job_id: str, request: QueuedRequest, lease: int) -> None:
        """Called by the worker before it resolves: later requests coalesce onto it as a running job
        (and make it check the tag again), no longer as a waiting one."""
        self._started(keys=[keys.waiting(request.key), keys.running(request.key)], args=[job_id, lease])

    def renew(self, job_id: str, request: QueuedRequest, lease: int) -> None:
        self._renew(keys=[keys.running(request.key)], args=[job_id, lease])

    def finish(self, job_id: str, request: QueuedRequest, *, recheck: bool = True) -> bool:
        """True if a request arrived during the conversion and the tag must be checked again;
        otherwise the job stops being the running one. ``recheck=False`` (on failure) only stops it."""
        again = self._finish(keys=[keys.running(request.key), keys.recheck(request.key)],
                             args=[job_id, "1" if recheck else "0"])
        return bool(again)


class Dispatcher:
    """Moves jobs from ``ducc:incoming`` to Celery, each to the task of its kind; run by every worker in a thread."""

    def __init__(self, client: redis.Redis, send: Callable[[str, list[str]], object]) -> None:
        self.redis = client
        self.send = send

    def task_of(self, job_id: str) -> str:
        raw = self.redis.hget(keys.job(job_id), "request")
        try:
            action = json.loads(str(raw)).get("action") if raw else None
        except (ValueError, AttributeError):
            action = None
        return TASK_OF_KIND.get(str(action or "convert"), CONVERT_TASK)  # the convert task fails what it cannot read

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step(timeout=1)
            except redis.RedisError as exc:
                log.warning("dispatcher: Redis unavailable (%s); retrying", exc)
                stop.wait(1.0)
            except Exception:  # never let the dispatcher die: jobs would wait until reconciliation
                log.exception("dispatcher: could not send a job; it stays in %s for reconciliation", keys.DISPATCHING)
                stop.wait(1.0)

    def step(self, timeout: int = 1) -> str | None:
        job_id = self.redis.blmove(keys.INCOMING, keys.DISPATCHING, max(1, int(timeout)), "RIGHT", "LEFT")
        if job_id is None:
            return None
        job = str(job_id)
        self.send(self.task_of(job), [job])
        self.redis.lrem(keys.DISPATCHING, 1, job)
        return job
