"""Each sender's parser on the real payloads captured from real senders (../shared/reference/payloads)."""

import json
from pathlib import Path

import pytest

from ducc.web.sources import PayloadError, dockerhub, harbor, quay, registry

PAYLOADS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "payloads"


def load(name: str):
    path = PAYLOADS / name
    if not path.exists():
        pytest.skip(f"reference payload {path} not present on this machine")
    data = json.loads(path.read_text())
    return data["body"] if "content_type" in data else data


def test_a_real_manifest_push_names_the_image_by_request_host_repository_and_tag():
    parsed = registry.parse(load("distribution-2.8-real-manifest-push.json"))
    assert [str(e.reference) for e in parsed.events] == ["127.0.0.1:5000/test/captured:v1"]
    assert parsed.events[0].event_id == "bd618661-084e-4875-b239-6133232c9d9e"


@pytest.mark.parametrize("name,reason", [
    ("distribution-2.8-real-blob-push.json", "not a manifest push"),
    ("distribution-2.8-real-blob-mount.json", "not a push"),
    ("distribution-2.8-real-manifest-pull.json", "not a push"),
    ("distribution-events.json", "not a push"),
], ids=["blob-push", "blob-mount", "manifest-pull", "spec-example-pull"])
def test_other_registry_events_are_ignored_with_a_reason(name, reason):
    parsed = registry.parse(load(name))
    assert parsed.events == [] and reason in parsed.ignored[0][1]


def test_a_push_by_digest_is_ignored_and_a_delete_is_reported_as_deleted():
    event = load("distribution-2.8-real-manifest-push.json")["events"][0]
    deleted = dict(event, action="delete")
    by_digest = dict(event, target={k: v for k, v in event["target"].items() if k != "tag"})
    parsed = registry.parse({"events": [deleted, by_digest]})
    assert parsed.events == [] and [why for _, why in parsed.ignored] == ["push by digest, no tag"]
    assert [str(e.reference) for e in parsed.deleted] == ["127.0.0.1:5000/test/captured:v1"]


DIGEST = "sha256:" + "04" * 32
DELETES = {  # what distribution 2.8 sends when a manifest is deleted: the manifest, then each of its tags
    "manifest": ({"digest": DIGEST, "repository": "team/app"}, f"127.0.0.1:5000/team/app@{DIGEST}"),
    "tag": ({"repository": "team/app", "tag": "v2"}, "127.0.0.1:5000/team/app:v2"),
}


@pytest.mark.parametrize("target,image", list(DELETES.values()), ids=list(DELETES))
def test_a_registry_delete_names_the_tag_or_else_the_manifest_digest(target, image):
    event = {"id": "e1", "action": "delete", "target": target, "request": {"host": "127.0.0.1:5000", "method": "DELETE"}}
    parsed = registry.parse({"events": [event]})
    assert [(str(e.reference), e.event_id) for e in parsed.deleted] == [(image, "e1")] and parsed.events == []


def test_a_delete_naming_neither_tag_nor_digest_is_ignored():
    event = {"action": "delete", "target": {"repository": "team/app"}, "request": {"host": "127.0.0.1:5000"}}
    parsed = registry.parse({"events": [event]})
    assert parsed.deleted == [] and "neither a tag nor a manifest digest" in parsed.ignored[0][1]


def test_docker_hub_push():
    parsed = dockerhub.parse(load("dockerhub-push.json"))
    assert [str(e.reference) for e in parsed.events] == ["registry.hub.docker.com/svendowideit/testhook:latest"]


def test_docker_hub_callback_payload_is_not_a_push():
    with pytest.raises(PayloadError):
        dockerhub.parse(load("dockerhub-callback.json"))


def test_harbor_push_artifact():
    parsed = harbor.parse(load("harbor-push-artifact.json"))
    assert [str(e.reference) for e in parsed.events] == ["hub.harbor.com/test-webhook/debian:latest"]


def test_harbor_cloudevent_pull_is_ignored_and_a_push_is_taken():
    pulled = load("harbor-cloudevent.json")
    assert harbor.parse(pulled).events == []
    pushed = dict(pulled, type="harbor.artifact.pushed",
                  data=dict(pulled["data"], resources=[{"resource_url": "harbor.dev/library/busybox:1.36"}]))
    assert [str(e.reference) for e in harbor.parse(pushed).events] == ["harbor.dev/library/busybox:1.36"]


def test_quay_push_gives_one_event_per_updated_tag():
    payload = load("quay-repo-push.json")
    assert [str(e.reference) for e in quay.parse(payload).events] == ["quay.io/dgangaia/test:latest"]
    two = dict(payload, updated_tags=["1.0", "latest"])
    assert len(quay.parse(two).events) == 2


@pytest.mark.parametrize("parser,payload", [
    (registry.parse, {"events": "no"}), (registry.parse, {"events": [{"action": "push"}]}), (registry.parse, []),
    (dockerhub.parse, {"repository": {}}), (harbor.parse, {"type": "PUSH_ARTIFACT"}),
    (quay.parse, {"docker_url": "quay.io/a/b", "updated_tags": [1]}),
    (registry.parse, {"events": [{"action": "push", "target": {"repository": "a", "tag": "1",
                                  "mediaType": "application/vnd.oci.image.manifest.v1+json"}, "request": {"host": "BAD HOST"}}]}),
], ids=["events-not-list", "no-target", "not-object", "no-repo-name", "no-event-data", "tag-not-string", "bad-host"])
def test_payloads_without_the_senders_shape_are_errors(parser, payload):
    with pytest.raises(PayloadError):
        parser(payload)
