"""CNCF distribution (registry 2.x and 3.x, GitLab self-managed) notifications.

Envelope ``{"events": [...]}`` with content type ``…events.v1+json`` (2.x) or
``…events.v2+json`` (3.x). Only ``push`` of a manifest with a ``tag`` names an
image to convert; ``request.host`` + ``target.repository`` + ``target.tag``
spell it. A ``delete`` names a deleted image: by ``target.tag`` (distribution
2.8 sends one for every tag of a deleted manifest) or, without one, by
``target.digest``; what to do with it is the receiver's policy. Everything else
(pulls, blob pushes and mounts) is ignored.
"""

from __future__ import annotations

from typing import Any

from ducc.model import mediatypes
from ducc.web.sources import ImageEvent, Parsed, PayloadError, obj, reference, text

CONTENT_TYPES = frozenset({
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
    "application/json",
})
MANIFEST_TYPES = mediatypes.IMAGE_MANIFESTS | mediatypes.INDEXES


def parse(payload: Any) -> Parsed:
    envelope = obj(payload, "payload")
    events = envelope.get("events")
    if not isinstance(events, list):
        raise PayloadError("payload must have an 'events' list")
    parsed = Parsed()
    for index, raw in enumerate(events):
        where = f"events[{index}]"
        event = obj(raw, where)
        action = event.get("action")
        target = obj(event.get("target"), f"{where}.target")
        repository = text(target.get("repository"), f"{where}.target.repository")
        label = f"{action} {repository}"
        if action == "delete":
            _deleted(parsed, event, target, repository, where)
            continue
        if action != "push":
            parsed.ignored.append((label, f"action {action!r} is not a push"))
            continue
        media_type = target.get("mediaType")
        if not isinstance(media_type, str) or media_type not in MANIFEST_TYPES:
            parsed.ignored.append((label, f"not a manifest push ({media_type})"))
            continue
        tag = target.get("tag")
        if not isinstance(tag, str) or not tag:
            parsed.ignored.append((label, "push by digest, no tag"))
            continue
        request = obj(event.get("request"), f"{where}.request")
        host = text(request.get("host"), f"{where}.request.host")
        event_id = event.get("id") if isinstance(event.get("id"), str) else None
        parsed.events.append(ImageEvent(reference(f"{host}/{repository}:{tag}", where), event_id))
    return parsed


def _deleted(parsed: Parsed, event: Any, target: Any, repository: str, where: str) -> None:
    host = text(obj(event.get("request"), f"{where}.request").get("host"), f"{where}.request.host")
    event_id = event.get("id") if isinstance(event.get("id"), str) else None
    tag, digest = target.get("tag"), target.get("digest")
    if isinstance(tag, str) and tag:
        parsed.deleted.append(ImageEvent(reference(f"{host}/{repository}:{tag}", where), event_id))
    elif isinstance(digest, str) and digest.startswith("sha256:"):
        parsed.deleted.append(ImageEvent(reference(f"{host}/{repository}@{digest}", where), event_id))
    else:
        parsed.ignored.append((f"delete {repository}", "a delete that names neither a tag nor a manifest digest"))
