"""The REST API: submit a conversion, cancel one, read a job, read what is published for a reference.

``POST /api/v1/conversions`` needs the ``api`` token and answers 403 for an
image outside the policy (webhooks answer 200 with ``ignored`` instead: a
registry would retry anything else forever). ``POST
/api/v1/conversions/<id>/cancel`` needs the ``api`` token too: 200 when the job
ended now (``published`` for one whose image was published and that waited to
retry its thin push: only that push is cancelled), 202 when a running conversion was asked to stop (it stops at its next
cancel point; one whose image is already published stays published), 409 when
it had already finished, 404 for an unknown id. The GET endpoints need no token.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from ducc.errors import InvalidReference
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish import RepositoryView
from ducc.web.http import BadRequest, authenticate, body, count, submit, web
from ducc.web.senders import API, JSON_TYPES

api = Blueprint("api", __name__, url_prefix="/api/v1")


@api.post("/conversions")
def submit_conversion() -> Any:
    authenticate(API)
    payload = body(API, JSON_TYPES)
    if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
        count(API, "bad_request")
        raise BadRequest(400, 'body must be {"image": "<reference>"} (optionally "platform": "os/arch")')
    try:
        ref = Reference.parse(payload["image"])
        platforms = (Platform.parse(payload["platform"]),) if isinstance(payload.get("platform"), str) else ()
    except (InvalidReference, ValueError) as exc:
        count(API, "bad_request")
        raise BadRequest(400, str(exc)) from exc
    decision = web().policy.decide(ref)
    if not decision.allowed:
        count(API, "ignored")
        return jsonify({"error": f"{ref} is not allowed: {decision.why}"}), 403
    accepted = submit(API, ref, decision, None, platforms)
    first = accepted[0]
    return jsonify({"id": first["job"], "image": str(ref), "platform": first["platform"],
                    "coalesced_into": first.get("coalesced_into"), "jobs": accepted,
                    "status": f"/api/v1/conversions/{first['job']}"}), 202


CANCEL_STATUS = {"cancelled": 200, "published": 200, "requested": 202, "busy": 409, "finished": 409, "unknown": 404}


@api.post("/conversions/<job_id>/cancel")
def cancel_conversion(job_id: str) -> Any:
    authenticate(API)
    done = web().queue.cancel(job_id, f"api ({request.remote_addr})")
    answer: dict[str, Any] = {"id": done.job_id, "outcome": done.outcome, "status": f"/api/v1/conversions/{done.job_id}"}
    if done.asked:
        answer["coalesced"] = done.asked
    if done.outcome == "unknown":
        answer["error"] = f"no job {done.job_id}"
    elif done.outcome == "finished":
        answer.update(error=f"job {done.job_id} has already finished", state=done.state)
    elif done.outcome == "busy":
        answer.update(error=f"job {done.job_id} is {done.state}: it removes things and is never stopped halfway; "
                            "it ends in a moment", state=done.state)
    else:
        answer["state"] = done.outcome if done.outcome in ("cancelled", "published") else done.state
    return jsonify(answer), CANCEL_STATUS[done.outcome]


@api.get("/conversions/<job_id>")
def conversion(job_id: str) -> Any:
    job = web().jobs.get(job_id)
    if job is None:
        return jsonify({"error": f"no job {job_id}"}), 404
    return jsonify(job.to_json())


@api.get("/images")
def images() -> Any:
    context = web()
    try:
        ref = Reference.parse(request.args.get("ref", ""))
    except (InvalidReference, ValueError) as exc:
        raise BadRequest(400, f"?ref= must be an image reference: {exc}") from exc
    try:
        platform = Platform.parse(request.args.get("platform") or str(context.settings.platform))
    except ValueError as exc:
        raise BadRequest(400, f"?platform= must be os/arch[/variant]: {exc}") from exc
    return jsonify(published_image(context.view, ref, platform) | {
        "jobs": [j.to_json() | {"timeline": None} for j in context.jobs.for_image(str(ref))[:10]],
    })


def published_image(view: RepositoryView, ref: Reference, platform: Platform) -> dict[str, Any]:
    """What the repository says about ``ref`` (read only, from its record)."""
    out: dict[str, Any] = {"reference": str(ref), "platform": str(platform), "published": False,
                           "path": str(view.public_path(ref, platform))}
    record = view.read_record(ref, platform)
    if record is None:
        return out
    details = record.details
    out.update({
        "published": True,
        "tag_digest": details.get("tag_digest"),
        "config_digest": details.get("config_digest"),
        "converted_at": record.converted_at,
        "thin_reference": record.thin_reference,
        "thin_digest": details.get("thin_digest"),
        "flat": str(view.flat_path(record.config_digest)),
        "manifest_bytes": len(record.manifest.raw),
    })
    return out
