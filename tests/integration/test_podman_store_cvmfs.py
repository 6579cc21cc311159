"""Podman's store inside a CernVM-FS repository (``ducc.publish.podman.cvmfs_committer``), on the real
CernVM-FS 2.12 server with ``CVMFS_INCLUDE_XATTRS=true``, read by the real podman from the client mount
(the published revision): images converted into a directory root, then added, moved and collected
through the CVMFS committer."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path, PurePosixPath

import pytest

from ducc import layout
from ducc.publish.podman.cvmfs_committer import CvmfsCommitter
from ducc.publish.podman.metadata import IMAGES_INDEX, Indexes, layer_dir
from ducc.publish.podman.store import PodmanStore, store_name
from ducc.publish.podman.whiteout import OPAQUE_XATTR
from tests.support.images import push_image
from tests.support.podman import Podman, converted, entries, flat_additions, image, layers_in, record_of
from tests.support.service import ducc_cli

pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed: run ./bootstrap.sh"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a store holds 0/0 devices and trusted.* attributes: root only"),
]

STORE = PurePosixPath("podmanStore")


def include_xattrs(cvmfs) -> None:
    conf = Path("/etc/cvmfs/repositories.d") / cvmfs.repository / "server.conf"
    conf.write_text(conf.read_text() + "CVMFS_INCLUDE_XATTRS=true\n")


@pytest.fixture
def cvmfs_store(cvmfs, tmp_path):
    include_xattrs(cvmfs)
    committer = CvmfsCommitter(cvmfs.publisher(tmp_path / "staging"), cvmfs.server(), STORE, tmp_path / "podman-staging")
    return PodmanStore(committer), cvmfs.client / STORE


@pytest.fixture
def podman(tmp_path, cvmfs):
    work = tmp_path / "podman"
    work.mkdir()
    tool = Podman(work, cvmfs.client / STORE)
    yield tool
    tool.close()


def test_an_image_added_through_cvmfs_runs_from_the_client_mount_as_its_flat_root(client, unique_ref, root, cvmfs,
                                                                                   cvmfs_store, podman, tmp_path):
    store, published = cvmfs_store
    ref = unique_ref()
    built = converted(client, root, ref, image(b"#!/bin/sh\necho cvmfs\n"))
    leftover = tmp_path / "podman-staging" / "killed-writer"
    (leftover / "layer" / "diff").mkdir(parents=True)
    before = cvmfs.revision()
    store.add(store_name(ref), record_of(root, ref), layers_in(root))
    assert not leftover.exists()  # swept under the writer lock
    # one ingest per layer, then one transaction for the links, the opaque attributes and the indexes
    assert cvmfs.revision() == before + 3
    indexes = Indexes.parse((published / "overlay-layers/layers.json").read_bytes(),
                            (published / IMAGES_INDEX).read_bytes())
    top = layer_dir(indexes.images[built.config_digest.hex].layer)
    gone = os.lstat(published / top / "diff/old")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert os.getxattr(published / top / "diff/opq", OPAQUE_XATTR) == b"y"
    assert podman.images() == {store_name(ref): str(built.digest)}
    flat = (root / layout.tag_link(ref)).resolve()
    assert entries(podman.root_of(store_name(ref))) == entries(flat, skip=flat_additions(flat))


def test_a_moved_tag_and_gc_through_cvmfs_leave_only_the_published_image(client, unique_ref, root, cvmfs,
                                                                         cvmfs_store, podman):
    store, published = cvmfs_store
    ref = unique_ref()
    old = converted(client, root, ref, image(b"#!/bin/sh\necho old\n"))
    store.add(store_name(ref), record_of(root, ref), layers_in(root))
    new = converted(client, root, ref, image(b"#!/bin/sh\necho new\n"))
    store.add(store_name(ref), record_of(root, ref), layers_in(root))
    assert podman.images() == {store_name(ref): str(new.digest)}
    assert not (published / "overlay-images" / old.config_digest.hex).exists()
    revision = cvmfs.revision()
    assert store.gc(keep={store_name(ref)}).images == [] and cvmfs.revision() == revision  # nothing to do
    store.gc(keep=set())
    assert podman.images() == {}
    assert set(os.listdir(published / "overlay-images")) == {"images.json", "images.lock"}
    assert [p for p in os.listdir(published / "overlay") if p != "l"] == []


def test_ducc_convert_and_rm_with_a_store_inside_the_cvmfs_repository(client, unique_ref, cvmfs, tmp_path, podman):
    """``--podman-store /cvmfs/<repo>/podmanStore`` beside ``--cvmfs-repo <repo>``: the store is written
    through cvmfs_server, once the repository keeps extended attributes (refused in one line before)."""
    ref = unique_ref()
    built = push_image(client, ref, image(b"#!/bin/sh\necho cli\n"))
    env = cvmfs.ducc_env(tmp_path / "state")
    where = ["--cvmfs-repo", cvmfs.repository, "--podman-store", str(cvmfs.mount / STORE)]
    refused = ducc_cli("convert", str(ref), *where, env=env, cwd=tmp_path)
    assert refused.returncode != 0 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "CVMFS_INCLUDE_XATTRS=true" in refused.stderr
    include_xattrs(cvmfs)
    done = ducc_cli("convert", str(ref), *where, env=env, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("published"), done.stderr
    assert f"podman store {cvmfs.mount / STORE}: added {store_name(ref)}" in done.stderr
    assert podman.images() == {store_name(ref): str(built.digest)}
    assert (podman.root_of(store_name(ref)) / "app").read_bytes() == b"#!/bin/sh\necho cli\n"
    podman.close()  # its container holds the image's layers mounted
    removed = ducc_cli("rm", str(ref), *where, env=env, cwd=tmp_path)
    assert removed.returncode == 0 and f"removed {store_name(ref)}" in removed.stderr, removed.stderr
    assert podman.images() == {}
