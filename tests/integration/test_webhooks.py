"""The web app with a real Redis behind it: authentication, policy, bad input, duplicates, the REST API,
metrics and the status page; and end to end, a real registry notifying the app under gunicorn while a
real worker converts."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ducc import layout
from ducc.errors import ServiceUnavailable
from ducc.publish.directory import DirectoryView
from ducc.service.broker import build_redis
from ducc.service.jobs import JobStore
from ducc.service.queue import Queue
from ducc.settings import Settings
from ducc.web import create_app
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.processes import free_port, start_registry, wait_for_port
from tests.support.service import DuccProcess, service_env

PAYLOADS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "payloads"
TOKEN = "webhook-token-7f3a"
EVENTS_V1 = "application/vnd.docker.distribution.events.v1+json"
EVENTS_V2 = "application/vnd.docker.distribution.events.v2+json"


def payload(name: str) -> dict:
    path = PAYLOADS / name
    if not path.exists():
        pytest.skip(f"reference payload {path} not present on this machine")
    data = json.loads(path.read_text())
    return data["body"] if "content_type" in data else data


def manifest_push(repository: str = "allowed/app", tag: str = "v1", host: str = "127.0.0.1:5000", event_id: str | None = None) -> dict:
    body = copy.deepcopy(payload("distribution-2.8-real-manifest-push.json"))
    event = body["events"][0]
    event["target"]["repository"], event["target"]["tag"], event["request"]["host"] = repository, tag, host
    event["id"] = event_id or os.urandom(8).hex()
    return body


@pytest.fixture
def app_settings(redis_server, root, tmp_path) -> Settings:
    return Settings.from_env({
        "HOME": os.environ.get("HOME", "/root"), "DUCC_REDIS_URL": redis_server.url, "DUCC_ROOT": str(root),
        "DUCC_WEBHOOK_TOKEN": TOKEN, "DUCC_ALLOW": "127.0.0.1:5000/allowed/*,registry.hub.docker.com/svendowideit/*",
        "DUCC_WEBHOOK_MAX_BYTES": "65536", "DUCC_STATE_DIR": str(tmp_path / "state"),
    })


@pytest.fixture
def web(app_settings):
    app = create_app(app_settings)
    app.testing = True
    return app.test_client()


def jobs_count(redis_server) -> int:
    return len(JobStore(redis_server.client()).recent_jobs(1000))


def post(web, path: str, body, *, token: str | None = TOKEN, content_type: str = "application/json", query: str = ""):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return web.post(path + query, data=data, headers=headers, content_type=content_type)


def test_the_app_answers_from_the_collaborators_it_is_given(redis_server, root, tmp_path):
    """Given Redis, the queue, the job store and a maker of the repository view, create_app builds none of them
    from the settings (whose Redis and root here lead nowhere), and makes the view once, at its first use."""
    client = build_redis(redis_server.url)
    jobs = JobStore(client)
    views: list[DirectoryView] = []

    def view_of() -> DirectoryView:
        views.append(DirectoryView(root))
        return views[-1]

    elsewhere = Settings.from_env({"DUCC_REDIS_URL": "redis://127.0.0.1:1/0", "DUCC_ROOT": str(tmp_path / "elsewhere"),
                                   "DUCC_WEBHOOK_TOKEN": TOKEN, "DUCC_ALLOW": "127.0.0.1:5000/allowed/*",
                                   "DUCC_STATE_DIR": str(tmp_path / "state")})
    web = create_app(elsewhere, client=client, queue=Queue(client, jobs), jobs=jobs, view_of=view_of).test_client()
    assert views == []
    assert web.get("/healthz").status_code == 200
    answer = web.post("/api/v1/conversions", json={"image": "127.0.0.1:5000/allowed/app:given"},
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 202, answer.json
    job = jobs.get(answer.json["id"])
    assert job is not None and job.image == "127.0.0.1:5000/allowed/app:given"
    for _ in range(2):
        image = web.get("/api/v1/images?ref=127.0.0.1:5000/allowed/app:given").json
        assert Path(image["path"]).is_relative_to(root.resolve()) and image["published"] is False
    assert len(views) == 1


def test_without_a_redis_to_use_the_app_does_not_start_and_says_why(tmp_path):
    state = tmp_path / "state"
    with pytest.raises(ServiceUnavailable, match=f"DUCC_REDIS_URL is not set and no ducc serve runs here .*{state}"):
        create_app(Settings.from_env({"DUCC_ROOT": str(tmp_path / "root"), "DUCC_STATE_DIR": str(state)}))


def test_a_registry_push_is_queued_with_both_event_content_types(web, redis_server):
    for content_type in (EVENTS_V1, EVENTS_V2):
        response = post(web, "/webhooks/registry", manifest_push(tag=content_type[-7:-5]), content_type=content_type)
        assert response.status_code == 202, response.json
        (accepted,) = response.json["accepted"]
        assert accepted["image"].startswith("127.0.0.1:5000/allowed/app:")
        job = JobStore(redis_server.client()).get(accepted["job"])
        assert job.state == "queued" and job.source == "registry"


def test_batched_events_are_each_decided(web):
    body = manifest_push()
    body["events"] += manifest_push(tag="v2")["events"] + payload("distribution-2.8-real-blob-push.json")["events"]
    body["events"] += manifest_push(repository="forbidden/app")["events"]
    response = post(web, "/webhooks/registry", body, content_type=EVENTS_V1)
    assert response.status_code == 202
    assert len(response.json["accepted"]) == 2
    reasons = [i["reason"] for i in response.json["ignored"]]
    assert any("not a manifest push" in r for r in reasons) and any("not allowed" in r for r in reasons)


@pytest.mark.parametrize("path,name,image", [
    ("/webhooks/dockerhub", "dockerhub-push.json", "registry.hub.docker.com/svendowideit/testhook:latest"),
    ("/webhooks/harbor", "harbor-push-artifact.json", None),
    ("/webhooks/quay", "quay-repo-push.json", None),
], ids=["dockerhub", "harbor", "quay"])
def test_each_sender_is_parsed_and_policy_applies(web, path, name, image):
    response = post(web, path, payload(name), token=None, query=f"?token={TOKEN}")
    if image:
        assert response.status_code == 202 and response.json["accepted"][0]["image"] == image
    else:  # outside DUCC_ALLOW: acknowledged, ignored, with the reason
        assert response.status_code == 200 and response.json["accepted"] == []
        assert "not allowed" in response.json["ignored"][0]["reason"]


BAD = {
    "missing_token": dict(token=None, expect=401),
    "wrong_token": dict(token="nope", expect=401),
    "malformed_json": dict(body=b'{"events": [', expect=400),
    "not_utf8": dict(body=b'{"events": "\xff"}', expect=400),
    "nan": dict(body=b'{"events": NaN}', expect=400),
    "duplicate_keys": dict(body=b'{"events": [], "events": []}', expect=400),
    "wrong_content_type": dict(content_type="text/plain", expect=415),
    "oversize_body": dict(body=b'{"events": [' + b'{},' * 40000 + b'{}]}', expect=413),
    "missing_fields": dict(body={"events": [{"action": "push"}]}, expect=400),
    "not_an_envelope": dict(body=[1, 2], expect=400),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_gets_the_documented_status_and_nothing_is_queued(case, web, redis_server, caplog):
    spec = BAD[case]
    before = jobs_count(redis_server)
    response = post(web, "/webhooks/registry", spec.get("body", manifest_push()), token=spec.get("token", TOKEN),
                    content_type=spec.get("content_type", EVENTS_V1))
    assert response.status_code == spec["expect"]
    assert response.json["error"]
    assert jobs_count(redis_server) == before
    if spec["expect"] == 401:
        assert "nope" not in caplog.text and TOKEN not in caplog.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_events_for_deleted_tags_are_acknowledged_and_ignored(web, redis_server):
    body = manifest_push()
    body["events"][0]["action"] = "delete"
    before = jobs_count(redis_server)
    response = post(web, "/webhooks/registry", body, content_type=EVENTS_V1)
    assert response.status_code == 200 and response.json["accepted"] == []
    assert jobs_count(redis_server) == before


def test_a_redelivered_event_and_a_second_push_of_a_waiting_image_coalesce(web, redis_server):
    body = manifest_push(tag="dup", event_id="event-1")
    first = post(web, "/webhooks/registry", body, content_type=EVENTS_V1).json["accepted"][0]
    again = post(web, "/webhooks/registry", body, content_type=EVENTS_V1).json["accepted"][0]
    assert again["duplicate_delivery"] and again["job"] == first["job"]
    other = post(web, "/webhooks/registry", manifest_push(tag="dup", event_id="event-2"), content_type=EVENTS_V1).json["accepted"][0]
    assert other["coalesced_into"] == first["job"]
    assert JobStore(redis_server.client()).get(other["job"]).state == "queued"


def test_queue_down_answers_503_so_the_sender_retries(app_settings, redis_server):
    app = create_app(app_settings)
    client = app.test_client()
    redis_server.stop()
    response = post(client, "/webhooks/registry", manifest_push(), content_type=EVENTS_V1)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert client.get("/healthz").status_code == 503


def test_while_redis_is_down_the_pages_say_so_with_503_and_liveness_stays_200(redis_server, root, tmp_path):
    """The web app under gunicorn (``ducc web``), its Redis stopped: the status page is a readable 503 page,
    ``/healthz`` names what is down, the JSON endpoints answer 503, ``/livez`` (the liveness probe) stays
    200; once Redis is back everything answers again."""
    port = free_port()
    env = service_env(root, redis_server.url, tmp_path / "state", DUCC_LISTEN=f"127.0.0.1:{port}",
                      DUCC_WEBHOOK_TOKEN=TOKEN, DUCC_ALLOW="127.0.0.1:5000/allowed/*")
    app = DuccProcess(["web", "--workers", "1"], env, tmp_path / "web.log").start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout=30, process=app.process)
        assert requests.get(f"{base}/", timeout=10).status_code == 200
        assert requests.get(f"{base}/healthz", timeout=10).json() == {"status": "ok", "redis": "ok"}
        directory = redis_server.directory
        redis_server.stop()

        page = requests.get(f"{base}/", timeout=10)
        assert page.status_code == 503 and page.headers["Content-Type"].startswith("text/html")
        assert "Redis is unreachable" in page.text and str(root) in page.text and "Traceback" not in page.text
        health = requests.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 503 and health.json()["down"] == ["redis"]
        assert "unreachable" in health.json()["redis"]
        for path in ("/api/v1/conversions/0000-0000", "/api/v1/images?ref=127.0.0.1:5000/allowed/app:1"):
            answer = requests.get(f"{base}{path}", timeout=10)
            assert answer.status_code == 503 and "Redis is unreachable" in answer.json()["error"], path
        assert requests.get(f"{base}/livez", timeout=10).status_code == 200

        port_of_redis = int(redis_server.url.rsplit(":", 1)[1].split("/")[0])
        restarted = subprocess.Popen(["redis-server", "--port", str(port_of_redis), "--bind", "127.0.0.1", "--dir",
                                      str(directory), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        try:
            wait_for_port(port_of_redis, process=restarted)
            deadline = time.monotonic() + 30
            while requests.get(f"{base}/healthz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "the app did not notice that Redis is back"
                time.sleep(0.5)
            assert requests.get(f"{base}/", timeout=10).status_code == 200
        finally:
            restarted.terminate()
            restarted.wait(10)
        assert "Traceback" not in app.log(), app.log()[-3000:]
    finally:
        app.stop()


def test_without_a_token_every_post_is_refused_and_the_get_endpoints_still_answer(redis_server, root, tmp_path):
    """What ``ducc serve`` warns about at start, and what the README promises about tokens."""
    settings = Settings.from_env({"HOME": os.environ.get("HOME", "/root"), "DUCC_REDIS_URL": redis_server.url,
                                  "DUCC_ROOT": str(root), "DUCC_ALLOW": "*", "DUCC_STATE_DIR": str(tmp_path / "state")})
    app = create_app(settings).test_client()
    for path, body in [("/webhooks/registry", manifest_push()), ("/api/v1/conversions", {"image": "a/b:1"}),
                       ("/api/v1/conversions/0000000000-0000000000/cancel", {})]:
        content_type = EVENTS_V1 if "registry" in path else "application/json"
        refused = post(app, path, body, token="anything", content_type=content_type)
        assert refused.status_code == 401 and "no token is configured" in refused.json["error"], path
    assert jobs_count(redis_server) == 0
    for path in ("/", "/livez", "/healthz", "/metrics", "/api/v1/conversions/0000000000-0000000000",
                 "/api/v1/images?ref=a/b:1"):
        assert app.get(path).status_code in (200, 404), path


def test_rest_api_submits_reports_and_refuses_what_policy_forbids(web):
    response = post(web, "/api/v1/conversions", {"image": "127.0.0.1:5000/allowed/api:1"})
    assert response.status_code == 202
    job_id = response.json["id"]
    status = web.get(f"/api/v1/conversions/{job_id}")
    assert status.status_code == 200 and status.json["state"] == "queued"
    assert [e["state"] for e in status.json["timeline"]] == ["received", "queued"]
    assert post(web, "/api/v1/conversions", {"image": "ghcr.io/not/allowed:1"}).status_code == 403
    assert post(web, "/api/v1/conversions", {"image": "127.0.0.1:5000/allowed/api:1"}, token="bad").status_code == 401
    assert post(web, "/api/v1/conversions", {"image": "Not A Ref"}).status_code == 400
    assert post(web, "/api/v1/conversions", {"img": "x"}).status_code == 400
    assert web.get("/api/v1/conversions/unknown").status_code == 404
    images = web.get("/api/v1/images?ref=127.0.0.1:5000/allowed/api:1")
    assert images.status_code == 200 and images.json["published"] is False and images.json["jobs"][0]["id"] == job_id


def test_metrics_count_requests_by_source_and_outcome(web):
    post(web, "/webhooks/registry", manifest_push(), content_type=EVENTS_V1)
    post(web, "/webhooks/registry", manifest_push(), token="wrong", content_type=EVENTS_V1)
    text = web.get("/metrics").get_data(as_text=True)
    assert 'ducc_webhook_requests_total{outcome="accepted",source="registry"} 1.0' in text
    assert 'ducc_webhook_requests_total{outcome="unauthorized",source="registry"} 1.0' in text
    assert "ducc_queue_depth" in text and "ducc_conversion_duration_seconds_bucket" in text


def test_status_page_lists_recent_jobs(web):
    job_id = post(web, "/webhooks/registry", manifest_push(tag="page"), content_type=EVENTS_V1).json["accepted"][0]["job"]
    page = web.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert job_id in html and "127.0.0.1:5000/allowed/app:page" in html


def test_the_wishlist_table_shows_what_a_job_did_not_where_its_revision_became_visible(app_settings, redis_server,
                                                                                     tmp_path):
    """A published job's last events may say where its revision is visible (``DUCC_STRATUM1_URLS``); the
    wishlist table, like the recent jobs, shows what the conversion did. The job and the sync's outcome are
    recorded through the stores the worker uses, in the real Redis."""
    from ducc.model.reference import Reference
    from ducc.model.request import ConversionRequest
    from ducc.service import lastsync
    from ducc.service.jobs import PROPAGATION, JobState
    from ducc.wiring import Services

    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text("version: 1\ninput:\n  - '127.0.0.1:5000/allowed/app:row'\n")
    settings = Settings.from_env({**app_settings.env, "DUCC_WISHLIST": str(wishlist)})
    services = Services(settings)
    ref = Reference.parse("127.0.0.1:5000/allowed/app:row")
    job_id = services.queue.submit(ConversionRequest(ref), "wishlist").job_id
    services.jobs.event(job_id, JobState.PUBLISHED, "1 layers unpacked, 0 reused, 0.1s; in revision 7 of test")
    services.jobs.event(job_id, JobState.PUBLISHED, "visible on s1.example at 2026-01-01T00:00:00+00:00 (revision 7)",
                        kind=PROPAGATION)
    lastsync.record(services.redis, lastsync.LastSync(time.time(), str(wishlist), (
        lastsync.ImageOutcome(str(ref), "linux/amd64", "queued", job=job_id),)))
    app = create_app(settings)
    app.testing = True
    html = app.test_client().get("/").get_data(as_text=True)
    table = html.split("<h2>Wishlist</h2>")[1].split("<h2>Recent jobs</h2>")[0]
    assert job_id in table and "1 layers unpacked, 0 reused, 0.1s; in revision 7 of test" in table, table
    assert "visible on s1.example" not in table, table


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
SHAPED = st.fixed_dictionaries({"events": st.lists(st.fixed_dictionaries({
    "action": st.sampled_from(["push", "pull", "delete", 3]),
    "target": st.dictionaries(st.sampled_from(["repository", "tag", "mediaType", "digest"]), JSON | st.text(max_size=30)),
    "request": st.dictionaries(st.sampled_from(["host", "id"]), JSON | st.text(max_size=30)),
}), max_size=3)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JSON | SHAPED, path=st.sampled_from(["/webhooks/registry", "/webhooks/dockerhub", "/webhooks/harbor",
                                                  "/webhooks/quay", "/api/v1/conversions"]))
def test_random_json_never_causes_a_500(web, body, path):
    content_type = EVENTS_V1 if path.endswith("registry") else "application/json"
    response = post(web, path, body, content_type=content_type)
    assert response.status_code < 500, response.get_data(as_text=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_random_bytes_never_cause_a_500(web, raw):
    assert post(web, "/webhooks/registry", raw, content_type=EVENTS_V1).status_code in (400, 413)


def test_end_to_end_registry_notification_to_published(client, registry, redis_server, root, tmp_path):
    """A real docker-registry notifies the app (under gunicorn, with its Authorization header); skopeo
    pushes; a real worker converts. An image outside the policy is acknowledged and not converted."""
    port = free_port()
    notify = start_registry(tmp_path / "notifying", notifications={"endpoints": [{
        "name": "ducc", "url": f"http://127.0.0.1:{port}/webhooks/registry", "timeout": "2s", "threshold": 5,
        "backoff": "1s", "headers": {"Authorization": [f"Bearer {TOKEN}"]}}]})
    env = service_env(root, redis_server.url, tmp_path / "state", DUCC_WEBHOOK_TOKEN=TOKEN,
                      DUCC_ALLOW=f"{notify.host}/allowed/*", DUCC_LISTEN=f"127.0.0.1:{port}")
    web_process = DuccProcess(["web", "--workers", "2"], env, tmp_path / "web.log").start()
    worker = DuccProcess(["worker", "--concurrency", "1"], env, tmp_path / "worker.log").start()
    try:
        wait_for_port(port, process=web_process.process)
        worker.wait_for_log("ready.")
        source = f"{registry.host}/e2e/source:v1"
        from ducc.model.reference import Reference

        push_image(client, Reference.parse(source), ImageSpec(layers=[Layer([File("hello", b"pushed with skopeo\n")])]))
        for target in (f"{notify.host}/allowed/app:v1", f"{notify.host}/forbidden/app:v1"):
            subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                            f"docker://{source}", f"docker://{target}"], check=True, capture_output=True)
        allowed = Reference.parse(f"{notify.host}/allowed/app:v1")
        deadline = time.monotonic() + 60
        while not (root / layout.tag_link(allowed) / "hello").exists():
            assert time.monotonic() < deadline, web_process.log()[-2000:] + worker.log()[-2000:]
            time.sleep(0.2)
        assert (root / layout.tag_link(allowed) / "hello").read_bytes() == b"pushed with skopeo\n"
        images = requests.get(f"http://127.0.0.1:{port}/api/v1/images", params={"ref": str(allowed)}, timeout=5).json()
        assert images["jobs"] and images["jobs"][0]["source"] == "registry"
        assert images["published"] is True and Path(images["flat"]).resolve() == (root / layout.tag_link(allowed)).resolve()
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=5).text
        assert "Recently published" in page and str(layout.tag_link(allowed)) in page
        # The forbidden push's notification must have been answered (its event ignored, in the log) and the
        # allowed image's job finished before "no job for the forbidden image" means anything.
        forbidden = Reference.parse(f"{notify.host}/forbidden/app:v1")
        jobs = JobStore(redis_server.client())
        deadline = time.monotonic() + 60
        while not (f"[{forbidden}: not allowed" in web_process.log()
                   and all(j.finished for j in jobs.for_image(str(allowed)))):
            assert time.monotonic() < deadline, web_process.log()[-2000:]
            time.sleep(0.2)
        assert not (root / layout.tag_link(forbidden)).exists()
        assert JobStore(redis_server.client()).for_image(str(forbidden)) == []
        hub = requests.post(f"http://127.0.0.1:{port}/webhooks/dockerhub", params={"token": TOKEN},
                            json=payload("dockerhub-push.json"), timeout=5)
        assert hub.status_code == 200  # outside the policy here: acknowledged and ignored
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'outcome="ignored",source="registry"' in metrics
        assert 'ducc_conversions_total{result="published"} 1.0' in metrics
        assert "/webhooks/dockerhub" in web_process.log() and TOKEN not in web_process.log()
    finally:
        web_process.stop()
        worker.stop()
        notify.stop()
