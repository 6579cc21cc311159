"""Garbage collection and the unpublish policies in the service: a real redis-server, ``ducc worker``
processes (Celery, never eager), the web app, real registries (one sending real notifications) and the
fault proxy; the effects that matter are trees on disk, job timelines and metrics."""

from __future__ import annotations

import json
import re
import time

import requests

from ducc import layout
from ducc.convert import Converter
from ducc.model.manifest import DEFAULT_PLATFORM
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest, UnpublishRequest
from ducc.publish.directory import DirectoryPublisher
from ducc.service.jobs import JobStore
from ducc.service.queue import GC_TASK, SYNC_TASK
from ducc.settings import Settings
from ducc.web import create_app
from ducc.wiring import Services
from tests.integration.test_service import queue_for, service, settings_for, wait_finished  # noqa: F401
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.processes import free_port, start_registry, wait_for_port
from tests.support.proxy import via
from tests.support.service import DuccProcess, ducc_cli, service_env

TOKEN = "gc-webhook-token-51c"


def spec(content: bytes) -> ImageSpec:
    return ImageSpec(layers=[Layer([File("base", b"shared base")]), Layer([File("content", content)])])


def newest_job(jobs: JobStore, kind: str, after: set[str], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        found = [j for j in jobs.recent_jobs(200) if j.kind == kind and j.id not in after]
        if found and found[0].finished:
            return found[0]
        assert time.monotonic() < deadline, f"no finished {kind} job: {[(j.id, j.state) for j in found]}"
        time.sleep(0.2)


def test_the_scheduled_gc_is_a_job_with_a_timeline_and_metrics(client, unique_ref, redis_server, service, root, tmp_path):  # noqa: F811
    ref = unique_ref("v")
    old = push_image(client, ref, spec(b"old"))
    converter = Converter(client, DirectoryPublisher(root))
    converter.convert(ref)
    new = push_image(client, ref, spec(b"new"))
    converter.convert(ref)
    service(DUCC_GC_GRACE="0")
    settings = settings_for(redis_server, root)
    Services(settings).celery().send_task(GC_TASK)  # what beat sends on DUCC_GC_SCHEDULE
    jobs = JobStore(redis_server.client())
    job = newest_job(jobs, "gc", set())
    assert job.state == "done", job.error
    assert [e["state"] for e in job.events] == ["received", "collecting", "done"]
    assert job.source == "schedule" and job.image.startswith("garbage collection of ")
    assert "deleted 1 flat root and 1 layer" in job.events[-1]["detail"]
    assert sorted(job.result["deleted"]) == sorted([f"flat {old.config_digest}", f"layer {old.layer_digests[1]}"])
    assert not DirectoryPublisher(root).has_flat(old.config_digest) and DirectoryPublisher(root).has_flat(new.config_digest)

    env = service_env(root, redis_server.url, tmp_path / "state")
    status = ducc_cli("status", job.id, env=env)
    assert status.returncode == 0 and "DONE" in status.stdout and "collecting" in status.stdout, status.stdout
    assert job.id in ducc_cli("jobs", env=env).stdout
    cancel = ducc_cli("cancel", job.id, env=env)  # a finished job stays finished, whatever its kind
    assert cancel.returncode == 1 and f"job {job.id} has already finished: done" in cancel.stderr, cancel.stderr
    assert jobs.get(job.id).state == "done" and not jobs.get(job.id).cancelled_by
    app = create_app(settings)
    app.testing = True
    web = app.test_client()
    api = web.get(f"/api/v1/conversions/{job.id}").json
    assert api["kind"] == "gc" and api["state"] == "done" and api["result"]["bytes_freed"] > 0
    assert "garbage collection of" in web.get("/").get_data(as_text=True)
    metrics = web.get("/metrics").get_data(as_text=True)
    assert 'ducc_gc_deleted_total{kind="flat"} 1.0' in metrics and 'ducc_gc_deleted_total{kind="layer"} 1.0' in metrics
    freed = re.search(r"^ducc_gc_bytes_freed_total (\S+)$", metrics, re.M)
    assert freed and float(freed.group(1)) == api["result"]["bytes_freed"]
    flats = re.search(r'^ducc_repository_bytes\{kind="flats"\} (\S+)$', metrics, re.M)
    layers = re.search(r'^ducc_repository_bytes\{kind="layers"\} (\S+)$', metrics, re.M)
    assert flats and layers and float(flats.group(1)) == api["result"]["flat_bytes"] > 0 and float(layers.group(1)) > 0


def test_a_registry_delete_notification_unpublishes_once_the_registry_answers_404(client, registry, redis_server, root,
                                                                                   tmp_path):
    """A real registry notifies the web app (under gunicorn) of a push, then of the manifest's deletion; the
    worker confirms the 404 and unpublishes. With the policy off, the same delete is acknowledged and ignored."""
    port = free_port()
    notify = start_registry(tmp_path / "notifying", notifications={"endpoints": [{
        "name": "ducc", "url": f"http://127.0.0.1:{port}/webhooks/registry", "timeout": "2s", "threshold": 5,
        "backoff": "1s", "headers": {"Authorization": [f"Bearer {TOKEN}"]}}]})
    env = service_env(root, redis_server.url, tmp_path / "state", DUCC_WEBHOOK_TOKEN=TOKEN,
                      DUCC_ALLOW=f"{notify.host}/allowed/*", DUCC_LISTEN=f"127.0.0.1:{port}",
                      DUCC_UNPUBLISH_ON_DELETE="1")
    web_process = DuccProcess(["web", "--workers", "1"], env, tmp_path / "web.log").start()
    worker = DuccProcess(["worker", "--concurrency", "1"], env, tmp_path / "worker.log").start()
    try:
        wait_for_port(port, process=web_process.process)
        worker.wait_for_log("ready.")
        ref = Reference.parse(f"{notify.host}/allowed/app:v1")
        built = push_image(client, ref, spec(b"to be deleted"))
        deadline = time.monotonic() + 60
        while not (root / layout.tag_link(ref) / "content").exists():
            assert time.monotonic() < deadline, web_process.log()[-2000:] + worker.log()[-2000:]
            time.sleep(0.2)
        deleted = requests.delete(f"{notify.url}/v2/{ref.repository}/manifests/{built.digest}", timeout=10)
        assert deleted.status_code == 202
        deadline = time.monotonic() + 60
        while (root / layout.tag_link(ref)).is_symlink():
            assert time.monotonic() < deadline, web_process.log()[-3000:] + worker.log()[-3000:]
            time.sleep(0.2)
        assert DirectoryPublisher(root).read_record(ref, DEFAULT_PLATFORM) is None
        assert DirectoryPublisher(root).has_flat(built.config_digest)  # until gc, after the grace
        job = newest_job(JobStore(redis_server.client()), "unpublish", set())
        assert [e["state"] for e in job.events] == ["received", "queued", "resolving", "done"]
        assert job.source == "registry" and job.events[-1]["detail"].startswith("unpublished ")
    finally:
        web_process.stop()
        worker.stop()
        notify.stop()

    # The same delete with the policy off (the default): acknowledged, ignored, nothing queued.
    policy_off = Settings.from_env({**dict(settings_for(redis_server, root).env), "DUCC_WEBHOOK_TOKEN": TOKEN,
                                    "DUCC_ALLOW": "*"})
    assert not policy_off.web.unpublish_on_delete
    event = {"events": [{"id": "d1", "action": "delete", "target": {"repository": "allowed/app", "tag": "v1"},
                         "request": {"host": notify.host, "method": "DELETE"}}]}
    answer = create_app(policy_off).test_client().post("/webhooks/registry", data=json.dumps(event),
                                                       headers={"Authorization": f"Bearer {TOKEN}"},
                                                       content_type="application/json")
    assert answer.status_code == 200 and answer.json["accepted"] == []
    assert "DUCC_UNPUBLISH_ON_DELETE is off" in answer.json["ignored"][0]["reason"]


def test_an_unpublish_job_keeps_the_tag_while_the_registry_fails(proxy, client, unique_ref, redis_server, service, root):  # noqa: F811
    ref = via(proxy, unique_ref())
    push_image(client, ref, spec(b"kept"))
    Converter(client, DirectoryPublisher(root)).convert(ref)
    proxy.add("status", r"/manifests/", method="HEAD", times=-1, status=503)
    service(DUCC_RETRY_ATTEMPTS="1", DUCC_JOB_MAX_ATTEMPTS="2")
    job_id = queue_for(redis_server, root).submit(UnpublishRequest(ref, reason="a test"), "test").job_id
    (job,) = wait_finished(JobStore(redis_server.client()), [job_id], timeout=120)
    assert job.state == "failed" and job.error.startswith("kept: cannot tell whether") and "503" in job.error
    assert [e["state"] for e in job.events if e["state"] == "retrying"]
    assert (root / layout.tag_link(ref) / "content").read_bytes() == b"kept"
    assert DirectoryPublisher(root).read_record(ref, DEFAULT_PLATFORM) is not None


def test_tags_that_left_the_wishlist_are_unpublished_only_when_the_whole_wishlist_expanded(
    proxy, client, unique_ref, redis_server, service, root, tmp_path  # noqa: F811
):
    first = via(proxy, unique_ref("a1"))
    second, asked_by_hand = first.with_tag("a2"), first.with_tag("by-hand")
    other = via(proxy, unique_ref("x"))
    for ref in (first, second, asked_by_hand, other):
        push_image(client, ref, spec(str(ref).encode()))
    wishlist = tmp_path / "wishlist.yaml"

    def wish(*entries: str) -> None:
        wishlist.write_text("version: 1\ninput:\n" + "".join(f"  - '{e}'\n" for e in entries))

    wish(str(first), str(second))
    worker = service(DUCC_WISHLIST=str(wishlist), DUCC_UNPUBLISH_REMOVED_WISHES="1")
    settings = settings_for(redis_server, root)
    celery = Services(settings).celery()
    jobs = JobStore(redis_server.client())
    queue = queue_for(redis_server, root)
    wait_finished(jobs, [queue.submit(ConversionRequest(asked_by_hand), "api").job_id])

    def sync(n: int) -> None:
        celery.send_task(SYNC_TASK)
        deadline = time.monotonic() + 120
        while worker.log().count("wishlist sync: ") < n:
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.2)
        ids = [j.id for j in jobs.recent_jobs(200)]
        wait_finished(jobs, ids)

    sync(1)
    assert all((root / layout.tag_link(r)).is_symlink() for r in (first, second, asked_by_hand))
    record = DirectoryPublisher(root).read_record(second, DEFAULT_PLATFORM)
    assert record is not None and record.requested_by == f"wishlist {wishlist}"

    # second left the wishlist, but a glob of the new wishlist cannot be listed: nothing is unpublished
    proxy.add("status", r"/tags/list", method="GET", times=-1, status=503)
    wish(str(first), f"{other.registry}/{other.repository}:*")
    sync(2)
    assert "could not be expanded" in worker.log()
    assert (root / layout.tag_link(second)).is_symlink()
    assert [j for j in jobs.recent_jobs(200) if j.kind == "unpublish"] == []

    proxy.rules.clear()
    wish(str(first))
    sync(3)
    unpublished = newest_job(jobs, "unpublish", set())
    assert unpublished.state == "done" and unpublished.image == str(second) and unpublished.source == "wishlist"
    assert not (root / layout.tag_link(second)).is_symlink()
    assert (root / layout.tag_link(first)).is_symlink() and (root / layout.tag_link(asked_by_hand)).is_symlink()

