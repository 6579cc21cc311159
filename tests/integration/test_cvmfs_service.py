"""ducc's commands and service publishing into a CVMFS repository: real ``ducc`` processes, a real Redis,
real Celery workers, a real HTTP server standing for the stratum 1s, and ``cvmfs_server`` played by
the real CernVM-FS 2.12 server (a repository of its own per test, through the recorder of
tests/support/cvmfs.py). Its ``/srv/cvmfs/<repo>/.cvmfspublished`` is the manifest the stratum 0's web
server serves.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ducc import layout
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest
from ducc.service.jobs import PROPAGATION, JobStore
from ducc.settings import Settings
from tests.support.images import Dir, File, ImageSpec, Layer, push_image
from tests.support.processes import bytes_written, process_group, wait_until
from tests.support.service import DuccProcess, ducc_cli

APP = Layer([Dir("etc"), File("etc/os-release", b"ID=cvmfs-service\n"), Dir("usr"), File("usr/app", b"v1", 0o755)])


ducc = functools.partial(ducc_cli, timeout=600)  # a conversion on the real server takes longer


class Stratum1:
    """A real HTTP server in a thread serving ``/cvmfs/<repo>/.cvmfspublished`` from ``manifest``, as a
    stratum 1 (or the stratum 0's web server) does."""

    def __init__(self, directory: Path, repository: str, manifest: Path) -> None:
        served = directory / "cvmfs" / repository
        served.mkdir(parents=True)
        self.published = served / ".cvmfspublished"
        self.published.symlink_to(manifest)
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def replicate(self, manifest: Path) -> None:
        """Serve a copy of ``manifest`` from now on (a stratum 1 that replicated that revision)."""
        self.published.unlink()
        shutil.copy(manifest, self.published)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def workers(tmp_path, redis_server, cvmfs):
    """Start ``ducc worker --cvmfs-repo <repo>`` processes on demand; stops them all at the end."""
    started: list[DuccProcess] = []

    def start(name: str = "w1", **extra: str) -> DuccProcess:
        env = cvmfs.ducc_env(tmp_path / "state", DUCC_REDIS_URL=redis_server.url, DUCC_JOB_RETRY_BASE="1",
                             DUCC_LOG_LEVEL="INFO", **extra)
        proc = DuccProcess(["worker", "--cvmfs-repo", cvmfs.repository, "--name", f"{name}@%h", "--concurrency", "2"],
                           env, tmp_path / f"{name}.log").start()
        started.append(proc)
        proc.wait_for_log("ready.")
        return proc

    yield start
    for proc in started:
        proc.stop()


def submit(redis_server, tmp_path, cvmfs, ref: Reference) -> tuple[str, JobStore, Settings]:
    from ducc.wiring import Services

    settings = Settings.from_env(cvmfs.ducc_env(tmp_path / "state", DUCC_REDIS_URL=redis_server.url,
                                                DUCC_CVMFS_REPO=cvmfs.repository))
    services = Services(settings)
    return services.queue.submit(ConversionRequest(ref), "api").job_id, services.jobs, settings


def test_a_worker_job_records_the_revision_and_when_each_stratum_1_serves_it(
        client, unique_ref, redis_server, cvmfs, workers, tmp_path):
    """On the real server, its manifest served over HTTP by three stratum 1s: one that follows the
    stratum 0, one that catches up while the worker polls, one that never does. The job's timeline,
    ``ducc status``, the API and the status page all say where the revision is visible, and when."""
    manifest = cvmfs.manifest
    stale = tmp_path / "stale.cvmfspublished"
    shutil.copy(manifest, stale)
    live = Stratum1(tmp_path / "s1-live", cvmfs.repository, manifest)
    late = Stratum1(tmp_path / "s1-late", cvmfs.repository, stale)
    never = Stratum1(tmp_path / "s1-never", cvmfs.repository, stale)
    try:
        workers(DUCC_STRATUM1_URLS=f"http://{live.host},http://{late.host}/cvmfs/{cvmfs.repository},http://{never.host}",
                DUCC_STRATUM1_TIMEOUT="12")
        ref = unique_ref()
        push_image(client, ref, ImageSpec(layers=[APP]))
        job_id, jobs, settings = submit(redis_server, tmp_path, cvmfs, ref)

        def events(kind: str | None = None) -> list[str]:
            job = jobs.get(job_id)
            return [e["detail"] for e in job.events if kind is None or e.get("kind") == kind] if job else []

        wait_until(lambda: any(d.startswith(f"visible on {live.host} at ") for d in events(PROPAGATION)),
                   "the live stratum 1 never showed up in the timeline")
        late.replicate(manifest)
        wait_until(lambda: any(d.startswith(f"not visible on {never.host}") for d in events(PROPAGATION)),
                   "the stale stratum 1 was never given up on", timeout=60)
        job = jobs.get(job_id)
        assert job.state == "published", job.events
        revision = job.result["revision"]
        assert revision == cvmfs.revision()
        assert any(f"in revision {revision} of {cvmfs.repository}" in d for d in events())
        seen = events(PROPAGATION)
        for stratum in (live, late):
            [line] = [d for d in seen if d.startswith(f"visible on {stratum.host} at ")]
            assert re.search(r" at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 \(revision (\d+)\)$", line), line
            assert int(line.rsplit("revision ", 1)[1].rstrip(")")) >= revision
        assert [d for d in seen if never.host in d] == [f"not visible on {never.host} within 12s (revision {revision})"]

        status = ducc("status", str(ref), "--cvmfs-repo", cvmfs.repository,
                      env=cvmfs.ducc_env(tmp_path / "state", DUCC_REDIS_URL=redis_server.url), cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert f"visible on {live.host} at " in status.stdout and f"visible on {late.host} at " in status.stdout
        assert f"in revision {revision}" in status.stdout

        from ducc.web import create_app

        web = create_app(settings).test_client()
        timeline = web.get(f"/api/v1/conversions/{job_id}").json["timeline"]
        assert [e["detail"] for e in timeline if e.get("kind") == PROPAGATION] == seen
        page = web.get("/").get_data(as_text=True)
        assert f"revision {revision}" in page
        assert f"visible on {live.host} at " in page and f"not visible on {never.host}" in page
    finally:
        for server in (live, late, never):
            server.stop()


def test_a_failed_cvmfs_server_call_fails_the_job_with_the_commands_own_words(
        client, unique_ref, redis_server, cvmfs, workers, tmp_path):
    """On the real server, its publish failing with its own words, as many lines as the real script
    prints: the job fails at once (not a temporary error), its error is one line carrying the reason,
    the timeline keeps the whole output and the command line, and no transaction is left open."""
    workers()
    cvmfs.fail("publish", 1, message=SCRIPT_NOISE + "the backend storage is full\nSynchronization failed\n\n"
               "Executed Command:\ncvmfs_swissknife sync -u /cvmfs/x -s /var/spool/cvmfs/x/scratch/current")
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[APP]))
    job_id, jobs, _ = submit(redis_server, tmp_path, cvmfs, ref)
    job = wait_until(lambda: (j := jobs.get(job_id)) is not None and j.finished and j, "the job never finished")
    assert job.state == "failed"
    assert "the backend storage is full" in job.error and "cvmfs_server publish" in job.error
    assert "\n" not in job.error and "swissknife" not in job.error and "[[" not in job.error
    assert any("Executed Command:\ncvmfs_swissknife sync" in e["detail"] and "recorder publish" in e["detail"]
               for e in job.events), job.events
    assert not job.temporary and job.attempts == 1
    assert not cvmfs.in_transaction()
    assert not os.path.lexists(cvmfs.client / layout.tag_link(ref))


# What the real script prints on stderr before its reason (a bash-ism it runs with dash).
SCRIPT_NOISE = "/usr/bin/cvmfs_server: 9263: eval: [[: not found\n"


# -- the commands' ways of naming the repository ------------------------------------------------


def test_convert_takes_the_repository_from_the_option_or_the_environment(client, unique_ref, cvmfs, tmp_path):
    """On the real server: ``--cvmfs-repo`` or ``DUCC_CVMFS_REPO``, with ``DUCC_CVMFS_SERVER`` naming the
    command and ``DUCC_CVMFS_MOUNT`` the mount (the recorder is not on PATH: every call goes through it
    because DUCC_CVMFS_SERVER names it)."""
    env = cvmfs.ducc_env(tmp_path / "state")
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if Path(p) not in (cvmfs.binary.parent, cvmfs.state / "bin"))
    first, second = unique_ref("option"), unique_ref("environment")
    for ref in (first, second):
        push_image(client, ref, ImageSpec(layers=[APP]))
    done = ducc("convert", str(first), "--cvmfs-repo", cvmfs.repository, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\t")[1].strip() == str(cvmfs.mount / layout.tag_link(first))
    done = ducc("convert", str(second), env={**env, "DUCC_CVMFS_REPO": cvmfs.repository}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for ref in (first, second):
        assert (cvmfs.client / layout.tag_link(ref) / "usr" / "app").read_bytes() == b"v1"
    missing = ducc("convert", str(first), "--force", "--cvmfs-repo", cvmfs.repository,
                   env={**env, "DUCC_CVMFS_SERVER": str(tmp_path / "no-such-command")}, cwd=tmp_path)
    assert missing.returncode == 1 and "no-such-command" in missing.stderr
    cvmfs.fail("ingest", len(cvmfs.calls("ingest")) + 1, message=SCRIPT_NOISE + "cvmfs_swissknife: "
               "/src/cvmfs/catalog_rw.cc:171: void catalog::WritableCatalog::AddEntry(const DirectoryEntry&): "
               "Assertion `retval' failed.\nAborted\nSynchronization failed\n\nExecuted Command:\n"
               "cvmfs_swissknife ingest -u /cvmfs/x -T - -B .layers -C true")
    third = unique_ref("crash")
    push_image(client, third, ImageSpec(layers=[Layer([File("usr/crash", b"c")])]))
    crashed = ducc("convert", str(third), "--cvmfs-repo", cvmfs.repository, env=env, cwd=tmp_path)
    assert crashed.returncode == 1
    assert crashed.stderr.endswith("cvmfs_server ingest failed (exit 1): cvmfs_swissknife: catalog_rw.cc:171: "
                                   "Assertion `retval' failed.\n"), crashed.stderr
    assert "Executed Command" not in crashed.stderr and "eval:" not in crashed.stderr
    assert crashed.stderr.count("Assertion") == 1  # the one line, nothing else of the command's output
    assert cvmfs.calls("ingest"), "DUCC_CVMFS_SERVER was not the command ducc ran"


def test_sync_publishes_into_the_wishlists_cvmfs_repo_when_none_is_given(client, unique_ref, cvmfs, tmp_path):
    """On the real server: the wishlist's ``cvmfs_repo`` (DUCC's field) is used when neither
    ``--cvmfs-repo`` nor ``DUCC_CVMFS_REPO`` is given; ``--cvmfs-repo`` is taken as well."""
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[APP]))
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"version: 1\nuser: tester\ncvmfs_repo: {cvmfs.repository}\ninput:\n  - '{ref}'\n")
    env = cvmfs.ducc_env(tmp_path / "state", XDG_DATA_HOME=str(tmp_path / "data"))
    done = ducc("sync", str(wishlist), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 published" in done.stdout
    assert (cvmfs.client / layout.tag_link(ref) / "usr" / "app").read_bytes() == b"v1"
    assert not (tmp_path / "data").exists()  # nothing went to the default directory root
    again = ducc("sync", str(wishlist), "--cvmfs-repo", cvmfs.repository, env=env, cwd=tmp_path)
    assert again.returncode == 0 and "1 unchanged" in again.stdout, again.stderr


def test_serve_with_cvmfs_repo_publishes_submitted_images_there(client, unique_ref, cvmfs, tmp_path):
    """On the real server: ``ducc serve --cvmfs-repo`` (embedded Redis, a worker, beat) publishes a
    submitted image into the repository, and ``ducc status`` names the revision."""
    state = tmp_path / "state"
    env = cvmfs.ducc_env(state, DUCC_LOG_LEVEL="INFO")
    serve = DuccProcess(["serve", "--cvmfs-repo", cvmfs.repository, "--no-web"], env, tmp_path / "serve.log")
    try:
        serve.start()
        serve.wait_for_log("ready.")
        ref = unique_ref()
        push_image(client, ref, ImageSpec(layers=[APP]))
        submitted = ducc("submit", str(ref), env=env, cwd=tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        status = ducc("status", str(ref), "--wait", "120", "--cvmfs-repo", cvmfs.repository, env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stdout + serve.log()[-3000:]
        assert f"in revision {cvmfs.revision()} of {cvmfs.repository}" in status.stdout
        assert (cvmfs.client / layout.tag_link(ref) / "usr" / "app").read_bytes() == b"v1"
    finally:
        serve.stop()


def test_a_worker_killed_mid_ingest_publishes_nothing_and_the_requeued_job_completes(
        client, unique_ref, redis_server, cvmfs, workers, tmp_path):
    """On the real server: the whole worker (Celery main process and pool) is SIGKILLed while a layer
    streams into ingest. The guard, in a session of its own, poisons the stream: nothing is published
    and no transaction stays open. A new worker requeues the job once its lease lapses, and publishes
    the whole image."""
    files = 10_000  # empty files, one tar block each: the stream can only be cut between two entries
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([Dir("many")] + [File(f"many/f{i:05}") for i in range(files)])]))
    first = workers("w1", DUCC_JOB_LEASE="4")
    job_id, jobs, _ = submit(redis_server, tmp_path, cvmfs, ref)
    wait_until(lambda: [c for c in cvmfs.calls("ingest") if c.rc is None], "no ingest started", interval=0.05)
    assert first.process is not None
    start = bytes_written(process_group(first.process.pid))  # inside the stream: 1 MiB of its 5 MiB of tar headers
    wait_until(lambda: bytes_written(process_group(first.process.pid)) - start > 1 << 20,
               "the worker never streamed into the ingest", interval=0.01)
    first.kill_group()
    ended = wait_until(lambda: [c for c in cvmfs.calls("ingest") if c.rc is not None], "the ingest never ended")
    published = list((cvmfs.client / layout.LAYERS).glob("*/*/layerfs/many/*"))
    assert len(published) in (0, files), f"a partial layer was published: {len(published)} of {files} files"
    assert ended[0].rc != 0 and not published, "the ingest finished: the worker was killed too late to test anything"
    assert not cvmfs.in_transaction()

    wait_until(lambda: not jobs.lease_alive(job_id), "the killed worker's job lease never lapsed", timeout=60)
    workers("w2", DUCC_JOB_LEASE="4")
    job = wait_until(lambda: (j := jobs.get(job_id)) is not None and j.finished and j, "the job never finished")
    assert job.state == "published", job.events
    assert any("requeued" in e["detail"] for e in job.events)
    [layer] = list((cvmfs.client / layout.LAYERS).glob("*/*/layerfs"))
    assert len(list((layer / "many").iterdir())) == files
    assert len(list((cvmfs.client / layout.tag_link(ref) / "many").iterdir())) == files
    assert not cvmfs.in_transaction()
