"""gc and rm on a CVMFS repository, on the real CernVM-FS 2.12 server (a repository of its own per test,
through the recorder that logs every call, so the tests count them); a gateway's busy lease on the
stand-in (tests/support/cvmfs_server). Real images from a real registry; the ``ducc`` command runs as a
process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from ducc import layout
from ducc.convert import Converter
from ducc.model.digest import Digest
from ducc.publish.tarstream import write_tree
from tests.support.cvmfs import CvmfsStandin, RealCvmfs
from tests.support.images import File, ImageSpec, Layer, push_image

REPO = "test.cern.ch"


def ducc(cvmfs: CvmfsStandin | RealCvmfs, state: Path, *args: str) -> str:
    env = {**cvmfs.env(), "DUCC_CVMFS_MOUNT": str(cvmfs.mount), "DUCC_STATE_DIR": str(state), "DUCC_CACHE_DIR": "off"}
    env.pop("DUCC_GC_GRACE", None)
    done = subprocess.run([sys.executable, "-m", "ducc", *args, "--cvmfs-repo", cvmfs.repository], env=env,
                          capture_output=True,
                          text=True, timeout=600, cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def deletes(cvmfs: CvmfsStandin) -> list[list[str]]:
    """The paths of every ``ingest --delete`` call so far, one list per call."""
    out = []
    for call in cvmfs.calls("ingest"):
        paths = [call.argv[i + 1] for i, word in enumerate(call.argv) if word in ("-d", "--delete")]
        if paths:
            assert call.rc == 0, call
            out.append(paths)
    return out


def published_trees(cvmfs: CvmfsStandin, top: str) -> set[str]:
    """What a client sees under ``.layers`` or ``.flat``: the hex names of the trees."""
    base = cvmfs.client / top
    return {p.name for shard in base.iterdir() if shard.is_dir() for p in shard.iterdir() if p.is_dir()} if base.is_dir() else set()


def test_gc_deletes_through_one_ingest_delete_and_rm_unpublishes_in_one_publish(cvmfs, client, unique_ref, tmp_path):
    state = tmp_path / "state"
    converter = Converter(client, cvmfs.publisher(tmp_path / "staging"))
    ref = unique_ref("v")
    shared = Layer([File("shared", b"both")])
    old = push_image(client, ref, ImageSpec(layers=[shared, Layer([File("which", b"old")])]))
    converter.convert(ref)
    new = push_image(client, ref, ImageSpec(layers=[shared, Layer([File("which", b"new")])]))
    converter.convert(ref)
    assert published_trees(cvmfs, ".flat") == {old.config_digest.hex, new.config_digest.hex}

    waiting = ducc(cvmfs, state, "gc")  # the default grace: nothing is deleted, nothing is published
    assert "2 waiting" in waiting and deletes(cvmfs) == []
    revision = cvmfs.revision()
    out = ducc(cvmfs, state, "gc", "--grace", "0")
    assert f"deleted  flat  {old.config_digest}" in out and f"deleted  layer {old.layer_digests[1]}" in out
    assert deletes(cvmfs) == [[layout.flat_dir(old.config_digest).as_posix(), layout.layer_dir(old.layer_digests[1]).as_posix()]]
    assert cvmfs.revision() == revision + 1
    assert published_trees(cvmfs, ".flat") == {new.config_digest.hex}
    assert published_trees(cvmfs, ".layers") == {d.hex for d in new.layer_digests}
    assert (cvmfs.client / layout.tag_link(ref) / "which").read_bytes() == b"new"
    # The state is this publisher's own, under DUCC_STATE_DIR; nothing of it goes into the repository.
    assert (state / "gc" / f"{cvmfs.repository}.json").is_file() and not (cvmfs.client / layout.GC_STATE).exists()

    publishes = len(cvmfs.publishing_calls())
    assert ducc(cvmfs, state, "rm", str(ref)).startswith("unpublished\t")
    assert len(cvmfs.publishing_calls()) == publishes + 1  # the link and the record in one revision
    assert not (cvmfs.client / layout.tag_link(ref)).is_symlink()
    assert not (cvmfs.client / layout.metadata_dir(ref)).exists()
    ducc(cvmfs, state, "gc", "--grace", "0")
    assert len(deletes(cvmfs)) == 2
    assert published_trees(cvmfs, ".flat") == set() and published_trees(cvmfs, ".layers") == set()


def test_many_deletions_are_batched_64_paths_to_a_call(cvmfs, tmp_path):
    layers = [Digest.of(b"%d" % n) for n in range(65)]
    tree = tmp_path / "layers"
    for n, digest in enumerate(layers):  # 65 unreferenced layers, published in one ingest
        (tree / digest.prefix / digest.hex / "layerfs").mkdir(parents=True)
        (tree / digest.prefix / digest.hex / "layerfs" / "n").write_bytes(b"%d" % n)
    stream = io.BytesIO()
    write_tree(tree, stream)
    assert cvmfs.run("ingest", "-t", "-", "-b", ".layers", "-c", cvmfs.repository,
                     input=stream.getvalue()).returncode == 0
    assert len(published_trees(cvmfs, ".layers")) == 65
    out = ducc(cvmfs, tmp_path / "state", "gc", "--grace", "0")
    assert "deleted 0 flat roots and 65 layers" in out
    assert [len(paths) for paths in deletes(cvmfs)] == [64, 1]
    assert published_trees(cvmfs, ".layers") == set()


def test_gc_keeps_every_platform_behind_a_variant_link_and_rm_of_the_last_platform_removes_it(
        cvmfs, client, unique_ref, tmp_path):
    """On the real server: a tag published for amd64 and arm64 has a variant public link and each
    platform's own link under .multiarch; the default platform's record stays at .metadata. gc --grace 0
    keeps both flat roots and every layer of both images; rm of one platform keeps the other reachable; rm
    of the last removes the variant link, and gc then empties the repository of the tag."""
    from tests.integration.test_cvmfs_convert import AMD64, ARM64, arch_image
    from tests.support.images import push_index

    state = tmp_path / "state"
    converter = Converter(client, cvmfs.publisher(tmp_path / "staging"))
    ref = unique_ref("multi")
    images = push_index(client, ref, [arch_image("amd64"), arch_image("arm64")])
    converter.convert(ref, AMD64)
    converter.convert(ref, ARM64)
    public = cvmfs.client / layout.tag_link(ref)
    assert layout.is_variant(os.readlink(public))
    flats = published_trees(cvmfs, ".flat")
    layers = published_trees(cvmfs, ".layers")
    assert len(flats) == 2 and len(layers) == 3  # a shared base, one top layer per platform

    ducc(cvmfs, state, "gc", "--grace", "0")
    assert deletes(cvmfs) == [] and published_trees(cvmfs, ".flat") == flats
    assert published_trees(cvmfs, ".layers") == layers

    ducc(cvmfs, state, "rm", str(ref), "--platform", "linux/amd64")
    assert os.path.islink(public) and not os.path.lexists(cvmfs.client / layout.multiarch_link(ref, AMD64))
    assert (cvmfs.client / layout.multiarch_link(ref, ARM64) / "arch").read_bytes() == b"arm64 1"
    ducc(cvmfs, state, "gc", "--grace", "0")
    arm = images["images"]["linux/arm64"]
    assert published_trees(cvmfs, ".flat") == {arm.config_digest.hex}
    assert published_trees(cvmfs, ".layers") == {d.hex for d in arm.layer_digests}

    ducc(cvmfs, state, "rm", str(ref), "--platform", "linux/arm64")
    assert not os.path.lexists(public)
    ducc(cvmfs, state, "gc", "--grace", "0")
    assert published_trees(cvmfs, ".flat") == set() and published_trees(cvmfs, ".layers") == set()


def test_on_a_gateway_a_busy_lease_during_deletion_repeats_only_the_call_that_met_it(tmp_path):
    """Through the stand-in as a gateway: deletions go one path per call, and when the second call meets a
    busy lease (its "lease path busy", a temporary failure), that call alone is repeated: no path is deleted
    twice, so no revision is spent on a deletion already done."""
    from ducc.gc import collect
    from tests.support.cvmfs import cvmfs_standin

    with cvmfs_standin(tmp_path / "gateway", gateway=True) as gateway:
        layers = [Digest.of(b"busy %d" % n) for n in range(3)]
        tree = tmp_path / "layers"
        for digest in layers:
            (tree / digest.prefix / digest.hex / "layerfs").mkdir(parents=True)
        stream = io.BytesIO()
        write_tree(tree, stream)
        assert gateway.run("ingest", "-t", "-", "-b", ".layers", "-c", REPO, input=stream.getvalue()).returncode == 0
        gateway.fail("ingest", nth=3, message="stand-in: lease path busy")  # the second ``ingest --delete``
        collect(gateway.publisher(tmp_path / "staging", gc_dir=tmp_path / "gc"), grace=0)
        calls = [c for c in gateway.calls("ingest") if "-d" in c.argv]
        done = [c.argv[c.argv.index("-d") + 1] for c in calls if c.rc == 0]
        assert [c.rc for c in calls] == [0, 1, 0, 0], calls
        assert sorted(done) == sorted(layout.layer_dir(d).as_posix() for d in layers)
        assert published_trees(gateway, ".layers") == set()
