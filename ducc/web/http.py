"""What every endpoint shares: the app's collaborators, tokens, strict bodies, errors, submitting.

Answers, for every endpoint:

- 401 wrong or missing token (logged without the token), 415 wrong content
  type, 413 body over ``DUCC_WEBHOOK_MAX_BYTES``, 400 malformed JSON or a
  payload without the sender's shape (with a message); nothing is queued.
- 503 if the queue could not take a request: the sender retries; a 2xx is
  never given for an event that was then dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis
from flask import current_app, request

from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.model.request import QueuedRequest, UnpublishRequest
from ducc.publish import RepositoryView
from ducc.service.jobs import JobStore
from ducc.service.metrics import record_request
from ducc.service.queue import Queue, QueueUnavailable
from ducc.settings import Settings
from ducc.web.policy import Decision, Policy
from ducc.web.security import Tokens, presented_token

log = logging.getLogger("ducc.web")


@dataclass(frozen=True)
class Web:
    """The web app's collaborators (``create_app`` is given or builds them; views reach them with ``web()``).

    Only what answering needs: Redis (health, metrics, the last sync), the queue that takes requests,
    the job store that shows them, and the repository read only. ``view_of`` builds that view at its
    first use, so a repository setting that is wrong fails the requests that read the repository,
    not the app's start (``/livez`` and ``/healthz`` still answer).
    """

    settings: Settings
    redis: redis.Redis
    queue: Queue
    jobs: JobStore
    view_of: Callable[[], RepositoryView]
    tokens: Tokens
    policy: Policy

    @cached_property
    def view(self) -> RepositoryView:
        return self.view_of()


def web() -> Web:
    found: Web = current_app.extensions["ducc"]
    return found


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def strict_json(data: bytes) -> Any:
    """JSON as RFC 8259 says: UTF-8, no NaN/Infinity, no duplicate keys; ValueError otherwise."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key in a JSON object")
        return dict(pairs)

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except UnicodeDecodeError as exc:
        raise ValueError("body is not UTF-8") from exc
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def count(source: str, outcome: str, n: int = 1) -> None:
    try:
        record_request(web().redis, source, outcome, n)
    except redis.RedisError:
        pass  # metrics never decide an answer


def authenticate(source: str) -> None:
    tokens = web().tokens
    presented = presented_token(request.headers.get("Authorization"), request.args.get("token"))
    if tokens.check(source, presented):
        return
    reason = ("no token is configured for this source" if not tokens.configured(source)
              else "no token presented" if not presented else "wrong token")
    log.warning("%s request from %s refused: %s", source, request.remote_addr, reason)
    count(source, "unauthorized")
    raise BadRequest(401, f"unauthorized: {reason}")


def body(source: str, content_types: frozenset[str]) -> Any:
    if request.mimetype not in content_types:
        count(source, "bad_request")
        raise BadRequest(415, f"content type {request.mimetype or '(none)'!r} is not one of {sorted(content_types)}")
    try:
        return strict_json(request.get_data(cache=False))
    except ValueError as exc:
        count(source, "bad_request")
        raise BadRequest(400, f"malformed JSON: {exc}") from exc


def submit(
    source: str, ref: Reference, decision: Decision, event_id: str | None, platforms: tuple[Platform, ...] = ()
) -> list[dict[str, Any]]:
    """Queue ``ref`` as the policy's ``decision`` says (its platforms unless ``platforms`` are given, its
    thin image); the queue counts the outcome; a redelivered event reports the job it created first."""
    chosen = platforms or decision.platforms or (web().settings.platform,)
    return _queue(source, ref, [decision.request(ref, platform) for platform in chosen], event_id, "event")


def submit_unpublish(source: str, ref: Reference, platforms: tuple[Platform, ...],
                     event_id: str | None) -> list[dict[str, Any]]:
    """Queue the unpublishing of ``ref`` on ``platforms``, which the worker does only once the registry
    answers the manifest with a clean 404; a redelivered event reports the job it created first."""
    reason = f"deleted from {ref.registry} (a {source} notification)"
    return _queue(source, ref, [UnpublishRequest(ref, platform, reason=reason) for platform in platforms], event_id,
                  "delete event", {"action": "unpublish"})


def _queue(source: str, ref: Reference, requests: list[QueuedRequest], event_id: str | None, what: str,
           extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Submit ``requests`` (one per platform), each entry of the answer with ``extra``; 503 if the queue is
    unavailable."""
    try:
        queue = web().queue
        out = []
        for queued in requests:
            # one event may stand for several platforms: each gets its own delivery key
            key = f"{event_id}|{queued.platform}" if event_id else None
            sub = queue.submit(queued, source, key)
            entry: dict[str, Any] = {"image": str(ref), "platform": str(queued.platform), "job": sub.job_id,
                                     **(extra or {})}
            if sub.outcome == "duplicate":
                entry["duplicate_delivery"] = True
            else:
                entry["coalesced_into"] = sub.into
            out.append(entry)
        return out
    except (QueueUnavailable, redis.RedisError) as exc:
        count(source, "unavailable")
        log.error("%s %s for %s could not be queued: %s", source, what, ref, exc)
        raise BadRequest(503, "the queue is unavailable; retry later") from exc
