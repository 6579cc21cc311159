"""Cancelling jobs through the real CLI and the REST API, with a real worker (and beat) on a real Redis:
a queued, a running and a retrying job each end ``cancelled`` with who cancelled in the timeline, nothing is
published or left in staging, jobs coalesced into a cancelled one end with it, and a cancelled job that was
waiting for a retry comes back neither through its Celery retry nor through reconciliation."""

from __future__ import annotations

import os
import re
import time

import pytest

from ducc import layout
from ducc.model.reference import Reference
from ducc.service.jobs import JobStore
from ducc.web import create_app
from tests.integration.test_service import queue_for, settings_for, wait_finished, wait_state
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.proxy import FaultProxy, via
from tests.support.service import DuccProcess, ducc_cli, service_env

TOKEN = "cancel-api-token"


@pytest.fixture
def worker(tmp_path, redis_server, root):
    started: list[DuccProcess] = []

    def start(*argv: str, **extra: str) -> DuccProcess:
        env = service_env(root, redis_server.url, tmp_path / "state", **extra)
        proc = DuccProcess(list(argv) or ["worker", "--name", "c@%h"], env, tmp_path / f"{argv[:1] or 'w'}-{len(started)}.log").start()
        started.append(proc)
        if not argv or argv[0] == "worker":
            proc.wait_for_log("ready.")
        return proc

    yield start
    for proc in started:
        proc.stop()


def nothing_published(root, ref) -> bool:
    staging = root / layout.STAGING
    return (not (root / layout.tag_link(ref)).exists() and not (root / layout.metadata_dir(ref)).exists()
            and (not staging.exists() or [p for p in staging.iterdir() if p.is_dir()] == []))


def test_a_queued_job_is_cancelled_at_once_and_coalesced_requests_end_with_it(client, unique_ref, redis_server, root, worker, tmp_path):
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([File("app", b"never")])]))
    env = service_env(root, redis_server.url, tmp_path / "state")
    first = ducc_cli("submit", str(ref), env=env).stdout.split()[-1]
    joined = ducc_cli("submit", str(ref), env=env).stdout.split()[-1]
    cancelled = ducc_cli("cancel", joined, env=env)  # the id of a coalesced request cancels the conversion
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"job {first}: cancelled (job {joined} had joined it); it was queued")
    jobs = JobStore(redis_server.client())
    for job_id in (first, joined):
        job = jobs.get(job_id)
        assert job.state == "cancelled" and job.error.startswith("cancelled by cli (")
    assert any(e["state"] == "cancelled" and "cancelled by cli (" in e["detail"] for e in jobs.get(first).events)
    status = ducc_cli("status", joined, env=env)
    assert status.returncode == 1 and "CANCELLED" in status.stdout

    worker()  # the job is still in the queue: the worker takes it and leaves it cancelled
    again = ducc_cli("submit", str(ref), env=env).stdout.split()[-1]
    (fresh,) = wait_finished(jobs, [again])
    assert again not in (first, joined) and fresh.state == "published" and not fresh.coalesced_into
    assert jobs.get(first).state == "cancelled" and [e["state"] for e in jobs.get(first).events][-1] == "cancelled"
    late = ducc_cli("cancel", first, "0000000000-0000000000", env=env)
    assert late.returncode == 1 and "Traceback" not in late.stderr
    assert late.stderr.splitlines() == [f"ducc: job {first} has already finished: cancelled",
                                        "ducc: no job 0000000000-0000000000"]


def test_a_running_conversion_stops_at_its_next_cancel_point_and_publishes_nothing(client, unique_ref, redis_server,
                                                                                    root, worker, tmp_path, proxy):
    ref = via(proxy, unique_ref())
    built = push_image(client, ref, ImageSpec(layers=[Layer([File("small", b"s")]),
                                                      Layer([File("big", os.urandom(3_000_000))])]))
    proxy.add("slow", f"/blobs/{built.layer_digests[1]}", keep_bytes=20_000)  # 15 s of download
    w = worker()
    env = service_env(root, redis_server.url, tmp_path / "state")
    job_id = ducc_cli("submit", str(ref), env=env).stdout.split()[-1]
    jobs = JobStore(redis_server.client())
    wait_state(jobs, job_id, ("fetching",), timeout=60)
    asked = time.monotonic()
    cancelled = ducc_cli("cancel", job_id, env=env)
    assert cancelled.returncode == 0 and "cancel requested" in cancelled.stdout and "fetching" in cancelled.stdout
    (job,) = wait_finished(jobs, [job_id], timeout=60)
    took = time.monotonic() - asked
    print(f"the running conversion stopped {took:.1f}s after the cancel")
    assert job.state == "cancelled" and "cancelled by cli (" in job.error and "while fetching" in job.error
    details = [e["detail"] for e in job.events]
    assert any(d.startswith("cancel requested by cli (") for d in details)
    assert job.events[-1]["state"] == "cancelled" and "nothing half published" in details[-1]
    assert took < 12, "it stopped at a cancel point in the download, not at its end"
    assert nothing_published(root, ref) and not (root / layout.layerfs(built.layer_digests[1])).exists()
    assert "Traceback" not in w.log()


def test_the_api_cancels_with_its_token_and_answers_by_outcome(client, unique_ref, redis_server, root, tmp_path):
    settings = settings_for(redis_server, root)
    settings = type(settings).from_env({**settings.env, "DUCC_WEBHOOK_TOKEN": TOKEN, "DUCC_ALLOW": "*"})
    web = create_app(settings).test_client()
    job_id = queue_for(redis_server, root).submit(
        __import__("ducc.model.request", fromlist=["ConversionRequest"]).ConversionRequest(unique_ref()), "test").job_id
    path = f"/api/v1/conversions/{job_id}/cancel"
    assert web.post(path).status_code == 401
    assert web.post(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert JobStore(redis_server.client()).get(job_id).state == "queued"
    done = web.post(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert done.status_code == 200 and done.json["state"] == "cancelled" and done.json["id"] == job_id
    job = web.get(f"/api/v1/conversions/{job_id}").json
    assert job["state"] == "cancelled" and job["cancelled_by"].startswith("api (")
    again = web.post(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.status_code == 409 and again.json["state"] == "cancelled"
    unknown = web.post("/api/v1/conversions/0000000000-0000000000/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    assert unknown.status_code == 404


def test_a_job_retrying_against_a_dead_registry_is_cancelled_and_never_comes_back(client, unique_ref, redis_server, root,
                                                                                 worker, tmp_path, registry):
    proxy = FaultProxy(registry.host)
    try:
        ref = Reference(proxy.host, unique_ref().repository, "v1")
        push_image(client, ref, ImageSpec(layers=[Layer([File("x", b"x")])]))
        proxy.add("status", "/manifests/", method=None, times=-1, status=503)  # the registry stays down
        fast = {"DUCC_RETRY_ATTEMPTS": "1", "DUCC_JOB_RETRY_BASE": "2", "DUCC_JOB_LEASE": "3"}
        converting = worker("worker", "--name", "r@%h", **fast)
        worker("beat", **fast)  # reconciliation every DUCC_JOB_LEASE seconds
        env = service_env(root, redis_server.url, tmp_path / "state", **fast)
        job_id = ducc_cli("submit", str(ref), env=env).stdout.split()[-1]
        jobs = JobStore(redis_server.client())
        wait_state(jobs, job_id, ("retrying",), timeout=60)
        mark = len(converting.log())
        cancelled = ducc_cli("cancel", job_id, env=env)
        assert cancelled.returncode == 0 and "it was retrying" in cancelled.stdout, cancelled.stdout + cancelled.stderr
        before = jobs.get(job_id)
        asked = len(proxy.requests(path="/manifests/"))
        # Both ways back are seen to happen: the Celery retry is delivered (and answers 'cancelled'), and
        # reconciliation runs twice after the cancel (and requeues nothing).
        deadline = time.monotonic() + 60
        while True:
            since = converting.log()[mark:]
            retried = re.findall(r"Task ducc\.convert\[[^]]+\] succeeded in [^:]+: (.*)", since)
            reconciled = re.findall(r"Task ducc\.reconcile\[[^]]+\] succeeded in [^:]+: (.*)", since)
            if retried and len(reconciled) >= 2:
                break
            assert time.monotonic() < deadline, since[-3000:]
            time.sleep(0.2)
        assert retried == ["'cancelled'"] and set(reconciled) == {"0"}, since[-3000:]
        after = jobs.get(job_id)
        assert after.state == "cancelled" and after.attempts == before.attempts and after.events == before.events
        assert len(proxy.requests(path="/manifests/")) == asked, "a cancelled job asked the registry again"
        assert nothing_published(root, ref)
    finally:
        proxy.stop()


def test_a_running_unpublish_is_never_stopped_halfway_and_the_cancel_says_so(client, unique_ref, registry, redis_server,
                                                                            root, worker, tmp_path):
    """An unpublish removes things: once a worker runs it, a cancel is refused with a one-line reason (the
    CLI exits 1, the API answers 409) and the job goes on to its own end, never marked cancelled."""
    from ducc.model.request import UnpublishRequest
    from ducc.settings import Settings

    proxy = FaultProxy(registry.host)
    try:
        ref = via(proxy, unique_ref())
        push_image(client, ref, ImageSpec(layers=[Layer([File("a", b"kept")])]))
        env = service_env(root, redis_server.url, tmp_path / "state")
        assert ducc_cli("convert", str(ref), env=env).returncode == 0
        proxy.add("stall", "/manifests/", method=None, times=1, seconds=6.0)  # the registry takes its time
        worker()
        job_id = queue_for(redis_server, root).submit(UnpublishRequest(ref, reason="test"), "test").job_id
        jobs = JobStore(redis_server.client())
        wait_state(jobs, job_id, ("resolving",))
        refused = ducc_cli("cancel", job_id, env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert f"job {job_id} is resolving: it removes things and is never stopped halfway" in refused.stderr
        app = create_app(Settings.from_env({**env, "DUCC_WEBHOOK_TOKEN": TOKEN}))
        answer = app.test_client().post(f"/api/v1/conversions/{job_id}/cancel",
                                        headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 409 and answer.get_json()["outcome"] == "busy"
        (job,) = wait_finished(jobs, [job_id], timeout=120)
        assert job.state == "done" and not job.cancelled_by  # the tag is still served: kept
        assert (root / layout.tag_link(ref) / "a").read_bytes() == b"kept"
    finally:
        proxy.stop()
