"""Podman's store follows the repository: ``ducc convert``, ``ducc rm`` and ``ducc gc`` with
``--podman-store`` (real processes), and a worker with ``DUCC_PODMAN_STORE`` set, checked by the real
podman reading the store as its additional image store (``tests/support/podman.py``).

The repository is written first and the store told afterwards: a run without the option stands in for
a crash between the two (the repository changed, the store never heard of it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ducc import layout
from ducc.model.reference import Reference
from ducc.publish.podman.metadata import LAYERS_INDEX, Indexes, layer_dir
from ducc.publish.podman.store import store_name
from ducc.service.jobs import JobStore
from ducc.settings import Settings
from ducc.wiring import Services
from tests.support.images import Dir, File, ImageSpec, Layer, push_image
from tests.support.podman import Podman
from tests.support.processes import free_port
from tests.support.service import DuccProcess, ducc_cli, service_env

pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed: run ./bootstrap.sh"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a store holds 0/0 devices and trusted.* attributes: root only"),
]

BASE = Layer([Dir("etc"), File("etc/os-release", b"ID=follows\n"), Dir("usr"), File("usr/tool", b"tool", 0o755)])


def spec(app: bytes) -> ImageSpec:
    return ImageSpec(layers=[BASE, Layer([File("app", app, 0o755)])], cmd=["/app"])


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "podmanStore"


@pytest.fixture
def podman(tmp_path, store):
    work = tmp_path / "podman"
    work.mkdir()
    tool = Podman(work, store)
    yield tool
    tool.close()


@pytest.fixture
def ducc(root, store, tmp_path):
    """``ducc ARGS`` on the test's root (``--podman-store`` is each call's to give)."""
    env = service_env(root, None, tmp_path / "state")

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = ducc_cli(*args, env=env)
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    return run


def indexes(store: Path) -> Indexes:
    return Indexes.parse((store / LAYERS_INDEX).read_bytes(), (store / "overlay-images" / "images.json").read_bytes())


def test_a_converted_image_is_listed_by_podman_with_its_source_manifest_digest(client, unique_ref, ducc, store,
                                                                                 podman, root):
    ref = unique_ref()
    built = push_image(client, ref, spec(b"v1"))
    done = ducc("convert", "--root", str(root), "--podman-store", str(store), str(ref))
    assert done.stdout.startswith("published")
    assert f"podman store {store}: added {store_name(ref)}" in done.stderr
    assert podman.images() == {store_name(ref): str(built.digest)}
    assert (podman.root_of(store_name(ref)) / "app").read_bytes() == b"v1"
    again = ducc("convert", "--root", str(root), "--podman-store", str(store), str(ref))
    assert again.stdout.startswith("unchanged") and "podman store" not in again.stderr  # nothing to add


def test_a_moved_tag_replaces_the_stores_image(client, unique_ref, ducc, store, podman, root):
    ref = unique_ref()
    old = push_image(client, ref, spec(b"v1"))
    ducc("convert", "--root", str(root), "--podman-store", str(store), str(ref))
    new = push_image(client, ref, spec(b"v2"))
    ducc("convert", "--root", str(root), "--podman-store", str(store), str(ref))
    assert podman.images() == {store_name(ref): str(new.digest)}
    assert set(indexes(store).images) == {new.config_digest.hex}  # the old image went with its name
    assert not (store / "overlay-images" / old.config_digest.hex).exists()


def test_an_image_the_store_missed_or_holds_at_another_manifest_is_added_when_found_unchanged(
        client, unique_ref, ducc, store, podman, root):
    missed, moved = unique_ref("missed"), unique_ref("moved")
    first = push_image(client, missed, spec(b"missed"))
    push_image(client, moved, spec(b"v1"))
    ducc("convert", "--root", str(root), "--podman-store", str(store), str(moved))
    now = push_image(client, moved, spec(b"v2"))
    # Published without the store being told: what a crash right after the record leaves.
    ducc("convert", "--root", str(root), str(missed), str(moved))
    assert store_name(missed) not in podman.images()
    done = ducc("convert", "--root", str(root), "--podman-store", str(store), str(missed), str(moved))
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == ["unchanged", "unchanged"]
    assert podman.images() == {store_name(missed): str(first.digest), store_name(moved): str(now.digest)}


def test_a_sync_does_not_count_as_current_an_image_the_store_misses(client, unique_ref, ducc, store, root, tmp_path):
    """The service's sync converts only what is not current: an image the store missed (a crash after
    its record) is not, so a job is queued, finds it unchanged and fills the store in."""
    ref = unique_ref()
    push_image(client, ref, spec(b"v1"))
    ducc("convert", "--root", str(root), str(ref))  # the store never told
    env = service_env(root, None, tmp_path / "state")
    with_store = Services(Settings.from_env({**env, "DUCC_PODMAN_STORE": str(store)})).converter
    assert Services(Settings.from_env(env)).converter.is_current(ref)[0] is True
    assert with_store.is_current(ref)[0] is False
    assert with_store.convert(ref).state == "unchanged"
    assert with_store.is_current(ref)[0] is True


def test_ducc_rm_takes_the_image_out_of_podmans_list(client, unique_ref, ducc, store, podman, root):
    gone, kept = unique_ref("gone"), unique_ref("kept")
    push_image(client, gone, spec(b"gone"))
    push_image(client, kept, spec(b"kept"))
    ducc("convert", "--root", str(root), "--podman-store", str(store), str(gone), str(kept))
    assert set(podman.images()) == {store_name(gone), store_name(kept)}
    done = ducc("rm", "--root", str(root), "--podman-store", str(store), str(gone))
    assert done.stdout.startswith("unpublished") and f"removed {store_name(gone)}" in done.stderr
    assert set(podman.images()) == {store_name(kept)}


def test_ducc_gc_drops_images_no_longer_published_and_their_own_layers(client, unique_ref, ducc, store, podman,
                                                                        root):
    gone, kept = unique_ref("gone"), unique_ref("kept")
    dropped = push_image(client, gone, spec(b"gone"))
    push_image(client, kept, spec(b"kept"))
    ducc("convert", "--root", str(root), "--podman-store", str(store), str(gone), str(kept))
    before = indexes(store)
    own = set(before.chain(dropped.config_digest.hex)) - set(before.chain(next(
        i for i in before.images if i != dropped.config_digest.hex)))
    assert len(own) == 1  # its top layer; the base is shared
    ducc("rm", "--root", str(root), str(gone))  # unpublished, the store never told (a crash after the rm)
    assert set(podman.images()) == {store_name(gone), store_name(kept)}
    done = ducc("gc", "--root", str(root), "--podman-store", str(store), "--grace", "0")
    assert f"podman store {store}: dropped 1 images and 1 layers" in done.stdout
    after = indexes(store)
    assert set(after.layers) == set(before.layers) - own
    assert all(not (store / layer_dir(layer)).exists() for layer in own)
    assert set(podman.images()) == {store_name(kept)}
    assert (podman.root_of(store_name(kept)) / "app").read_bytes() == b"kept"


def test_a_failing_store_is_reported_and_the_image_stays_published(client, unique_ref, ducc, store, podman, root):
    ref = unique_ref()
    built = push_image(client, ref, spec(b"v1"))
    (store / LAYERS_INDEX).parent.mkdir(parents=True)
    (store / LAYERS_INDEX).write_text("not json")
    done = ducc("convert", "--root", str(root), "--podman-store", str(store), str(ref))
    assert done.stdout.startswith("published")
    assert f"podman store {store}: failed (adding {ref})" in done.stderr
    assert (root / layout.tag_link(ref) / "app").read_bytes() == b"v1"
    (store / LAYERS_INDEX).unlink()
    again = ducc("convert", "--root", str(root), "--podman-store", str(store), str(ref))
    assert again.stdout.startswith("unchanged")
    assert podman.images() == {store_name(ref): str(built.digest)}


def test_a_store_that_cannot_be_written_is_refused_in_one_line_before_any_work(ducc, root, tmp_path):
    (tmp_path / "file").write_text("in the way")
    done = ducc("convert", "--root", str(root), "--podman-store", str(tmp_path / "file" / "store"),
                "registry.invalid/never/fetched:1", ok=False)
    assert done.returncode != 0 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "cannot be created or written" in done.stderr
    assert not (root / layout.tag_link(Reference.parse("registry.invalid/never/fetched:1"))).exists()


def test_ducc_serve_refuses_a_store_it_cannot_write_in_one_line_before_anything_starts(tmp_path):
    env = service_env(tmp_path / "root", None, tmp_path / "state", DUCC_LISTEN=f"127.0.0.1:{free_port()}")
    done = ducc_cli("serve", "--podman-store", "/proc/x/store", env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "ducc: podman store /proc/x/store: cannot be created or written: No such file or directory"], done.stderr
    assert not (tmp_path / "state" / "redis").exists(), "nothing may start before the checks"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) runs ducc as another user")
def test_a_store_written_by_anyone_but_root_is_refused_in_one_line(ducc, root, tmp_path):
    """``unshare --user`` runs ducc with an effective uid that is not 0 (65534) and no capability outside
    its namespace: what a writer that is not root is."""
    env = service_env(root, None, tmp_path / "state")
    done = subprocess.run(["unshare", "--user", sys.executable, "-m", "ducc", "convert", "--root", str(root),
                           "--podman-store", str(tmp_path / "store"), "registry.invalid/never/fetched:1"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "takes root" in done.stderr, done.stderr
    assert not (tmp_path / "store").exists()


def test_a_worker_with_a_podman_store_adds_what_it_publishes(client, unique_ref, redis_server, root, store, podman,
                                                            tmp_path):
    ref = unique_ref()
    built = push_image(client, ref, spec(b"service"))
    env = service_env(root, redis_server.url, tmp_path / "state", DUCC_PODMAN_STORE=str(store))
    worker = DuccProcess(["worker", "--name", "podman@%h", "--concurrency", "1"], env, tmp_path / "worker.log").start()
    try:
        worker.wait_for_log("ready.")
        submitted = ducc_cli("submit", str(ref), env=env)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().splitlines()[-1]
        status = ducc_cli("status", job_id, "--wait", "120", env=env)
        assert "PUBLISHED" in status.stdout, status.stdout + status.stderr
    finally:
        worker.stop()
    job = JobStore(redis_server.client()).get(job_id)
    assert any(e["state"] == "publishing" and e["detail"].startswith(f"podman store {store}: added {store_name(ref)}")
               for e in job.events), job.events
    assert podman.images() == {store_name(ref): str(built.digest)}
