"""Quay repository-push notifications: ``docker_url`` + ``updated_tags[]`` (one event per tag)."""

from __future__ import annotations

from typing import Any

from ducc.web.sources import ImageEvent, Parsed, PayloadError, obj, reference, text


def parse(payload: Any) -> Parsed:
    body = obj(payload, "payload")
    url = text(body.get("docker_url"), "docker_url")
    tags = body.get("updated_tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise PayloadError("updated_tags must be a list of tags")
    return Parsed(events=[ImageEvent(reference(f"{url}:{tag}", "updated_tags")) for tag in tags])
