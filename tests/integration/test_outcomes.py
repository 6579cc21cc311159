"""What a job reports is what happened: coalesced requests keep what they asked for (a thin image), a
cancel that comes after publication leaves the job published, a recheck never replaces the job's real
result, and a garbage collection redelivered after its worker died stays one job.

Real parts throughout: a redis-server, ``ducc worker`` (and ``ducc beat``) processes (Celery, never
eager), the real registry behind the fault proxy, the CLI, and ``/metrics`` from the real web app.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from ducc import layout
from ducc.convert import Converter
from ducc.errors import JobCancelled
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest
from ducc.publish.directory import DirectoryPublisher
from ducc.service import keys
from ducc.service.jobs import JobStore
from ducc.service.queue import GC_TASK
from ducc.web import create_app
from ducc.wiring import Services
from tests.integration.test_service import queue_for, settings_for, wait_finished, wait_state
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.processes import children
from tests.support.proxy import via
from tests.support.service import DuccProcess, ducc_cli, service_env

SOURCE = ImageSpec(layers=[Layer([File("etc/os-release", b"ID=outcomes\n")]), Layer([File("app", os.urandom(150_000))])],
                   env=["PATH=/usr/bin:/bin"], cmd=["/app"])
THIN_REPO = "unpacked.example.org"  # the repository the thin images' layer URLs name


@pytest.fixture
def processes(tmp_path, redis_server, root):
    """Start ``ducc`` service processes (a worker unless told otherwise); stops them all at the end."""
    started: list[DuccProcess] = []

    def start(*argv: str, **extra: str) -> DuccProcess:
        env = service_env(root, redis_server.url, tmp_path / "state", DOCKER_CONFIG=str(tmp_path),
                          DUCC_THIN_CVMFS_REPO=THIN_REPO, **extra)
        argv = argv or ("worker", "--name", f"o{len(started)}@%h", "--concurrency", "2")
        proc = DuccProcess(list(argv), env, tmp_path / f"{argv[0]}-{len(started)}.log").start()
        started.append(proc)
        if argv[0] == "worker":
            proc.wait_for_log("ready.")
        return proc

    yield start
    for proc in started:
        proc.stop()


def metrics(redis_server, root) -> str:
    return create_app(settings_for(redis_server, root)).test_client().get("/metrics").get_data(as_text=True)


def conversions(text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^ducc_conversions_total\{result="(\w+)"\} (\S+)$', text, re.M)}


def details(job) -> list[str]:
    return [e["detail"] for e in job.events]


def thin_digest(client, target: Reference):
    return client.manifest_digest(target)


# -- coalescing keeps what every request asked for ----------------------------------------------


def test_a_thin_image_asked_for_while_the_image_is_queued_is_pushed_and_a_different_one_gets_its_own_job(
    client, unique_ref, registry, redis_server, root, tmp_path, processes
):
    source = unique_ref("1.0")
    push_image(client, source, SOURCE)
    first_target = Reference(registry.host, f"thin/{source.repository}", "1")
    other_target = Reference(registry.host, f"other/{source.repository}", "1")
    env = service_env(root, redis_server.url, tmp_path / "state", DOCKER_CONFIG=str(tmp_path))
    plain = ducc_cli("submit", str(source), env=env).stdout.split()[-1]
    joined = ducc_cli("submit", str(source), "--thin", f"http://{first_target}", env=env)
    assert joined.returncode == 0 and f"coalesced into {plain}" in joined.stderr, joined.stderr
    other = ducc_cli("submit", str(source), "--thin", f"http://{other_target}", env=env)
    assert other.returncode == 0 and "coalesced" not in other.stderr, other.stderr  # one job cannot push both
    joined_id, other_id = joined.stdout.split()[-1], other.stdout.split()[-1]

    processes()
    jobs = JobStore(redis_server.client())
    first, second, third = wait_finished(jobs, [plain, joined_id, other_id], timeout=180)
    assert [j.state for j in (first, second, third)] == ["published"] * 3, [j.error for j in (first, second, third)]
    pushed = thin_digest(client, first_target)
    assert pushed is not None, "the thin image the joined request asked for was never pushed"
    assert first.result["thin_digest"] == second.result["thin_digest"] == str(pushed)
    assert f"thin image pushed: {first_target}@{pushed}" in details(first)
    assert thin_digest(client, other_target) is not None
    assert third.result["thin_digest"] == str(thin_digest(client, other_target))
    assert (root / layout.tag_link(source) / "etc/os-release").read_bytes() == b"ID=outcomes\n"


def test_a_thin_image_asked_for_while_the_image_converts_is_pushed_before_the_job_ends(
    client, unique_ref, registry, proxy, redis_server, root, processes
):
    source = via(proxy, unique_ref())
    built = push_image(client, source, SOURCE)
    proxy.add("slow", f"/blobs/{built.layer_digests[1]}", times=1, keep_bytes=20_000)
    target = Reference(registry.host, f"thin/{source.repository}", "2")
    processes()
    queue = queue_for(redis_server, root)
    jobs = JobStore(redis_server.client())
    first = queue.submit(ConversionRequest(source), "api").job_id
    wait_state(jobs, first, ("fetching", "unpacking"), timeout=60)
    joined = queue.submit(ConversionRequest(source, thin=target), "registry")
    assert joined.into == first
    done = wait_finished(jobs, [first, joined.job_id], timeout=180)
    assert [j.state for j in done] == ["published", "published"], [j.error for j in done]
    pushed = thin_digest(client, target)
    assert pushed is not None, "the thin image asked for during the conversion was never pushed"
    assert done[0].result["thin_digest"] == str(pushed) and done[0].result["layers_unpacked"] == 2


def test_a_request_no_longer_carries_a_repository_that_splits_coalescing():
    ref = Reference.parse("127.0.0.1:5000/team/app:1")
    request = ConversionRequest.from_json({"image": str(ref), "repository": "elsewhere.example.org"})
    assert request.key == ConversionRequest(ref).key and "repository" not in request.to_json()


# -- a cancel after publication -----------------------------------------------------------------


def test_a_cancel_that_arrives_after_publication_leaves_the_job_published(
    client, unique_ref, registry, proxy, redis_server, root, tmp_path, processes
):
    source = unique_ref()
    push_image(client, source, SOURCE)
    target = via(proxy, Reference(registry.host, f"thin/{source.repository}", "3"))
    proxy.add("stall", "/manifests/", method="PUT", times=1, seconds=5.0)  # the thin push takes its time
    processes()
    env = service_env(root, redis_server.url, tmp_path / "state", DOCKER_CONFIG=str(tmp_path))
    job_id = ducc_cli("submit", str(source), "--thin", f"http://{target}", env=env).stdout.split()[-1]
    jobs = JobStore(redis_server.client())
    wait_state(jobs, job_id, ("thin",), timeout=120)
    assert (root / layout.tag_link(source) / "app").is_file()  # published: the tag and its record are there
    cancelled = ducc_cli("cancel", job_id, env=env)
    assert cancelled.returncode == 0 and "its image is published all the same" in cancelled.stdout, cancelled.stdout
    (job,) = wait_finished(jobs, [job_id], timeout=120)
    assert job.state == "published" and job.error == "", (job.state, job.error)
    assert any(d.startswith("cancel requested by cli (") and "the image is already published" in d
               for d in details(job))
    assert job.events[-1]["state"] == "published" and "after publication" in job.events[-1]["detail"]
    assert job.result["state"] == "published" and job.result["layers_unpacked"] == 2
    status = ducc_cli("status", job_id, env=env)
    assert status.returncode == 0 and "PUBLISHED" in status.stdout, status.stdout
    counted = conversions(metrics(redis_server, root))
    assert counted.get("published") == 1.0 and "cancelled" not in counted, counted


def test_a_cancel_while_the_thin_push_waits_for_its_retry_leaves_the_job_published(
    client, unique_ref, registry, proxy, redis_server, root, tmp_path, processes
):
    source = unique_ref()
    push_image(client, source, SOURCE)
    target = via(proxy, Reference(registry.host, f"thin/{source.repository}", "5"))
    proxy.add("status", "/blobs/uploads/", method=None, status=503, times=-1)  # the thin registry is down
    processes(DUCC_RETRY_ATTEMPTS="1", DUCC_JOB_RETRY_BASE="120")
    job_id = queue_for(redis_server, root).submit(ConversionRequest(source, thin=target), "api").job_id
    jobs = JobStore(redis_server.client())
    wait_state(jobs, job_id, ("retrying",), timeout=120)
    assert (root / layout.tag_link(source) / "app").is_file()
    env = service_env(root, redis_server.url, tmp_path / "state")
    cancelled = ducc_cli("cancel", job_id, env=env)
    assert cancelled.returncode == 0 and "already published" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    job = jobs.get(job_id)
    assert job.state == "published" and job.error == "", (job.state, job.error)
    assert job.events[-1]["detail"].startswith("cancelled by cli (") and "after publication" in job.events[-1]["detail"]
    status = ducc_cli("status", job_id, env=env)
    assert status.returncode == 0 and "PUBLISHED" in status.stdout, status.stdout
    counted = conversions(metrics(redis_server, root))
    assert counted.get("published") == 1.0 and "cancelled" not in counted, counted


def test_a_thin_push_cancelled_after_publication_says_so_and_the_image_stays_published(client, unique_ref, registry,
                                                                                         root):
    source = unique_ref()
    push_image(client, source, SOURCE)
    target = Reference(registry.host, f"thin/{source.repository}", "4")
    checked: list[str] = []

    def cancel_once_published(point: str) -> None:  # a cancel that arrives right after the commit
        checked.append(point)
        if (root / layout.tag_link(source)).exists():
            raise JobCancelled("cli (someone@host)", point)

    result = Converter(client, DirectoryPublisher(root), thin_cvmfs_repo=THIN_REPO).run(ConversionRequest(source, thin=target),
                                                             cancel=cancel_once_published)
    assert result.state == "published" and result.layers_unpacked == 2
    assert result.thin_digest is None and result.thin_error == "cancelled by cli (someone@host) while thin"
    assert thin_digest(client, target) is None
    assert (root / layout.tag_link(source) / "app").is_file()
    assert checked[0] == "resolving" and "publishing" in checked and checked[-1] == "thin"


# -- a recheck never replaces the real result ----------------------------------------------------


def test_a_recheck_that_finds_the_tag_unchanged_keeps_the_jobs_real_outcome(
    client, unique_ref, proxy, redis_server, root, tmp_path, processes
):
    source = via(proxy, unique_ref())
    built = push_image(client, source, SOURCE)
    proxy.add("slow", f"/blobs/{built.layer_digests[1]}", times=1, keep_bytes=20_000)
    processes()
    queue = queue_for(redis_server, root)
    jobs = JobStore(redis_server.client())
    first = queue.submit(ConversionRequest(source), "api").job_id
    wait_state(jobs, first, ("fetching", "unpacking"), timeout=60)
    joined = queue.submit(ConversionRequest(source), "registry")  # the same push, announced again
    assert joined.into == first
    job, late = wait_finished(jobs, [first, joined.job_id], timeout=180)
    assert job.state == late.state == "published"
    assert job.result["state"] == "published" and job.result["changed"] is True
    assert job.result["layers_unpacked"] == 2 and job.result["bytes_fetched"] > 150_000
    assert late.result == job.result
    rechecks = [e for e in job.events if e.get("kind") == "recheck"]
    assert [e["detail"] for e in rechecks] == [f"checked the tag again: unchanged, {built.digest.short} is published"]
    assert job.events[-1]["state"] == "published" and "2 layers unpacked" in job.events[-1]["detail"]
    env = service_env(root, redis_server.url, tmp_path / "state")
    for job_id in (first, joined.job_id):
        status = ducc_cli("status", job_id, env=env)
        assert status.returncode == 0 and "PUBLISHED" in status.stdout
    assert conversions(metrics(redis_server, root)) == {"published": 1.0}


# -- one garbage collection per schedule tick ----------------------------------------------------


def spec(content: bytes) -> ImageSpec:
    return ImageSpec(layers=[Layer([File("base", b"shared base")]), Layer([File("content", content)])])


def test_a_gc_redelivered_after_its_worker_died_is_still_one_job(
    client, unique_ref, redis_server, root, tmp_path, processes
):
    """The pool process running the scheduled gc is killed while it waits for the repository: Celery
    redelivers the message (late ack, reject on worker lost) and reconciliation finds the job's lease
    lapsed. The tick stays one job, and its collection runs to the end once."""
    ref = unique_ref("v")
    old = push_image(client, ref, spec(b"old"))
    converter = Converter(client, DirectoryPublisher(root))
    converter.convert(ref)
    push_image(client, ref, spec(b"new"))
    converter.convert(ref)
    fast = {"DUCC_JOB_LEASE": "3", "DUCC_GC_GRACE": "0"}
    worker = processes("worker", "--name", "gc@%h", "--concurrency", "1", **fast)
    processes("beat", **fast)  # reconciliation every DUCC_JOB_LEASE seconds
    settings = settings_for(redis_server, root)
    services = Services(type(settings).from_env({**settings.env, **fast}), shared_locks=True)
    jobs = JobStore(redis_server.client())

    def gc_jobs() -> list:
        return [j for j in jobs.recent_jobs(200) if j.kind == "gc"]

    with services.publisher.transaction():  # the repository is busy: the collection waits for it
        services.celery().send_task(GC_TASK)  # what beat sends on DUCC_GC_SCHEDULE
        deadline = time.monotonic() + 60
        while not [j for j in gc_jobs() if j.state == "collecting"]:
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.1)
        (tick,) = gc_jobs()
        (pool,) = children(worker.process.pid)
        os.kill(pool, signal.SIGKILL)
        worker.wait_for_log("SIGKILL")
        # The repository stays busy until the job is taken up again: by the redelivered message, or by the
        # one reconciliation requeues once the job's lease lapsed. Either claims the lease anew; the killed
        # process's lease only runs down (its remaining milliseconds never grow).
        lease, watch = keys.job_lease(tick.id), redis_server.client()
        left, deadline = watch.pttl(lease), time.monotonic() + 60
        while (now := watch.pttl(lease)) <= left:
            assert time.monotonic() < deadline, worker.log()[-3000:]
            left = now
            time.sleep(0.05)

    def settled() -> bool:  # every gc job ended, and every gc message but the killed one was handled
        log = worker.log()
        received = len(re.findall(r"Task ducc\.gc\[\S+\] received", log))
        handled = len(re.findall(r"Task ducc\.gc\[\S+\] succeeded", log))
        return all(j.finished for j in gc_jobs()) and received == handled + 1

    deadline = time.monotonic() + 120
    while not settled():
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    found = gc_jobs()
    assert [j.id for j in found] == [tick.id], [(j.id, j.state, details(j)) for j in found]
    job = jobs.get(tick.id)
    assert job.state == "done", job.error
    states = [e["state"] for e in job.events]
    assert states[0] == "received" and states[-1] == "done" and states.count("done") == 1
    assert len(re.findall(r"job \S+: gc \(grace", worker.log())) == 1, "the collection ran more than once"
    assert f"flat {old.config_digest}" in job.result["deleted"]
    env = service_env(root, redis_server.url, tmp_path / "state")
    status = ducc_cli("status", tick.id, env=env)
    assert status.returncode == 0 and "DONE" in status.stdout
    text = metrics(redis_server, root)
    assert 'ducc_gc_deleted_total{kind="flat"} 1.0' in text and 'ducc_gc_deleted_total{kind="layer"} 1.0' in text
