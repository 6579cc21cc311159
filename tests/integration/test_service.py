"""The service with real parts: a redis-server, ``ducc worker`` processes (Celery, never eager),
the CLI, and the effects that matter: published trees and job timelines."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from ducc import layout
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest
from ducc.service.jobs import JobStore
from ducc.service.queue import Queue, QueueUnavailable
from ducc.settings import Settings
from tests.support.images import Dir, File, ImageSpec, Layer, push_image
from tests.support.proxy import FaultProxy
from tests.support.service import DuccProcess, RedisServer, ducc_cli, service_env, start_redis

ORDER = ["received", "queued", "resolving", "fetching", "unpacking", "flattening", "publishing", "published"]
BASE = Layer([Dir("etc"), File("etc/os-release", b"ID=service-test\n"), Dir("usr"), File("usr/lib.so", os.urandom(200_000))])


@pytest.fixture
def service(tmp_path, redis_server, root):
    """Start ``ducc worker`` processes on demand; stops them all at the end."""
    started: list[DuccProcess] = []

    def worker(name: str = "w1", **extra: str) -> DuccProcess:
        env = service_env(root, redis_server.url, tmp_path / "state", **extra)
        proc = DuccProcess(["worker", "--name", f"{name}@%h", "--concurrency", "2"], env, tmp_path / f"{name}.log").start()
        started.append(proc)
        proc.wait_for_log("ready.")
        return proc

    yield worker
    for proc in started:
        proc.stop()


def settings_for(redis_server: RedisServer, root: Path) -> Settings:
    return Settings.from_env({"DUCC_REDIS_URL": redis_server.url, "DUCC_ROOT": str(root), "HOME": os.environ.get("HOME", "/root")})


def queue_for(redis_server: RedisServer, root: Path) -> Queue:
    from ducc.wiring import Services

    return Services(settings_for(redis_server, root)).queue


def wait_finished(jobs: JobStore, job_ids: list[str], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [jobs.get(j) for j in job_ids]
        if all(j is not None and j.finished for j in found):
            return found
        time.sleep(0.2)
    raise TimeoutError(f"jobs not finished: {[(j.id, j.state) for j in found if j and not j.finished]}")


def sync_and_wait(celery, redis_server: RedisServer, timeout: float = 120) -> list:
    """Send the wishlist sync to the workers and wait until it has recorded its outcome (``ducc:sync:last``,
    written once every image was checked) and every job queued until then has finished; returns those jobs.
    The record is the sync's own word that it is done, so a sync that queues nothing is seen as such."""
    from ducc.service import lastsync

    client = redis_server.client()
    jobs = JobStore(client)
    known = {j.id for j in jobs.recent_jobs(1000)}
    previous = lastsync.read(client)
    celery.send_task("ducc.sync")
    deadline = time.monotonic() + timeout
    while (last := lastsync.read(client)) is None or (previous is not None and last.at <= previous.at):
        assert time.monotonic() < deadline, "the sync never recorded its outcome"
        time.sleep(0.2)
    new = [j.id for j in jobs.recent_jobs(1000) if j.id not in known]
    assert sorted(new) == sorted(o.job for o in last.images if o.job), "jobs other than those the sync queued"
    return wait_finished(jobs, new, timeout)


def wait_state(jobs: JobStore, job_id: str, states: tuple[str, ...], timeout: float = 30) -> None:
    """Wait until the job is in one of ``states`` (the middle of a conversion, for tests that act there)."""
    deadline = time.monotonic() + timeout
    while jobs.get(job_id).state not in states:
        assert time.monotonic() < deadline, f"job {job_id} never reached {states}"
        time.sleep(0.05)


def test_a_submitted_image_is_published_with_its_whole_timeline(client, unique_ref, redis_server, service, root, tmp_path):
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[BASE, Layer([File("app", b"v1")])]))
    service()
    env = service_env(root, redis_server.url, tmp_path / "state")
    submitted = ducc_cli("submit", str(ref), env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    status = ducc_cli("status", job_id, "--wait", "120", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "PUBLISHED" in status.stdout
    job = JobStore(redis_server.client()).get(job_id)
    assert [e["state"] for e in job.events] == ORDER
    assert job.result["changed"] is True and job.result["layers_unpacked"] == 2
    assert job.bytes > 200_000
    assert (root / layout.tag_link(ref) / "app").read_bytes() == b"v1"
    by_image = ducc_cli("status", str(ref), env=env)
    assert by_image.returncode == 0 and job_id in by_image.stdout
    listed = ducc_cli("jobs", env=env)
    assert job_id in listed.stdout and "published" in listed.stdout


def test_requests_for_an_image_already_queued_are_coalesced(client, unique_ref, redis_server, service, root):
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[BASE, Layer([File("app", b"once")])]))
    queue = queue_for(redis_server, root)
    first = queue.submit(ConversionRequest(ref), "test")
    assert first.into is None and first.outcome == "accepted"
    second = queue.submit(ConversionRequest(ref), "test")
    third = queue.submit(ConversionRequest(ref), "registry")
    assert second.into == first.job_id and third.into == first.job_id
    first, second, third = first.job_id, second.job_id, third.job_id
    worker = service()
    jobs = JobStore(redis_server.client())
    finished = wait_finished(jobs, [first, second, third])
    assert [j.state for j in finished] == ["published"] * 3
    assert all(j.result == finished[0].result for j in finished)
    assert worker.log().count("Task ducc.convert[") >= 1
    assert worker.log().count("received") == 1  # one task for three requests


def test_a_request_arriving_while_the_image_converts_joins_it_and_the_tag_is_checked_again(
    client, unique_ref, redis_server, service, root, registry
):
    proxy = FaultProxy(registry.host)
    try:
        ref = Reference(proxy.host, unique_ref().repository, "v1")
        built = push_image(client, ref, ImageSpec(layers=[BASE, Layer([File("app", b"first")])]))
        proxy.add("slow", f"/blobs/{built.layer_digests[0]}", times=1, keep_bytes=20_000)
        service()
        queue = queue_for(redis_server, root)
        jobs = JobStore(redis_server.client())
        first = queue.submit(ConversionRequest(ref), "test").job_id
        wait_state(jobs, first, ("fetching", "unpacking"))
        push_image(client, ref, ImageSpec(layers=[BASE, Layer([File("app", b"second")])]))  # the tag moves meanwhile
        later = queue.submit(ConversionRequest(ref), "test")
        assert later.into == first  # one conversion at a time for an image ...
        done = wait_finished(jobs, [first, later.job_id])
        # ... and the running job, which had resolved the old push, looked again before finishing
        assert (root / layout.tag_link(ref) / "app").read_bytes() == b"second"
        assert [j.state for j in done] == ["published", "published"] and done[0].result == done[1].result
        assert any("checking the tag again" in e["detail"] for e in done[0].events)
    finally:
        proxy.stop()


def test_two_workers_convert_many_images_at_once_without_duplicate_work(client, unique_ref, redis_server, service, root):
    refs = [unique_ref(f"t{i}") for i in range(6)]
    for i, ref in enumerate(refs):
        push_image(client, ref, ImageSpec(layers=[BASE, Layer([File("which", str(i).encode())])]))
    service("w1")
    service("w2")
    queue = queue_for(redis_server, root)
    ids = []
    for ref in refs + refs:  # every image asked for twice
        ids.append(queue.submit(ConversionRequest(ref), "test").job_id)
    jobs = JobStore(redis_server.client())
    finished = wait_finished(jobs, ids, timeout=180)
    assert all(j.state == "published" for j in finished), [(j.image, j.error) for j in finished]
    for i, ref in enumerate(refs):
        assert (root / layout.tag_link(ref) / "which").read_bytes() == str(i).encode()
    distinct = {j.coalesced_into or j.id: j for j in finished}
    unpacked = sum(j.result.get("layers_unpacked", 0) for j in distinct.values())
    assert unpacked == 1 + len(refs)  # the shared base once, each top layer once
    assert [p for p in (root / layout.STAGING).iterdir() if p.is_dir()] == []


def test_a_temporary_registry_failure_is_retried_and_the_reason_recorded(client, unique_ref, redis_server, service, root, registry):
    proxy = FaultProxy(registry.host)
    try:
        ref = Reference(proxy.host, unique_ref().repository, "v1")
        push_image(client, ref, ImageSpec(layers=[Layer([File("x", b"x")])]))
        proxy.add("status", "/manifests/", method=None, times=3, status=503)
        service(DUCC_RETRY_ATTEMPTS="1")
        queue = queue_for(redis_server, root)
        job_id = queue.submit(ConversionRequest(ref), "test").job_id
        (job,) = wait_finished(JobStore(redis_server.client()), [job_id], timeout=120)
        assert job.state == "published"
        retries = [e for e in job.events if e["state"] == "retrying"]
        assert retries and "503" in retries[0]["detail"]
        assert job.attempts >= 2
    finally:
        proxy.stop()


def test_a_permanent_failure_is_not_retried_and_says_why(unique_ref, redis_server, service, root, tmp_path):
    service()
    ref = unique_ref("never-pushed")
    queue = queue_for(redis_server, root)
    job_id = queue.submit(ConversionRequest(ref), "test").job_id
    (job,) = wait_finished(JobStore(redis_server.client()), [job_id])
    assert job.state == "failed" and "not found" in job.error and not job.temporary and job.attempts == 1
    env = service_env(root, redis_server.url, tmp_path / "state")
    assert ducc_cli("status", job_id, env=env).returncode == 1


def test_an_accepted_request_is_never_answered_when_the_queue_is_down(tmp_path, root):
    server = start_redis(tmp_path / "redis-down")
    queue = queue_for(server, root)
    server.stop()
    with pytest.raises(QueueUnavailable):
        queue.submit(ConversionRequest(Reference.parse("127.0.0.1:1/a/b:1")), "test")


def test_sync_task_queues_exactly_the_image_whose_tag_moved(client, unique_ref, redis_server, service, root, tmp_path):
    refs = [unique_ref(f"s{i}") for i in range(3)]
    for ref in refs:
        push_image(client, ref, ImageSpec(layers=[BASE, Layer([File("v", b"1")])]))
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text("version: 1\ninput:\n" + "".join(f"  - '{r}'\n" for r in refs))
    service(DUCC_WISHLIST=str(wishlist))
    from ducc.wiring import Services

    app = Services(settings_for(redis_server, root)).celery()

    assert {j.image for j in sync_and_wait(app, redis_server)} == {str(r) for r in refs}
    assert sync_and_wait(app, redis_server) == []
    push_image(client, refs[1], ImageSpec(layers=[BASE, Layer([File("v", b"2")])]))
    moved = sync_and_wait(app, redis_server)
    assert [j.image for j in moved] == [str(refs[1])]
    assert (root / layout.tag_link(refs[1]) / "v").read_bytes() == b"2"


def test_sigkill_of_the_whole_service_mid_conversion_loses_nothing(client, unique_ref, registry, root, tmp_path):
    """``ducc serve`` (embedded Redis, worker, beat) is killed with SIGKILL while a large image downloads;
    after a restart the accepted request ends published, and no partial image is ever visible."""
    proxy = FaultProxy(registry.host)
    state = tmp_path / "state"
    env = service_env(root, None, state, DUCC_JOB_LEASE="4")
    serve = DuccProcess(["serve", "--no-web"], env, tmp_path / "serve.log")
    try:
        ref = Reference(proxy.host, unique_ref().repository, "big")
        files = [File(f"many/f{i:05d}", os.urandom(1500)) for i in range(3000)]
        built = push_image(client, ref, ImageSpec(layers=[BASE, Layer([Dir("many"), *files], compression="none")]))
        proxy.add("slow", f"/blobs/{built.layer_digests[1]}", times=1, keep_bytes=200_000)
        serve.start()
        serve.wait_for_log("ready.")
        url = f"unix://{state / 'redis' / 'redis.sock'}"
        submitted = ducc_cli("submit", str(ref), env={**env, "DUCC_REDIS_URL": url})
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().splitlines()[-1]

        partial: list[str] = []
        watching = threading.Event()

        def watch() -> None:  # a user looking at the public path the whole time
            link = root / layout.tag_link(ref)
            while not watching.is_set():
                if link.exists():
                    count = len(list((link / "many").iterdir())) if (link / "many").is_dir() else 0
                    if count != 3000:
                        partial.append(f"{count} files visible")
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        deadline = time.monotonic() + 60
        while "fetching" not in ducc_cli("status", job_id, env={**env, "DUCC_REDIS_URL": url}).stdout:
            assert time.monotonic() < deadline, serve.log()[-2000:]
            time.sleep(0.1)
        serve.kill_group(9)
        assert not (root / layout.tag_link(ref)).exists()
        serve.start()  # same state directory: the embedded Redis reloads its append-only file
        done = ducc_cli("status", job_id, "--wait", "120", env={**env, "DUCC_REDIS_URL": url})
        watching.set()
        watcher.join()
        assert done.returncode == 0, done.stdout + serve.log()[-3000:]
        assert "requeued" in done.stdout
        assert partial == []
        found = ducc_cli("jobs", env=env)  # no DUCC_REDIS_URL: the CLI finds the embedded Redis of ducc serve
        assert found.returncode == 0 and job_id in found.stdout, found.stderr
        assert len(list((root / layout.tag_link(ref) / "many").iterdir())) == 3000
    finally:
        serve.stop()
        proxy.stop()


def test_reconciliation_finds_an_interrupted_job_behind_a_thousand_newer_ones(redis_server, root):
    from ducc.service.keys import INCOMING
    from ducc.service.tasks import run_reconcile
    from ducc.wiring import Services

    rt = Services(settings_for(redis_server, root), shared_locks=True)
    interrupted = rt.queue.submit(ConversionRequest(Reference.parse("127.0.0.1:1/lost/image:1")), "test").job_id
    client = redis_server.client()
    client.lrem(INCOMING, 1, interrupted)  # a worker took it ...
    rt.jobs.event(interrupted, "fetching", "")  # ... started, and died without renewing its lease
    for i in range(1100):
        rt.queue.submit(ConversionRequest(Reference.parse(f"127.0.0.1:1/other/image:{i}")), "test")
    assert run_reconcile(rt) == 1
    assert interrupted in client.lrange(INCOMING, 0, -1)
    job = rt.jobs.get(interrupted)
    assert job.state == "queued" and "requeued" in job.events[-1]["detail"]


def test_a_running_job_that_fails_looks_again_for_a_request_that_arrived_meanwhile(
    client, unique_ref, redis_server, service, root, registry
):
    """The first push is broken (a hostile layer), the fix is pushed while it converts: the request for the
    fix joins the running job, which does not fail but checks the tag again and publishes the fix."""
    from tests.support.images import Raw

    proxy = FaultProxy(registry.host)
    try:
        ref = Reference(proxy.host, unique_ref().repository, "v1")
        base = Layer([File("big", os.urandom(150_000))])
        # The hostile entry comes after a second of download: a refused layer stops its siblings at once,
        # so the first job is still running only while the bad layer itself streams.
        hostile = Layer([File("pad", os.urandom(150_000)), Raw("../escape", content=b"x")])
        broken = push_image(client, ref, ImageSpec(layers=[base, hostile]))
        proxy.add("slow", f"/blobs/{broken.layer_digests[1]}", times=1, keep_bytes=15_000)
        service()
        queue = queue_for(redis_server, root)
        jobs = JobStore(redis_server.client())
        first = queue.submit(ConversionRequest(ref), "test").job_id
        wait_state(jobs, first, ("fetching",))
        push_image(client, ref, ImageSpec(layers=[base, Layer([File("app", b"fixed")])]))
        later = queue.submit(ConversionRequest(ref), "test")
        assert later.into == first
        done = wait_finished(jobs, [first, later.job_id])
        assert [j.state for j in done] == ["published", "published"], [j.error for j in done]
        assert (root / layout.tag_link(ref) / "app").read_bytes() == b"fixed"
        assert any("escape" in e["detail"] and "checking the tag again" in e["detail"] for e in done[0].events)
    finally:
        proxy.stop()


def test_a_worker_keeps_its_blob_cache_within_the_budget(client, unique_ref, redis_server, service, root, tmp_path):
    """Every process that fills the blob cache prunes it (the CLI used to be the only one that did)."""
    cache = tmp_path / "cache"
    budget = 500_000
    service(DUCC_CACHE_DIR=str(cache), DUCC_CACHE_MAX_BYTES=str(budget))
    queue = queue_for(redis_server, root)
    jobs = JobStore(redis_server.client())
    ids = []
    for i in range(3):
        ref = unique_ref(f"c{i}")
        push_image(client, ref, ImageSpec(layers=[Layer([File("blob", os.urandom(300_000))])]))
        ids.append(queue.submit(ConversionRequest(ref), "test").job_id)
    done = wait_finished(jobs, ids)
    assert [j.state for j in done] == ["published"] * 3, [j.error for j in done]
    cached = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    assert 0 < cached <= budget  # three blobs of 300 kB went through a 500 kB cache


@pytest.fixture
def second_mount(tmp_path, root):
    """``root`` bind-mounted at another path, as one NFS export is mounted on two worker hosts."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root; this machine runs the tests unprivileged")
    other = tmp_path / "other-host-mount"
    other.mkdir()
    done = subprocess.run(["mount", "--bind", str(root), str(other)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    yield other
    subprocess.run(["umount", "-l", str(other)], check=True)


def test_two_roots_naming_one_directory_are_serialised_by_one_repository_lease(redis_server, root, second_mount):
    from ducc.service import keys
    from ducc.wiring import Services

    settings = settings_for(redis_server, root)
    here = Services(settings, root=root, shared_locks=True).publisher
    there = Services(settings, root=second_mount, shared_locks=True).publisher
    assert here.location != there.location
    entered = threading.Event()

    def write_from_the_other_host() -> None:
        with there.transaction():
            entered.set()

    with here.transaction():
        name = (root / layout.REPOSITORY_NAME).read_text().strip()
        assert name and there.name == here.name == name  # stored in the root on first use, seen from both paths
        lock = keys.lock(keys.publish_lease(name))
        assert redis_server.client().exists(lock)
        # Redis's MONITOR shows the other host asking for this very lease and being refused (SET NX), twice.
        with redis.Redis.from_url(redis_server.url, password=redis_server.password, socket_timeout=30).monitor() as monitor:
            other = threading.Thread(target=write_from_the_other_host)
            other.start()
            asked, deadline = 0, time.monotonic() + 30
            while asked < 2:
                assert time.monotonic() < deadline, "the other host never asked Redis for the repository's lease"
                command = monitor.next_command()["command"]
                asked += command.startswith("SET ") and lock in command and "NX" in command.upper()
                assert not entered.is_set(), command
    other.join(30)
    assert entered.is_set()


def test_a_repository_named_in_the_settings_keeps_that_name(redis_server, root):
    from ducc.wiring import Services

    settings = Settings.from_env({"DUCC_REDIS_URL": redis_server.url, "DUCC_ROOT": str(root), "DUCC_REPOSITORY": "unpacked.example.org"})
    publisher = Services(settings, shared_locks=True).publisher
    with publisher.transaction():
        pass
    assert publisher.name == "unpacked.example.org" and not (root / layout.REPOSITORY_NAME).exists()


def test_a_redis_password_from_a_file_serves_every_process_and_no_output_shows_it(client, unique_ref, service, root, tmp_path):
    """Worker, submit, status and jobs all authenticate with ``DUCC_REDIS_PASSWORD_FILE``; the password is
    in no process's arguments or environment and in no output, Celery's banner included."""
    password = "Svc0Redis0Password0xyz"
    server = start_redis(tmp_path / "redis-pw", password=password)
    try:
        secret = tmp_path / "redis-password"
        secret.write_text(password + "\n")
        ref = unique_ref()
        push_image(client, ref, ImageSpec(layers=[Layer([File("app", b"with a password")])]))
        env = service_env(root, server.url, tmp_path / "state", DUCC_REDIS_PASSWORD_FILE=str(secret))
        worker = DuccProcess(["worker", "--name", "pw@%h"], env, tmp_path / "pw-worker.log").start()
        try:
            worker.wait_for_log("ready.")
            assert password.encode() not in Path(f"/proc/{worker.process.pid}/cmdline").read_bytes()
            assert password.encode() not in Path(f"/proc/{worker.process.pid}/environ").read_bytes()
            submitted = ducc_cli("submit", str(ref), env=env)
            assert submitted.returncode == 0, submitted.stderr
            status = ducc_cli("status", str(ref), "--wait", "120", env=env)
            assert status.returncode == 0 and "PUBLISHED" in status.stdout, status.stdout + status.stderr
            listed = ducc_cli("jobs", env=env)
            assert listed.returncode == 0 and str(ref) in listed.stdout
            outputs = [submitted.stdout, submitted.stderr, status.stdout, status.stderr, listed.stdout, listed.stderr,
                       worker.log()]
            assert server.url.split("//")[1] in worker.log()  # the banner names the broker, without the password
            assert not any(password in output for output in outputs)
        finally:
            worker.stop()
    finally:
        server.stop()


def test_a_full_disk_fails_the_job_for_now_publishes_nothing_and_the_retry_converts_once_there_is_room(
    client, unique_ref, redis_server, small_disk, tmp_path
):
    """Through the CLI and a real worker: the full disk is named, nothing is visible, staging is empty after
    every run, and the job (StorageFull is temporary) is retried later: once the disk has room it publishes."""
    ref = unique_ref()
    big = os.urandom(8 << 20)  # incompressible: 8 MiB for a 2 MiB disk
    push_image(client, ref, ImageSpec(layers=[Layer([Dir("data"), File("data/big", big)])]))
    root = small_disk / "repo"
    staging = root / layout.STAGING

    def staged() -> list[Path]:
        return [p for p in staging.iterdir() if p.is_dir()] if staging.exists() else []

    cli = ducc_cli("-q", "convert", str(ref), env={**os.environ, "DUCC_ROOT": str(root), "DUCC_CACHE_DIR": "off"})
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    (line,) = cli.stderr.splitlines()
    assert line.startswith(f"ducc: {ref}: layer sha256:") and "No space left on device (local storage full)" in line
    assert not (root / layout.tag_link(ref)).exists() and staged() == []

    env = service_env(root, redis_server.url, tmp_path / "state", DUCC_JOB_RETRY_BASE="3", DUCC_RETRY_ATTEMPTS="1")
    worker = DuccProcess(["worker", "--name", "disk@%h"], env, tmp_path / "disk-worker.log").start()
    try:
        worker.wait_for_log("ready.")
        job_id = queue_for(redis_server, root).submit(ConversionRequest(ref), "test").job_id
        jobs = JobStore(redis_server.client())
        wait_state(jobs, job_id, ("retrying",), timeout=120)
        job = jobs.get(job_id)
        assert job.temporary and "No space left on device (local storage full)" in job.error and "data/big" in job.error
        assert not (root / layout.tag_link(ref)).exists() and not (root / layout.metadata_dir(ref)).exists()
        assert staged() == []
        grown = subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], capture_output=True, text=True)
        assert grown.returncode == 0, grown.stderr
        (job,) = wait_finished(jobs, [job_id], timeout=180)
        assert job.state == "published" and job.attempts >= 2, (job.state, job.error)
        assert [e["state"] for e in job.events].count("retrying") >= 1
        assert (root / layout.tag_link(ref) / "data" / "big").read_bytes() == big
        assert staged() == []
        assert "Traceback" not in worker.log()
    finally:
        worker.stop()
