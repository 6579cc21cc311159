"""The web app: registry webhooks and a REST API turning requests into conversion jobs, a status page.

``create_app(settings, ...)`` is the factory; collaborators (Redis, the queue,
the job store, tokens, policy) can be passed in and are otherwise built from
settings. The app never converts anything itself: it authenticates, checks
policy, records and queues (``ducc.queue``), and reports (``ducc.jobs``).

Answers, for every endpoint:

- 401 wrong or missing token (logged without the token), 415 wrong content
  type, 413 body over ``DUCC_WEBHOOK_MAX_BYTES``, 400 malformed JSON or a
  payload without the sender's shape (with a message); nothing is queued.
- 2xx once every event of the payload is either queued (or coalesced onto a
  queued job) or ignored with a reason (not a push, not allowed by policy).
  Registries retry non-2xx answers forever, so ignoring is a 2xx.
- 503 if the queue could not take a request: the sender retries; a 2xx is
  never given for an event that was then dropped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from flask import Flask, Response, jsonify, render_template_string, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from ducc import layout
from ducc.broker import build_redis
from ducc.errors import InvalidReference
from ducc.jobs import JobStore
from ducc.metrics import RedisCollector, record_request
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.queue import Queue, QueueUnavailable
from ducc.settings import Settings
from webhooks.policy import Policy
from webhooks.security import Tokens, presented_token
from webhooks.sources import Parsed, PayloadError, dockerhub, harbor, quay, registry

log = logging.getLogger("ducc.web")

JSON_TYPES = frozenset({"application/json"})


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


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    queue: Queue | None = None,
    jobs: JobStore | None = None,
    tokens: Tokens | None = None,
    policy: Policy | None = None,
) -> Flask:
    settings = settings or Settings.from_env()
    client = redis_client or build_redis(settings)
    job_store = jobs or JobStore(client, ttl=settings.job_ttl)
    submit_queue = queue or Queue(client, job_store)
    token_check = tokens or Tokens.from_env(settings.env)
    rules = policy or Policy(list(settings.allow), settings.wishlist)
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(RedisCollector(client))

    app = Flask("ducc")
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook_max_bytes
    app.config["DUCC_SETTINGS"] = settings

    def count(source: str, outcome: str, n: int = 1) -> None:
        try:
            record_request(client, source, outcome, n)
        except redis.RedisError:
            pass  # metrics never decide an answer

    def authenticate(source: str) -> None:
        presented = presented_token(request.headers.get("Authorization"), request.args.get("token"))
        if token_check.check(source, presented):
            return
        reason = ("no token is configured for this source" if not token_check.configured(source)
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

    def submit(source: str, ref: Reference, platforms: tuple[Platform, ...], event_id: str | None) -> list[dict[str, Any]]:
        """Queue ``ref`` (the queue counts the outcome); a redelivered event reports the job it created first."""
        try:
            out = []
            for platform in platforms or (settings.platform,):
                # one event may stand for several platforms: each gets its own delivery key
                key = f"{event_id}|{platform}" if event_id else None
                sub = submit_queue.submit(str(ref), str(platform), source, key)
                entry: dict[str, Any] = {"image": str(ref), "platform": str(platform), "job": sub.job_id}
                if sub.outcome == "duplicate":
                    entry["duplicate_delivery"] = True
                else:
                    entry["coalesced_into"] = sub.into
                out.append(entry)
            return out
        except (QueueUnavailable, redis.RedisError) as exc:
            count(source, "unavailable")
            log.error("%s event for %s could not be queued: %s", source, ref, exc)
            raise BadRequest(503, "the queue is unavailable; retry later") from exc

    def webhook(source: str, parse: Callable[[Any], Parsed], content_types: frozenset[str] = JSON_TYPES) -> Any:
        authenticate(source)
        payload = body(source, content_types)
        try:
            parsed = parse(payload)
        except PayloadError as exc:
            count(source, "bad_request")
            raise BadRequest(400, f"not a {source} payload: {exc}") from exc
        accepted: list[dict[str, Any]] = []
        ignored = [{"what": what, "reason": why} for what, why in parsed.ignored]
        for event in parsed.events:
            decision = rules.decide(event.reference)
            if not decision.allowed:
                ignored.append({"what": str(event.reference), "reason": f"not allowed: {decision.why}"})
                continue
            accepted.extend(submit(source, event.reference, decision.platforms, event.event_id))
        if ignored:
            count(source, "ignored", len(ignored))
        log.info("%s webhook: %d accepted%s, %d ignored%s", source, len(accepted),
                 "".join(f" [{a['image']} -> job {a['job']}]" for a in accepted), len(ignored),
                 "".join(f" [{i['what']}: {i['reason']}]" for i in ignored))
        return jsonify({"accepted": accepted, "ignored": ignored}), 202 if accepted else 200

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> Any:
        response = jsonify({"error": str(exc)})
        response.status_code = exc.status
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="ducc"'
        if exc.status == 503:
            response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        message = exc.description
        if exc.code == 413:
            message = f"body larger than {settings.webhook_max_bytes} bytes"
        return jsonify({"error": message}), exc.code

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Any:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return jsonify({"error": "internal error; see the server log"}), 500

    @app.post("/webhooks/registry")
    def registry_webhook() -> Any:
        return webhook("registry", registry.parse, registry.CONTENT_TYPES)

    @app.post("/webhooks/dockerhub")
    def dockerhub_webhook() -> Any:
        return webhook("dockerhub", dockerhub.parse)

    @app.post("/webhooks/harbor")
    def harbor_webhook() -> Any:
        return webhook("harbor", harbor.parse, JSON_TYPES | {"application/cloudevents+json"})

    @app.post("/webhooks/quay")
    def quay_webhook() -> Any:
        return webhook("quay", quay.parse)

    @app.post("/api/v1/conversions")
    def api_submit() -> Any:
        authenticate("api")
        payload = body("api", JSON_TYPES)
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            count("api", "bad_request")
            raise BadRequest(400, 'body must be {"image": "<reference>"} (optionally "platform": "os/arch")')
        try:
            ref = Reference.parse(payload["image"])
            platforms = (Platform.parse(payload["platform"]),) if isinstance(payload.get("platform"), str) else ()
        except (InvalidReference, ValueError) as exc:
            count("api", "bad_request")
            raise BadRequest(400, str(exc)) from exc
        decision = rules.decide(ref)
        if not decision.allowed:
            count("api", "ignored")
            return jsonify({"error": f"{ref} is not allowed: {decision.why}"}), 403
        accepted = submit("api", ref, platforms or decision.platforms, None)
        first = accepted[0]
        return jsonify({"id": first["job"], "image": str(ref), "platform": first["platform"],
                        "coalesced_into": first.get("coalesced_into"), "jobs": accepted,
                        "status": f"/api/v1/conversions/{first['job']}"}), 202

    @app.get("/api/v1/conversions/<job_id>")
    def api_status(job_id: str) -> Any:
        job = job_store.get(job_id)
        if job is None:
            return jsonify({"error": f"no job {job_id}"}), 404
        return jsonify(job.to_json())

    @app.get("/api/v1/images")
    def api_images() -> Any:
        try:
            ref = Reference.parse(request.args.get("ref", ""))
            platform = Platform.parse(request.args.get("platform") or str(settings.platform))
        except (InvalidReference, ValueError) as exc:
            raise BadRequest(400, f"?ref= must be an image reference: {exc}") from exc
        return jsonify(published_image(settings.root, ref, platform) | {
            "jobs": [j.to_json() | {"timeline": None} for j in job_store.for_image(str(ref))[:10]],
        })

    @app.get("/healthz")
    def healthz() -> Any:
        try:
            client.ping()
        except redis.RedisError as exc:
            return jsonify({"status": "unhealthy", "redis": str(exc)}), 503
        return jsonify({"status": "ok"})

    @app.get("/metrics")
    def prometheus() -> Any:
        return Response(generate_latest(metrics), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/")
    def status_page() -> Any:
        recent = job_store.recent_jobs(100)
        published = [j for j in recent if j.state == "published" and not j.coalesced_into]
        return render_template_string(STATUS_PAGE, jobs=recent[:50], published=published[:30], now=time.time(),
                                      root=str(settings.root), when=_when)

    return app


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"


def published_image(root: Path, ref: Reference, platform: Platform) -> dict[str, Any]:
    """What the repository says about ``ref`` (read-only, from its ``.metadata`` record)."""
    record_dir = root / layout.metadata_dir(ref, platform)
    out: dict[str, Any] = {"reference": str(ref), "platform": str(platform), "published": False,
                           "path": str(root / layout.tag_link(ref, platform))}
    try:
        manifest = (record_dir / layout.RECORD_MANIFEST).read_bytes()
    except OSError:
        return out
    out["published"] = True
    try:
        details = json.loads((record_dir / layout.RECORD_DETAILS).read_bytes())
    except (OSError, ValueError):
        details = {}
    out.update({k: details.get(k) for k in ("tag_digest", "config_digest", "converted_at")})
    if details.get("config_digest"):
        digest = details["config_digest"].partition(":")[2]
        out["flat"] = str(root / ".flat" / digest[:2] / digest)
    out["manifest_bytes"] = len(manifest)
    return out


STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ducc</title>
<meta http-equiv="refresh" content="10">
<style>
 body{font-family:system-ui,sans-serif;margin:2em;color:#222}
 table{border-collapse:collapse;width:100%;margin-bottom:2em;font-size:90%}
 th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left}
 .published{color:#176f2c}.failed{color:#b00020}.retrying{color:#a15c00}
 code{font-size:95%}
</style></head><body>
<h1>ducc</h1>
<p>Repository root <code>{{ root }}</code>. This page refreshes every 10 s;
JSON at <code>/api/v1/conversions/&lt;id&gt;</code> and <code>/api/v1/images?ref=…</code>.</p>
<h2>Recent jobs</h2>
<table><tr><th>job</th><th>image</th><th>platform</th><th>from</th><th>received</th><th>state</th><th>took</th><th>detail</th></tr>
{% for j in jobs %}<tr>
 <td><a href="/api/v1/conversions/{{ j.id }}"><code>{{ j.id }}</code></a></td><td>{{ j.image }}</td><td>{{ j.platform }}</td>
 <td>{{ j.source }}</td><td>{{ when(j.received_at) }}</td><td class="{{ j.state }}">{{ j.state }}</td>
 <td>{{ "%.1f s"|format(j.updated_at - j.received_at) }}</td>
 <td>{{ j.error or (j.events[-1].detail if j.events else "") }}{% if j.coalesced_into %} (with {{ j.coalesced_into }}){% endif %}</td>
</tr>{% else %}<tr><td colspan="8">no jobs yet</td></tr>{% endfor %}
</table>
<h2>Recently published</h2>
<table><tr><th>image</th><th>path</th><th>layers unpacked / reused</th><th>conversion</th><th>finished</th></tr>
{% for j in published %}<tr>
 <td>{{ j.image }}</td><td><code>{{ j.result.path }}</code></td>
 <td>{{ j.result.layers_unpacked }} / {{ j.result.layers_reused }}</td>
 <td>{{ "%.1f s"|format(j.result.seconds or 0) }}{% if not j.result.changed %} (already current){% endif %}</td>
 <td>{{ when(j.updated_at) }}</td>
</tr>{% else %}<tr><td colspan="5">nothing published yet</td></tr>{% endfor %}
</table>
</body></html>
"""
