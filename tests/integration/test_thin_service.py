"""The thin image as a stage of a service job: a real redis-server, ``ducc worker`` processes (Celery,
never eager), real registries and the fault proxy; skopeo checks what was pushed."""

from __future__ import annotations

import json
import subprocess
import time

from ducc import layout
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest
from ducc.service.jobs import JobStore
from tests.integration.test_service import queue_for, service, settings_for, sync_and_wait, wait_finished  # noqa: F401
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.proxy import via

REPO = "unpacked.example.org"
SOURCE = ImageSpec(layers=[Layer([File("etc/os-release", b"ID=thin-service\n")]), Layer([File("app", b"v1")])],
                   env=["PATH=/usr/bin:/bin", "MODE=service"], cmd=["/app"])


def skopeo_inspect(ref: Reference, *extra: str) -> dict:
    done = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *extra, f"docker://{ref}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def details(job) -> list[str]:
    return [e["detail"] for e in job.events]


def test_a_wishlist_sync_with_output_format_pushes_each_thin_image_as_a_job_stage(
    client, unique_ref, registry, redis_server, service, root, tmp_path  # noqa: F811
):
    source = unique_ref("1.0")
    push_image(client, source, SOURCE)
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"version: 1\noutput_format: '$(scheme)://{registry.host}/thin/$(image)'\n"
                        f"input:\n  - 'http://{source}'\n")
    service(DUCC_WISHLIST=str(wishlist), DUCC_THIN_CVMFS_REPO=REPO, DOCKER_CONFIG=str(tmp_path))
    from ducc.wiring import Services

    Services(settings_for(redis_server, root)).celery().send_task("ducc.sync")
    jobs = JobStore(redis_server.client())
    deadline = time.monotonic() + 120
    while not (found := jobs.for_image(str(source))) or not found[0].finished:
        assert time.monotonic() < deadline, "the sync queued no job, or it never finished"
        time.sleep(0.2)
    job = found[0]
    assert job.state == "published", job.error
    target = Reference(registry.host, f"thin/{source.repository}", "1.0")
    seen = skopeo_inspect(target)
    pushed = f"thin image pushed: {target}@{seen['Digest']}"
    assert pushed in details(job)
    states = [e["state"] for e in job.events]
    assert states.index("publishing") < states.index("thin") < states.index("published")
    assert seen["Env"] == ["CVMFS_IMAGE=true", "PATH=/usr/bin:/bin", "MODE=service"]
    assert job.result["thin_digest"] == seen["Digest"]
    record = json.loads((root / layout.metadata_dir(source) / layout.RECORD_DETAILS).read_bytes())
    assert record["thin_reference"] == str(target) and record["thin_digest"] == seen["Digest"]


def test_a_registry_outage_on_the_push_is_retried_without_converting_again(
    client, unique_ref, registry, proxy, redis_server, service, root, tmp_path  # noqa: F811
):
    source = unique_ref()
    push_image(client, source, SOURCE)
    target = via(proxy, Reference(registry.host, source.repository + "_thin", "v1"))
    proxy.add("status", "/blobs/uploads/", method="PUT", status=503, times=2)
    service(DUCC_THIN_CVMFS_REPO=REPO, DOCKER_CONFIG=str(tmp_path), DUCC_RETRY_ATTEMPTS="1")
    job_id = queue_for(redis_server, root).submit(ConversionRequest(source, thin=target), "test").job_id
    (job,) = wait_finished(JobStore(redis_server.client()), [job_id], timeout=180)
    assert job.state == "published", job.error
    retries = [e["detail"] for e in job.events if e["state"] == "retrying"]
    assert retries and all(r.startswith("published, thin image not pushed: ") and "503" in r for r in retries)
    states = [e["state"] for e in job.events]
    assert states.count("publishing") == 1 and states.count("flattening") == 1  # the flat was never redone
    direct = Reference(registry.host, target.repository, target.tag)
    digest = skopeo_inspect(direct)["Digest"]
    assert f"thin image pushed: {target}@{digest}" in details(job)


def test_a_webhook_for_a_wishlist_image_pushes_the_thin_image_the_wishlist_names(
    client, unique_ref, registry, redis_server, service, root, tmp_path  # noqa: F811
):
    """A registry notification (the real web app, its real Redis) for an image the wishlist names queues the
    conversion the nightly sync would: with the thin image of the wishlist's output_format."""
    from ducc.web import create_app
    from tests.integration.test_webhooks import EVENTS_V1, TOKEN, manifest_push

    source = unique_ref("2.0")
    push_image(client, source, SOURCE)
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"version: 1\noutput_format: '$(scheme)://{registry.host}/thin/$(image)'\n"
                        f"input:\n  - 'http://{source.registry}/{source.repository}:2.*'\n")
    service(DUCC_WISHLIST=str(wishlist), DUCC_THIN_CVMFS_REPO=REPO, DOCKER_CONFIG=str(tmp_path))
    from ducc.settings import Settings

    env = {**settings_for(redis_server, root).env, "DUCC_WISHLIST": str(wishlist), "DUCC_WEBHOOK_TOKEN": TOKEN}
    web = create_app(Settings.from_env(env)).test_client()
    answer = web.post("/webhooks/registry", data=json.dumps(manifest_push(source.repository, "2.0", source.registry)),
                      headers={"Authorization": f"Bearer {TOKEN}"}, content_type=EVENTS_V1)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    (accepted,) = answer.get_json()["accepted"]
    (job,) = wait_finished(JobStore(redis_server.client()), [accepted["job"]])
    assert job.state == "published", job.error
    target = Reference(registry.host, f"thin/{source.repository}", "2.0")
    assert job.request.thin == target
    assert f"thin image pushed: {target}@{skopeo_inspect(target)['Digest']}" in details(job)


def test_a_second_sync_finds_the_thin_image_current_and_pushes_nothing(
    client, unique_ref, registry, proxy, redis_server, service, root, tmp_path  # noqa: F811
):
    """After a sync pushed the thin image, the next sync queues nothing for the image: the tag and its thin
    image are current (the proxy sees no upload and no manifest PUT), and the thin digest stays the same."""
    source = unique_ref("1.0")
    push_image(client, source, SOURCE)
    thin_host = via(proxy, Reference(registry.host, "thin/x", "1")).registry
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"version: 1\noutput_format: '$(scheme)://{thin_host}/thin/$(image)'\n"
                        f"input:\n  - 'http://{source}'\n")
    service(DUCC_WISHLIST=str(wishlist), DUCC_THIN_CVMFS_REPO=REPO, DOCKER_CONFIG=str(tmp_path))
    from ducc.wiring import Services

    celery = Services(settings_for(redis_server, root)).celery()
    jobs = JobStore(redis_server.client())

    (first,) = sync_and_wait(celery, redis_server)
    assert first.image == str(source) and first.state == "published", first.error
    digest = first.result["thin_digest"]
    def writes() -> list:
        return [r for r in proxy.requests() if r.method in ("POST", "PUT", "PATCH")]

    assert writes(), "the first sync pushed nothing through the proxy"
    pushed = len(writes())
    sync_jobs_before = len(jobs.recent_jobs(1000))
    assert sync_and_wait(celery, redis_server) == []  # the sync checks the tag (a HEAD) and queues nothing
    assert len(jobs.for_image(str(source))) == 1 and len(jobs.recent_jobs(1000)) == sync_jobs_before
    assert len(writes()) == pushed
    target = Reference(registry.host, f"thin/{source.repository}", "1.0")
    assert skopeo_inspect(target)["Digest"] == digest


def test_ducc_submit_with_thin_queues_a_job_that_pushes_the_thin_image(
    client, unique_ref, registry, redis_server, service, root, tmp_path  # noqa: F811
):
    from tests.support.service import ducc_cli, service_env

    source = unique_ref("3.1")
    push_image(client, source, SOURCE)
    service(DUCC_THIN_CVMFS_REPO=REPO, DOCKER_CONFIG=str(tmp_path))
    env = service_env(root, redis_server.url, tmp_path / "state", DOCKER_CONFIG=str(tmp_path))
    done = ducc_cli("submit", str(source), "--thin", f"http://{registry.host}/thin/$(image)", env=env)
    assert done.returncode == 0, done.stderr
    (job,) = wait_finished(JobStore(redis_server.client()), [done.stdout.strip()])
    assert job.state == "published", job.error
    target = Reference(registry.host, f"thin/{source.repository}", "3.1")
    assert f"thin image pushed: {target}@{skopeo_inspect(target)['Digest']}" in details(job)
