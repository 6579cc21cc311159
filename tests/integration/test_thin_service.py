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
from tests.integration.test_service import queue_for, service, settings_for, wait_finished  # noqa: F401
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
    service(DUCC_WISHLIST=str(wishlist), DUCC_REPOSITORY=REPO, DOCKER_CONFIG=str(tmp_path))
    from ducc.services import Services

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


def test_a_wrong_password_fails_the_job_as_published_without_its_thin_image(
    client, unique_ref, auth_registry, redis_server, service, root, tmp_path  # noqa: F811
):
    source = unique_ref()
    push_image(client, source, SOURCE)
    target = Reference(auth_registry.host, "thin/" + source.repository.rsplit("/", 1)[1], "v1")
    service(DUCC_REPOSITORY=REPO, DOCKER_CONFIG=str(tmp_path),
            DUCC_OUTPUT_REGISTRY_USER="ducc", DUCC_OUTPUT_REGISTRY_PASSWORD="not-the-pw")
    job_id = queue_for(redis_server, root).submit(ConversionRequest(source, thin=target), "test").job_id
    (job,) = wait_finished(JobStore(redis_server.client()), [job_id])
    assert job.state == "failed" and not job.temporary and job.attempts == 1
    assert job.error.startswith("published, thin image not pushed: ") and "401" in job.error
    assert str(target) in job.error and "not-the-pw" not in json.dumps(job.to_json())
    assert (root / layout.tag_link(source) / "app").read_bytes() == b"v1"  # the flat stays published


def test_a_registry_outage_on_the_push_is_retried_without_converting_again(
    client, unique_ref, registry, proxy, redis_server, service, root, tmp_path  # noqa: F811
):
    source = unique_ref()
    push_image(client, source, SOURCE)
    target = via(proxy, Reference(registry.host, source.repository + "_thin", "v1"))
    proxy.add("status", "/blobs/uploads/", method="PUT", status=503, times=2)
    service(DUCC_REPOSITORY=REPO, DOCKER_CONFIG=str(tmp_path), DUCC_RETRY_ATTEMPTS="1")
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
