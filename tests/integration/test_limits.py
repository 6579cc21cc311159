"""``DUCC_MAX_IMAGE_BYTES`` and ``DUCC_MAX_LAYER_ENTRIES`` with small limits, through the real CLI, a real
registry and a real worker: an image over a limit is refused with a clear permanent error while it streams
(the entry that crosses the limit is never written, the rest of the blob never downloaded), and nothing of
it is visible or left in staging; an image within the limits is published as usual."""

from __future__ import annotations

import os
import subprocess
import sys

from ducc import layout
from ducc.convert import Converter
from ducc.errors import LimitExceeded
from ducc.model.limits import Limits
from ducc.model.request import ConversionRequest
from ducc.publish.directory import DirectoryPublisher
from ducc.service.jobs import JobStore
from tests.integration.test_convert import Watermark, visible
from tests.integration.test_service import queue_for, wait_finished
from tests.support.images import Dir, File, ImageSpec, Layer, push_image
from tests.support.service import DuccProcess, service_env


def ducc(*args: str, root, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "DUCC_ROOT": str(root), "DUCC_CACHE_DIR": "off", **env}
    return subprocess.run([sys.executable, "-m", "ducc", "-q", *args], env=full, capture_output=True, text=True,
                          timeout=300)


def nothing_left(root, built) -> None:
    assert visible(root) == [], visible(root)
    staging = root / layout.STAGING
    assert not staging.exists() or [p for p in staging.iterdir() if p.is_dir()] == []
    assert not (root / layout.flat_dir(built.config_digest)).exists()


def test_an_image_over_the_byte_limit_is_refused_and_nothing_of_it_is_visible(client, unique_ref, root):
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[Layer([File("a", os.urandom(60_000))]),
                                                      Layer([File("b", os.urandom(60_000))])]))
    done = ducc("convert", str(ref), root=root, DUCC_MAX_IMAGE_BYTES="100000")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"ducc: {ref}: layer sha256:") and " refused: more than DUCC_MAX_IMAGE_BYTES=100000 " \
        "uncompressed bytes for the image (60000 written, " in line and "adds 60000)" in line
    nothing_left(root, built)
    fits = ducc("convert", str(ref), root=root, DUCC_MAX_IMAGE_BYTES="120000")
    assert fits.returncode == 0 and fits.stdout.startswith("published"), fits.stderr


def test_a_layer_over_the_entry_limit_is_refused_and_not_kept(client, unique_ref, root):
    ref = unique_ref()
    many = Layer([Dir("many"), *[File(f"many/{i:03d}", b"") for i in range(100)]])
    built = push_image(client, ref, ImageSpec(layers=[many]))
    done = ducc("convert", str(ref), root=root, DUCC_MAX_LAYER_ENTRIES="50")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line == (f"ducc: {ref}: layer {built.layer_digests[0]} refused: more than DUCC_MAX_LAYER_ENTRIES=50 "
                    "entries in one layer (at 'many/049')")
    nothing_left(root, built)
    assert not (root / layout.layer_dir(built.layer_digests[0])).exists()


def test_a_limit_that_is_not_a_positive_number_is_a_usage_error(root):
    done = ducc("list", root=root, DUCC_MAX_IMAGE_BYTES="0")
    assert done.returncode == 2 and done.stderr.splitlines() == ["ducc: DUCC_MAX_IMAGE_BYTES must be at least 1, not 0"]


def test_the_limit_stops_the_download_at_the_entry_that_crosses_it(client, unique_ref, root):
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[Layer([File("small", b"x" * 1000),
                                                             File("huge", os.urandom(20 << 20))])]))
    watermark = Watermark()
    converter = Converter(client, DirectoryPublisher(root), progress=watermark, limits=Limits(max_image_bytes=1 << 20))
    try:
        converter.convert(ref)
        raise AssertionError("the image was not refused")
    except LimitExceeded as exc:
        assert not exc.temporary and "'huge' adds 20971520" in str(exc)
    layer_size = len(built.blobs[built.layer_digests[0]])
    print(f"read {watermark.read[built.layer_digests[0]]} of {layer_size} bytes when the limit refused the image")
    assert watermark.read[built.layer_digests[0]] < layer_size / 4
    nothing_left(root, built)


def test_the_service_fails_an_image_over_a_limit_for_good_at_the_first_attempt(client, unique_ref, redis_server, root,
                                                                                tmp_path):
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([Dir("d"), *[File(f"d/{i}", b"") for i in range(30)]])]))
    env = service_env(root, redis_server.url, tmp_path / "state", DUCC_MAX_LAYER_ENTRIES="10")
    worker = DuccProcess(["worker", "--name", "limits@%h"], env, tmp_path / "worker.log").start()
    try:
        worker.wait_for_log("ready.")
        job_id = queue_for(redis_server, root).submit(ConversionRequest(ref), "test").job_id
        (job,) = wait_finished(JobStore(redis_server.client()), [job_id])
        assert job.state == "failed" and not job.temporary and job.attempts == 1
        assert "DUCC_MAX_LAYER_ENTRIES=10" in job.error and "retrying" not in [e["state"] for e in job.events]
        assert not (root / layout.tag_link(ref)).exists()
    finally:
        worker.stop()
