"""Harbor webhooks: the default payload (``type == "PUSH_ARTIFACT"``) and CloudEvents
(``type == "harbor.artifact.pushed"``). ``resources[].resource_url`` names the image without a scheme."""

from __future__ import annotations

from typing import Any

from ducc.web.sources import ImageEvent, Parsed, PayloadError, obj, reference, text

PUSH_TYPES = frozenset({"PUSH_ARTIFACT", "harbor.artifact.pushed"})


def parse(payload: Any) -> Parsed:
    body = obj(payload, "payload")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise PayloadError("payload has no 'type'")
    cloud_event = "specversion" in body
    data = obj(body.get("data") if cloud_event else body.get("event_data"), "data" if cloud_event else "event_data")
    parsed = Parsed()
    resources = data.get("resources")
    if not isinstance(resources, list):
        raise PayloadError("payload has no resources list")
    event_id = body.get("id") if isinstance(body.get("id"), str) else None
    for index, raw in enumerate(resources):
        resource = obj(raw, f"resources[{index}]")
        url = text(resource.get("resource_url"), f"resources[{index}].resource_url")
        if kind not in PUSH_TYPES:
            parsed.ignored.append((url, f"event type {kind!r} is not a push"))
            continue
        parsed.events.append(ImageEvent(reference(url, f"resources[{index}]"), event_id))
    return parsed
