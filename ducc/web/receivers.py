"""Webhook receivers: one route per entry of ``ducc.web.senders.SENDERS``.

2xx once every event of the payload is either queued (or coalesced onto a
queued job) or ignored with a reason (not a push, not allowed by policy).
Registries retry non-2xx answers forever, so ignoring is a 2xx.

A deleted tag (or manifest) is ignored unless ``DUCC_UNPUBLISH_ON_DELETE`` is
on; then, for an image the policy allows and that is published here, an
unpublish job is queued, which unpublishes only once the registry answers the
manifest with a clean 404 (the notification alone never decides).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify

from ducc.web.http import BadRequest, authenticate, body, count, submit, submit_unpublish, web
from ducc.web.senders import SENDERS, Sender
from ducc.web.sources import ImageEvent, PayloadError

log = logging.getLogger("ducc.web")

receivers = Blueprint("receivers", __name__)


def receive(sender: Sender) -> Any:
    authenticate(sender.name)
    payload = body(sender.name, sender.content_types)
    try:
        parsed = sender.parse(payload)
    except PayloadError as exc:
        count(sender.name, "bad_request")
        raise BadRequest(400, f"not a {sender.name} payload: {exc}") from exc
    accepted: list[dict[str, Any]] = []
    ignored = [{"what": what, "reason": why} for what, why in parsed.ignored]
    policy = web().policy
    for deleted in parsed.deleted:
        why = _unpublish(sender.name, deleted, accepted)
        if why:
            ignored.append({"what": f"delete {deleted.reference}", "reason": why})
    for event in parsed.events:
        decision = policy.decide(event.reference)
        if not decision.allowed:
            ignored.append({"what": str(event.reference), "reason": f"not allowed: {decision.why}"})
            continue
        accepted.extend(submit(sender.name, event.reference, decision, event.event_id))
    if ignored:
        count(sender.name, "ignored", len(ignored))
    log.info("%s webhook: %d accepted%s, %d ignored%s", sender.name, len(accepted),
             "".join(f" [{a['image']} -> job {a['job']}]" for a in accepted), len(ignored),
             "".join(f" [{i['what']}: {i['reason']}]" for i in ignored))
    return jsonify({"accepted": accepted, "ignored": ignored}), 202 if accepted else 200


def _unpublish(source: str, event: ImageEvent, accepted: list[dict[str, Any]]) -> str | None:
    """Queue the unpublishing of a deleted image where the policy wants it; otherwise why not."""
    context = web()
    if not context.settings.web.unpublish_on_delete:
        return "a delete (DUCC_UNPUBLISH_ON_DELETE is off)"
    decision = context.policy.decide(event.reference)
    if not decision.allowed:
        return f"not allowed: {decision.why}"
    view = context.view
    published = tuple(p for p in decision.platforms or (context.settings.platform,)
                      if view.is_published(event.reference, p))
    if not published:
        return "deleted from the registry; not published here"
    accepted.extend(submit_unpublish(source, event.reference, published, event.event_id))
    return None


for _sender in SENDERS:
    receivers.add_url_rule(_sender.path, f"{_sender.name}_webhook", lambda s=_sender: receive(s), methods=["POST"])
