"""Podman's additional image store, checked with the real podman (Debian's 4.3): images converted by
ducc into a directory root, then written into a store that podman reads through a storage.conf of its
own (``additionalimagestores``, private ``graphroot``/``runroot`` under the test's directory).

``podman run`` is refused by the sandbox's limits on these machines and ``podman image mount`` does not
reach a read-only store, so a root is seen as ``podman create`` + ``podman mount`` of that container
shows it (root only, like the overlay mount itself).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest

from ducc import layout
from ducc.model.digest import Digest
from ducc.publish.podman.committer import DirectoryCommitter
from ducc.publish.podman.diff import build_diff
from ducc.publish.podman.metadata import (
    IMAGES_INDEX,
    LAYERS_INDEX,
    LOCKS,
    Indexes,
    big_data_file,
    layer_dir,
    link_path,
    names_of,
)
from ducc.publish.podman.store import PodmanStore, store_name
from ducc.publish.podman.whiteout import OPAQUE_XATTR
from ducc.tree import Event, remove_tree, walk
from tests.support.images import Dir, ImageSpec, Layer, Raw, Whiteout
from tests.support.mounts import tmpfs
from tests.support.podman import (
    BASE,
    Podman,
    converted,
    entries,
    flat_additions,
    image,
    layers_in,
    record_of,
)

pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed: run ./bootstrap.sh"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a store holds 0/0 devices and trusted.* attributes: root only"),
]

@pytest.fixture
def podman(tmp_path):
    work = tmp_path / "podman"
    work.mkdir()
    tool = Podman(work, tmp_path / "repo" / "podmanStore")
    yield tool
    tool.close()


@pytest.fixture
def two_images(client, unique_ref, root):
    """Two images converted into ``root`` that share their base layer, both added to the store."""
    refs = unique_ref("a"), unique_ref("b")
    built = [converted(client, root, ref, image(f"#!/bin/sh\necho {i}\n".encode())) for i, ref in enumerate(refs)]
    store = PodmanStore(DirectoryCommitter(root / "podmanStore"))
    for ref in refs:
        store.add(store_name(ref), record_of(root, ref), layers_in(root))
    return store, refs, built


def test_podman_lists_the_images_with_their_source_manifest_digests_and_configs(two_images, podman):
    _, refs, built = two_images
    assert podman.images() == {store_name(ref): str(b.digest) for ref, b in zip(refs, built, strict=True)}
    for ref, b in zip(refs, built, strict=True):
        inspected = json.loads(podman("image", "inspect", store_name(ref)))[0]
        source = json.loads(b.config)
        assert inspected["Id"] == b.config_digest.hex
        assert inspected["Digest"] == str(b.digest)
        assert {key: inspected["Config"].get(key) for key in source["config"]} == source["config"]
        assert inspected["RootFS"]["Layers"] == source["rootfs"]["diff_ids"]
        assert inspected["Created"].startswith(source["created"].rstrip("Z"))


def test_a_container_of_a_store_image_has_the_flat_root_entry_by_entry(two_images, root, podman):
    _, refs, _ = two_images
    for ref in refs:
        flat = (root / layout.tag_link(ref)).resolve()
        mounted = podman.root_of(store_name(ref))
        # podman create adds nothing at mount time (its mount points appear only when a container starts)
        assert entries(mounted) == entries(flat, skip=flat_additions(flat))
        assert not (mounted / "old").exists() and not (mounted / "opq" / "lower").exists()
        assert not (mounted / "replaced" / "lower").exists() and (mounted / "keep" / "lower").exists()


def test_whiteouts_of_nothing_show_nothing_as_in_the_flat_root(client, unique_ref, root, podman):
    """Directories a layer brings holding only whiteouts of things that never were: ducc's flat root does
    not show them, nor does the store (overlayfs would show them as empty directories). A whiteout
    marker that is a directory (``.wh.usr/child``) deletes ``usr`` as ducc's flat root does."""
    ref = unique_ref()
    top = Layer([
        Whiteout("newdir/nothing"), Dir("only"), Whiteout("only/none"), Whiteout("secret/inside"),
        Whiteout("etc/os-release"), Raw(".wh.usr/child", content=b"c"),
    ])
    converted(client, root, ref, ImageSpec(layers=[BASE, top], cmd=["/app"]))
    store = PodmanStore(DirectoryCommitter(root / "podmanStore"))
    store.add(store_name(ref), record_of(root, ref), layers_in(root))
    flat = (root / layout.tag_link(ref)).resolve()
    mounted = podman.root_of(store_name(ref))
    assert entries(mounted) == entries(flat, skip=flat_additions(flat))
    assert not (mounted / "secret").exists() and (mounted / "etc").is_dir() and not (mounted / "usr").exists()


def test_whiteouts_are_in_overlay_form_and_the_base_layer_is_shared(two_images, root):
    store, refs, built = two_images
    indexes = store.indexes()
    diff_ids = [[d for d in json.loads(b.config)["rootfs"]["diff_ids"]] for b in built]
    assert diff_ids[0][0] == diff_ids[1][0] and diff_ids[0][1] != diff_ids[1][1]
    assert len(indexes.layers) == 3  # one base, two tops
    base = indexes.chain(built[0].config_digest.hex)[-1]
    assert base == indexes.chain(built[1].config_digest.hex)[-1]
    assert sorted(p.name for p in (store.root / "overlay").iterdir()) == sorted([*indexes.layers, "l"])
    for image_id in (b.config_digest.hex for b in built):
        top = store.root / layer_dir(indexes.chain(image_id)[0]) / "diff"
        old = os.lstat(top / "old")
        assert stat.S_ISCHR(old.st_mode) and old.st_rdev == os.makedev(0, 0)
        assert os.getxattr(top / "opq", OPAQUE_XATTR) == b"y"
        assert os.getxattr(top / "replaced", OPAQUE_XATTR) == b"y"
        assert not any(p.name.startswith(".wh.") for p in top.rglob("*"))
        with pytest.raises(OSError):
            os.getxattr(top / "keep", OPAQUE_XATTR)
    # Files are hard-linked from the published layer, not copied.
    published = root / layout.layerfs(Digest.parse(str(built[0].layer_digests[0])))
    assert os.stat(store.root / layer_dir(base) / "diff" / "etc/os-release").st_ino == \
        os.stat(published / "etc/os-release").st_ino
    for lock in LOCKS:
        assert (store.root / lock).read_bytes() == b""


def test_the_store_names_layers_and_big_data_as_podman_itself_does(two_images, registry, podman, tmp_path):
    """The independent oracle: podman pulls the same image into a store of its own."""
    store, refs, built = two_images
    (tmp_path / "pulled").mkdir()
    own = Podman(tmp_path / "pulled", None)
    own("pull", "-q", "--tls-verify=false", str(refs[0]))
    theirs = json.loads((tmp_path / "pulled/graph" / LAYERS_INDEX).read_text())
    ours = store.indexes()
    chain = ours.chain(built[0].config_digest.hex)
    assert [layer["id"] for layer in theirs] == list(reversed(chain))
    assert [layer.get("parent") for layer in theirs] == [None, chain[-1]]
    their_image = json.loads((tmp_path / "pulled/graph" / IMAGES_INDEX).read_text())[0]
    our_image = ours.images[built[0].config_digest.hex]
    assert their_image["id"] == our_image.id and their_image["layer"] == our_image.layer
    assert their_image["digest"] == str(our_image.digest)
    files = set(os.listdir(tmp_path / "pulled/graph/overlay-images" / our_image.id))
    ours_files = set(os.listdir(store.root / "overlay-images" / our_image.id))
    assert ours_files <= files
    for layer in theirs:
        assert (layer["compressed-diff-digest"], layer["diff-digest"]) == (
            str(ours.layers[layer["id"]].digest), str(ours.layers[layer["id"]].diff_id))
        assert os.readlink(store.root / link_path(layer["id"])) == f"../{layer['id']}/diff"


def test_a_removed_image_is_no_longer_listed_and_its_own_layers_are_gone(two_images, podman):
    store, refs, built = two_images
    before = store.indexes()
    top_a = before.chain(built[0].config_digest.hex)[0]
    assert store.remove([store_name(refs[0])]) == [built[0].config_digest.hex]
    assert podman.images() == {store_name(refs[1]): str(built[1].digest)}
    after = store.indexes()
    assert top_a not in after.layers and not (store.root / layer_dir(top_a)).exists()
    assert not os.path.lexists(store.root / link_path(top_a))
    assert not (store.root / "overlay-images" / built[0].config_digest.hex).exists()
    base = after.chain(built[1].config_digest.hex)[-1]
    assert (store.root / layer_dir(base) / "diff").is_dir()  # still used by the other image
    podman.root_of(store_name(refs[1]))


def test_gc_keeps_the_published_names_and_clears_debris(two_images, podman):
    store, refs, built = two_images
    (store.root / "overlay" / ("f" * 64)).mkdir()  # what a crash between a place and an index leaves
    (store.root / "overlay-images" / ("e" * 64)).mkdir()
    (store.root / "overlay-layers" / ".layers.json.0123abcd").write_bytes(b"[")  # an interrupted write
    collected = store.gc(keep={store_name(refs[1])})
    assert collected.images == [built[0].config_digest.hex] and len(collected.layers) == 1
    assert sorted(collected.debris) == ["overlay-images/" + "e" * 64, "overlay-layers/.layers.json.0123abcd",
                                        "overlay/" + "f" * 64]
    assert podman.images() == {store_name(refs[1]): str(built[1].digest)}
    assert store.gc(keep={store_name(refs[1])}) == type(collected)()  # nothing left to do


def test_a_moved_tag_takes_its_name_to_the_new_image_and_drops_the_old(client, unique_ref, root, podman):
    ref = unique_ref()
    store = PodmanStore(DirectoryCommitter(root / "podmanStore"))
    first = converted(client, root, ref, image(b"one"))
    store.add(store_name(ref), record_of(root, ref), layers_in(root))
    second = converted(client, root, ref, image(b"two"))
    store.add(store_name(ref), record_of(root, ref), layers_in(root))
    assert podman.images() == {store_name(ref): str(second.digest)}
    assert list(store.indexes().images) == [second.config_digest.hex]
    assert not (store.root / "overlay-images" / first.config_digest.hex).exists()
    assert len(store.indexes().layers) == 2
    assert (podman.root_of(store_name(ref)) / "app").read_bytes() == b"two"


def test_a_store_on_another_filesystem_gets_copies_that_keep_hardlinks(client, unique_ref, root, podman, tmp_path):
    ref = unique_ref()
    converted(client, root, ref, image(b"copied"))
    with tmpfs(root / "podmanStore", "size=20m") as mount:
        store = PodmanStore(DirectoryCommitter(mount))
        store.add(store_name(ref), record_of(root, ref), layers_in(root))
        flat = (root / layout.tag_link(ref)).resolve()
        mounted = podman.root_of(store_name(ref))
        assert entries(mounted) == entries(flat, skip=flat_additions(flat))
        base = store.root / layer_dir(store.indexes().chain(Digest.of(record_of(root, ref).config or b"").hex)[-1])
        tool, again = os.stat(base / "diff/usr/bin/tool"), os.stat(base / "diff/usr/bin/tool-again")
        assert tool.st_ino == again.st_ino and tool.st_dev != os.stat(root / layout.LAYERS).st_dev
        podman.close()



def test_a_layer_deeper_than_path_max_becomes_a_diff_without_recursion(tmp_path):
    """A hostile layer: 2,000 nested directories (a path far beyond PATH_MAX, and beyond Python's
    recursion limit), a whiteout and an opaque marker at the bottom."""
    depth = 2000
    layerfs = tmp_path / "layerfs"
    layerfs.mkdir()
    fd = os.open(layerfs, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("deep-directory", dir_fd=fd)
        child = os.open("deep-directory", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    for name in ("file", ".wh.gone", ".wh..wh..opq"):
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)

    report = build_diff(layerfs, tmp_path / "diff")
    assert (report.whiteouts, report.opaque, report.linked) == (1, 1, 1)
    bottom = [v for v in walk(tmp_path / "diff") if v.event is Event.ENTRY and v.name == "gone"]
    assert len(bottom) == 1 and bottom[0].rel.count("/") == depth
    assert stat.S_ISCHR(bottom[0].st.st_mode)
    remove_tree(tmp_path / "diff")
    remove_tree(layerfs)  # pytest cannot delete a tree this deep



class WatchedCommitter(DirectoryCommitter):
    """The directory committer, checking after every index write what a reader would find then: every
    image's layers listed, each with its tree, and the image's big data."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.states = 0

    def write(self, relative, data):
        super().write(relative, data)
        if relative not in (LAYERS_INDEX, IMAGES_INDEX):
            return
        self.states += 1
        indexes = PodmanStore(self).indexes()
        for entry in indexes.images.values():
            chain = indexes.chain(entry.id)
            assert chain and chain[0] == entry.layer and indexes.layers[chain[-1]].parent is None
            for layer_id in chain:
                assert (self.root / layer_dir(layer_id) / "diff").is_dir()
                assert os.readlink(self.root / link_path(layer_id)) == f"../{layer_id}/diff"
            for big in entry.big_data:
                assert (self.root / "overlay-images" / entry.id / big_data_file(big.key)).is_file()


def test_a_reader_finds_whole_images_in_every_state_of_the_indexes(client, unique_ref, root, podman):
    refs = unique_ref("a"), unique_ref("b")
    for i, ref in enumerate(refs):
        converted(client, root, ref, image(f"first {i}".encode()))
    committer = WatchedCommitter(root / "podmanStore")
    store = PodmanStore(committer)
    for ref in refs:
        store.add(store_name(ref), record_of(root, ref), layers_in(root))
    converted(client, root, refs[0], image(b"moved"))
    store.add(store_name(refs[0]), record_of(root, refs[0]), layers_in(root))  # old image and its top layer go
    store.remove([store_name(refs[1])])
    store.gc(keep=set())
    assert committer.states >= 8 and store.indexes() == Indexes()
    assert podman.images() == {}


def test_adding_an_image_again_writes_nothing(two_images, root):
    store, refs, _ = two_images
    before = {p: p.stat().st_mtime_ns for p in store.root.rglob("*.json")}
    store.add(store_name(refs[0]), record_of(root, refs[0]), layers_in(root))
    assert {p: p.stat().st_mtime_ns for p in store.root.rglob("*.json")} == before


def test_one_writer_at_a_time_changes_the_store(two_images, root):
    store, refs, _ = two_images
    done = threading.Event()
    committer = DirectoryCommitter(store.root)
    with committer.exclusive():
        writer = threading.Thread(target=lambda: (store.remove([store_name(refs[0])]), done.set()))
        writer.start()
        assert not done.wait(0.5)
        assert store_name(refs[0]) in names_of(store.indexes().images.values())
    writer.join(30)
    assert done.is_set() and store_name(refs[0]) not in names_of(store.indexes().images.values())


# -- what CernVM-FS keeps of a store's overlay whiteouts (the real cvmfs_server 2.12) ------------------

def _whiteout_tar() -> bytes:
    """A tar holding a 0/0 character device ``d/gone`` (a whiteout in overlay's form)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo("d")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(directory)
        device = tarfile.TarInfo("d/gone")
        device.type, device.mode, device.devmajor, device.devminor = tarfile.CHRTYPE, 0, 0, 0
        tar.addfile(device)
    return buf.getvalue()


def test_cvmfs_keeps_whiteout_devices_only_through_ingest_and_the_opaque_attribute_only_with_xattrs(cvmfs):
    """What decides how a CVMFS committer must write the store: through a transaction's union mount a
    0/0 device cannot be made (overlayfs refuses it), while ``ingest`` of a tar publishes one; the opaque
    attribute set in a transaction reaches clients only when the repository includes xattrs."""
    def server(*args: str, data: bytes | None = None) -> None:
        done = subprocess.run([cvmfs.real, *args, cvmfs.repository], input=data, capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]

    server("transaction")
    (cvmfs.mount / "plain").mkdir()
    os.setxattr(cvmfs.mount / "plain", OPAQUE_XATTR, b"y")
    with pytest.raises(PermissionError):
        os.mknod(cvmfs.mount / "plain" / "gone", stat.S_IFCHR, os.makedev(0, 0))
    server("publish")
    with pytest.raises(OSError):
        os.getxattr(cvmfs.client / "plain", OPAQUE_XATTR)

    conf = Path("/etc/cvmfs/repositories.d") / cvmfs.repository / "server.conf"
    conf.write_text(conf.read_text() + "CVMFS_INCLUDE_XATTRS=true\n")
    server("transaction")
    (cvmfs.mount / "with-xattrs").mkdir()
    os.setxattr(cvmfs.mount / "with-xattrs", OPAQUE_XATTR, b"y")
    server("publish")
    assert os.getxattr(cvmfs.client / "with-xattrs", OPAQUE_XATTR) == b"y"

    with tempfile.NamedTemporaryFile(suffix=".tar") as tar:
        tar.write(_whiteout_tar())
        tar.flush()
        done = subprocess.run([cvmfs.real, "ingest", "-t", tar.name, "-b", "ingested", cvmfs.repository],
                              capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    gone = os.lstat(cvmfs.client / "ingested/d/gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
