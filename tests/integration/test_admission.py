"""Admission policies from settings (``DUCC_MAX_LAYERS``, ``DUCC_MAX_COMPRESSED_BYTES``) through every entry
point: ``ducc convert``, ``ducc sync`` and a real worker, against the real registry behind the fault
proxy, which counts the blob requests. A refused image costs its manifest and config only (the config is
the one blob fetched), is refused in one line, for good, and publishes nothing."""

from __future__ import annotations

import os

import pytest

from ducc import layout
from ducc.admission import MaxDeclaredBytes, MaxLayers
from ducc.convert import Converter
from ducc.errors import ImageRefused, NotFound
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest
from ducc.publish.directory import DirectoryPublisher
from ducc.service.jobs import JobStore
from tests.integration.test_limits import ducc, nothing_left
from tests.integration.test_service import queue_for, wait_finished
from tests.support.images import BuiltImage, File, ImageSpec, Layer, push_image
from tests.support.proxy import FaultProxy, via
from tests.support.service import DuccProcess, service_env


def layered(count: int, size: int = 100) -> ImageSpec:
    return ImageSpec(layers=[Layer([File(f"layer{i}", os.urandom(size))]) for i in range(count)])


def blobs_fetched(proxy: FaultProxy, ref: Reference) -> list[str]:
    """The blob digests fetched from ``ref``'s repository through the proxy (GETs only: HEADs fetch nothing)."""
    prefix = f"/v2/{ref.repository}/blobs/"
    return [seen.path.split("/blobs/", 1)[1] for seen in proxy.requests("GET", prefix)]


def test_convert_refuses_an_image_with_too_many_layers_in_one_line_having_fetched_only_its_config(
    client, unique_ref, proxy, root
):
    ref = unique_ref()
    built = push_image(client, ref, layered(3))
    proxied = via(proxy, ref)
    done = ducc("convert", str(proxied), root=root, DUCC_MAX_LAYERS="2")
    assert done.returncode == 1 and done.stderr.splitlines() == [
        f"ducc: {proxied}: refused by DUCC_MAX_LAYERS=2: its manifest lists 3 layers"]
    assert blobs_fetched(proxy, ref) == [str(built.config_digest)]
    nothing_left(root, built)
    assert not any((root / layout.layer_dir(d)).exists() for d in built.layer_digests)

    fits = ducc("convert", str(proxied), root=root, DUCC_MAX_LAYERS="3")
    assert fits.returncode == 0 and fits.stdout.startswith("published"), fits.stderr
    assert sorted(blobs_fetched(proxy, ref)) == sorted([str(built.config_digest)] * 2
                                                       + [str(d) for d in built.layer_digests])


def test_a_refused_image_is_a_permanent_error_naming_the_policy_and_the_retry_refuses_it_again(
    client, unique_ref, proxy, root
):
    ref = unique_ref()
    built = push_image(client, ref, layered(2, size=50_000))
    proxied = via(proxy, ref)
    converter = Converter(client, DirectoryPublisher(root), policies=[MaxDeclaredBytes(60_000)])
    for attempt in (1, 2):
        with pytest.raises(ImageRefused) as caught:
            converter.convert(proxied)
        refusal = caught.value
        assert not refusal.temporary and refusal.policy == "DUCC_MAX_COMPRESSED_BYTES=60000"
        assert refusal.why == f"its layers are {sum(len(built.blobs[d]) for d in built.layer_digests)} compressed bytes"
        assert blobs_fetched(proxy, ref) == [str(built.config_digest)] * attempt
    nothing_left(root, built)


def test_sync_refuses_the_image_over_the_limit_and_publishes_the_others(client, unique_ref, proxy, root, tmp_path):
    small, large = unique_ref("small"), unique_ref("large")
    push_image(client, small, layered(1, size=1000))
    large_built = push_image(client, large, layered(2, size=200_000))
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"version: 1\ninput:\n  - '{via(proxy, small)}'\n  - '{via(proxy, large)}'\n")
    done = ducc("sync", str(wishlist), root=root, DUCC_MAX_COMPRESSED_BYTES="100000")
    assert done.returncode == 1 and "1 published" in done.stdout and "1 failed" in done.stdout, done.stdout
    listed = done.stderr.split("1 of 2 failed:\n", 1)[1].splitlines()  # the summary after the log lines
    (refused,) = [line for line in listed if "refused by" in line]
    assert refused.endswith(f"{via(proxy, large)}: refused by DUCC_MAX_COMPRESSED_BYTES=100000: its layers are "
                            f"{sum(len(large_built.blobs[d]) for d in large_built.layer_digests)} compressed bytes")
    assert (root / layout.tag_link(via(proxy, small)) / "layer0").is_file()
    assert not (root / layout.tag_link(via(proxy, large))).exists()
    assert blobs_fetched(proxy, large) == [str(large_built.config_digest)]


def test_the_service_fails_a_refused_image_for_good_at_the_first_attempt_without_fetching_a_layer(
    client, unique_ref, proxy, redis_server, root, tmp_path
):
    ref = unique_ref()
    built: BuiltImage = push_image(client, ref, layered(4))
    proxied = via(proxy, ref)
    env = service_env(root, redis_server.url, tmp_path / "state", DUCC_MAX_LAYERS="3")
    worker = DuccProcess(["worker", "--name", "admission@%h"], env, tmp_path / "worker.log").start()
    try:
        worker.wait_for_log("ready.")
        job_id = queue_for(redis_server, root).submit(ConversionRequest(proxied), "test").job_id
        (job,) = wait_finished(JobStore(redis_server.client()), [job_id])
        assert job.state == "failed" and not job.temporary and job.attempts == 1
        assert job.error == f"{proxied}: refused by DUCC_MAX_LAYERS=3: its manifest lists 4 layers"
        assert "retrying" not in [e["state"] for e in job.events]
    finally:
        worker.stop()
    assert blobs_fetched(proxy, ref) == [str(built.config_digest)]
    nothing_left(root, built)


def test_a_thin_image_asked_for_an_image_published_earlier_is_judged_too_and_not_pushed(client, unique_ref, root):
    ref = unique_ref()
    push_image(client, ref, layered(2))
    publisher = DirectoryPublisher(root)
    assert Converter(client, publisher).convert(ref).state == "published"
    target = unique_ref("thin")
    request = ConversionRequest(ref, thin=target, thin_repo="unpacked.example.org")
    with pytest.raises(ImageRefused, match="refused by DUCC_MAX_LAYERS=1: its manifest lists 2 layers"):
        Converter(client, publisher, policies=[MaxLayers(1)]).run(request)
    record = publisher.read_record(ref, request.platform)
    assert record is not None and record.thin_digest is None  # the image stays published; no thin image
    with pytest.raises(NotFound):
        client.get_manifest(target)
