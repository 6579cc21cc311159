"""CNCF distribution (registry 2.x and 3.x, GitLab self-managed) notifications.

Envelope ``{"events": [...]}`` with content type ``…events.v1+json`` (2.x) or
``…events.v2+json`` (3.x). Only ``push`` of a manifest with a ``tag`` names an
image to convert; ``request.host`` + ``target.repository`` + ``target.tag``
spell it. Everything else (pulls, blob pushes and mounts, deletes) is ignored.
"""

from __future__ import annotations

from typing import Any

from ducc.model import mediatypes
from webhooks.sources import ImageEvent, Parsed, PayloadError, obj, reference, text

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
