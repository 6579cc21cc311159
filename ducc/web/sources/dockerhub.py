"""Docker Hub webhooks: ``repository.repo_name`` + ``push_data.tag``; no digest, no signature.

The tag is re-resolved against the registry by the worker, so a forged payload
can at most cause a check of an image the policy allows. ``callback_url`` is a
legacy feature; ducc does not call it (calling URLs from payloads invites SSRF).
"""

from __future__ import annotations

from typing import Any

from ducc.model.reference import DOCKER_HUB
from ducc.web.sources import ImageEvent, Parsed, obj, reference, text


def parse(payload: Any) -> Parsed:
    body = obj(payload, "payload")
    repository = text(obj(body.get("repository"), "repository").get("repo_name"), "repository.repo_name")
    tag = text(obj(body.get("push_data"), "push_data").get("tag"), "push_data.tag")
    return Parsed(events=[ImageEvent(reference(f"{DOCKER_HUB}/{repository}:{tag}", "repository"))])
