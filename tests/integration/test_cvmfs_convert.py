"""The converter publishing into a CVMFS repository: real images from the real registry, real ``ducc``
processes, and ``cvmfs_server`` played by the stand-in.

``cvmfs_server`` cannot be installed on these machines: every test here runs tests/support/cvmfs_server
in its place, which enforces the real command's contract (one transaction at a time, nothing visible
before ``publish`` or a finished ``ingest``, a stream that stops between entries counting as complete,
exit codes and messages) and logs every call with its exit code.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from ducc import layout
from ducc.convert import Converter
from ducc.errors import CvmfsError, UnsafeLayer
from ducc.model.manifest import DEFAULT_PLATFORM, Platform
from ducc.publish.directory import DirectoryPublisher
from ducc.tree import remove_tree
from tests.integration.test_hostile_layers import HOSTILE
from tests.support.images import (
    Dir,
    Fifo,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Opaque,
    Raw,
    Symlink,
    Whiteout,
    push_image,
    push_index,
)
from tests.support.processes import bytes_written, wait_until
from tests.support.service import ducc_cli
from tests.support.trees import snapshot

ducc = functools.partial(ducc_cli, timeout=600)  # a conversion on the real server takes longer


@pytest.fixture
def converter_into(cvmfs, client, tmp_path):
    """A converter publishing into the stand-in's repository (options go to the CvmfsPublisher)."""

    def make(**options) -> Converter:
        return Converter(client, cvmfs.publisher(tmp_path / "staging", **options))

    return make


APP = Layer([Dir("etc"), File("etc/os-release", b"ID=cvmfs-test\n"), Dir("usr"), File("usr/app", b"v1", 0o755)])
BASE = Layer([Dir("usr"), Dir("usr/lib"), File("usr/lib/libc.so", b"libc" * 1000)])


# -- revisions ----------------------------------------------------------------------------------


def test_the_revision_reported_is_the_one_holding_the_image_even_when_another_writer_follows_at_once(
        cvmfs, client, unique_ref, converter_into):
    """On the real server: another writer publishes the moment the repository lease is released;
    the conversion still reports the revision its record landed in, read while it held the lease.
    (One layer: this stand-in lease excludes nobody, so two layers committed from two threads would let
    the other writer's ingest meet our next transaction.)"""
    others = []

    @contextmanager
    def lease(name: str):
        yield
        others.append(cvmfs.run("ingest", "-t", "-", "-b", f"other/{len(others)}", "-c", cvmfs.repository, input=b""))

    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[APP]))
    result = converter_into(lock=lease).convert(ref)
    assert all(done.returncode == 0 for done in others) and others
    assert result.revision == cvmfs.revision() - 1
    assert [c.command for c in cvmfs.calls() if c.command in ("publish", "ingest")][-2:] == ["publish", "ingest"]


# -- a writer killed in the middle of an ingest ---------------------------------------------------

# Empty files are one tar block each: wherever a killed writer's stream stops, it stops between two
# entries, the cut a tar reader takes for a finished archive.
MANY_FILES = 10_000
STREAMED = 1 << 20  # bytes ducc has written once the ingest started: a fifth of the stream's 512-byte headers


def test_a_ducc_convert_killed_mid_ingest_publishes_nothing_and_the_next_run_completes(cvmfs, client, unique_ref,
                                                                                      tmp_path):
    """On the real server: SIGKILL of ``ducc convert`` while its layer streams into ``ingest``."""
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([Dir("many")] + [File(f"many/f{i:05}") for i in range(MANY_FILES)])]))
    env = cvmfs.ducc_env(tmp_path / "state")
    with open(tmp_path / "killed.log", "wb") as log:
        writer = subprocess.Popen([sys.executable, "-m", "ducc", "convert", str(ref), "--cvmfs-repo", cvmfs.repository],
                                  env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: [c for c in cvmfs.calls("ingest") if c.rc is None], "no ingest started", timeout=300,
                       interval=0.05)
            start = bytes_written([writer.pid])  # inside the stream: 1 MiB of its 5 MiB of tar headers sent
            wait_until(lambda: bytes_written([writer.pid]) - start > STREAMED, "ducc never streamed into the ingest",
                       interval=0.01)
        finally:
            writer.kill()  # ducc only: the guard and the command live on in their own session
            writer.wait(30)
    ended = wait_until(lambda: [c for c in cvmfs.calls("ingest") if c.rc is not None], "the ingest never ended")
    published = list((cvmfs.client / layout.LAYERS).glob("*/*/layerfs/many/*"))
    assert len(published) in (0, MANY_FILES), f"a partial layer was published: {len(published)} of {MANY_FILES} files"
    assert ended[0].rc != 0 and not published, "the ingest finished: ducc was killed too late to test anything"
    assert not cvmfs.in_transaction()
    assert cvmfs.revision() == 1

    done = ducc("convert", str(ref), "--cvmfs-repo", cvmfs.repository, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    flat = (cvmfs.client / layout.tag_link(ref)).resolve()
    assert len(list((flat / "many").iterdir())) == MANY_FILES
    record_dir = cvmfs.client / layout.metadata_dir(ref)
    assert (record_dir / layout.RECORD_MANIFEST).is_file()
    [layer] = list((cvmfs.client / layout.LAYERS).glob("*/*/layerfs"))
    assert len(list((layer / "many").iterdir())) == MANY_FILES
    assert not cvmfs.in_transaction()


# -- several platforms: one public path, a CVMFS variant link ------------------------------------

AMD64, ARM64 = Platform.parse("linux/amd64"), Platform.parse("linux/arm64")


def arch_image(arch: str, version: bytes = b"1") -> ImageSpec:
    return ImageSpec(layers=[BASE, Layer([File("arch", arch.encode() + b" " + version)])], architecture=arch)


def as_client(cvmfs, link: Path, arch: str | None) -> Path:
    """Where ``link`` leads on a CVMFS client with ``CVMFS_ARCH=arch`` (which expands variant links)."""
    target = os.readlink(link)
    return (link.parent / layout.expand_variant(target, arch)).resolve() if layout.is_variant(target) else link.resolve()


def test_a_tag_published_for_two_platforms_becomes_a_variant_link_clients_resolve_per_host(
        cvmfs, client, unique_ref, converter_into, tmp_path):
    """On the real server (a plain overlayfs mount: variant links are not expanded there, so the test
    expands them as a CVMFS client does, per ``CVMFS_ARCH``)."""
    ref = unique_ref()
    push_index(client, ref, [arch_image("amd64"), arch_image("arm64")])
    converter = converter_into()
    converter.convert(ref, AMD64)
    public = cvmfs.client / layout.tag_link(ref)
    assert not layout.is_variant(os.readlink(public))  # one platform: the plain link
    assert (public / "arch").read_bytes() == b"amd64 1"

    before = len(cvmfs.publishing_calls())
    result = converter.convert(ref, ARM64)
    assert len(cvmfs.publishing_calls()) - before <= result.layers_unpacked + 2
    assert os.readlink(public) == layout.variant_link_target(ref)
    for platform, arch in ((AMD64, b"amd64 1"), (ARM64, b"arm64 1")):
        own = cvmfs.client / layout.multiarch_link(ref, platform)
        assert (own / "arch").read_bytes() == arch
        assert converter.publisher.read_record(ref, platform) is not None
    for client_arch, arch in (("x86_64", b"amd64 1"), ("aarch64", b"arm64 1"), ("amd64", b"amd64 1"),
                              ("arm64", b"arm64 1"), (None, b"amd64 1")):
        assert (as_client(cvmfs, public, client_arch) / "arch").read_bytes() == arch, client_arch
    assert sorted(os.readlink(cvmfs.client / layout.alias_link(a)) for a in ("x86_64", "aarch64")) == ["amd64", "arm64"]

    listed = dict(converter.publisher.published())
    assert set(listed) == {str(layout.tag_link(ref)), str(layout.multiarch_link(ref, AMD64)),
                           str(layout.multiarch_link(ref, ARM64))}
    assert listed[str(layout.tag_link(ref))] == listed[str(layout.multiarch_link(ref, AMD64))]
    assert all(flat.is_dir() for flat in listed.values())
    env = cvmfs.ducc_env(tmp_path / "state")
    shown = ducc("list", "--cvmfs-repo", cvmfs.repository, env=env, cwd=tmp_path)
    assert shown.returncode == 0 and "dangling" not in shown.stdout and len(shown.stdout.splitlines()) == 3, shown

    # amd64 moves on: its own link follows, the variant link stays. arm64's image is the same, under a
    # new index digest: its record follows in one publishing call; after that it costs nothing.
    push_index(client, ref, [arch_image("amd64", b"2"), arch_image("arm64")])
    converter.convert(ref, AMD64)
    assert os.readlink(public) == layout.variant_link_target(ref)
    assert (as_client(cvmfs, public, "x86_64") / "arch").read_bytes() == b"amd64 2"
    assert (as_client(cvmfs, public, "aarch64") / "arch").read_bytes() == b"arm64 1"
    before = len(cvmfs.publishing_calls())
    assert converter.convert(ref, ARM64).flat_reused
    assert len(cvmfs.publishing_calls()) == before + 1
    before = len(cvmfs.calls())
    assert converter.convert(ref, ARM64).state == "unchanged"
    assert len(cvmfs.calls()) == before


def test_a_second_platform_published_first_still_leaves_amd64_the_default(cvmfs, client, unique_ref, converter_into):
    """On the real server: arm64 alone lives under .multiarch only; amd64 then makes the variant link."""
    ref = unique_ref()
    push_index(client, ref, [arch_image("amd64"), arch_image("arm64")])
    converter = converter_into()
    converter.convert(ref, ARM64)
    public = cvmfs.client / layout.tag_link(ref)
    assert not os.path.lexists(public)
    assert (cvmfs.client / layout.tag_link(ref, ARM64) / "arch").read_bytes() == b"arm64 1"
    converter.convert(ref, AMD64)
    assert os.readlink(public) == layout.variant_link_target(ref)
    assert (as_client(cvmfs, public, None) / "arch").read_bytes() == b"amd64 1"
    assert (as_client(cvmfs, public, "aarch64") / "arch").read_bytes() == b"arm64 1"


# -- the same trees as the directory publisher --------------------------------------------------

RICH = [
    Layer([Dir("etc"), File("etc/a", b"a"), File("etc/shadow", b"secret", 0o640), Dir("bin"),
           File("bin/tool", b"#!/bin/sh\n", 0o4755), Hardlink("bin/tool-again", "bin/tool"),
           Hardlink("etc/tool-elsewhere", "bin/tool"), Symlink("bin/sh", "/bin/busybox"), Symlink("lib", "usr/lib"),
           Dir("usr"), Dir("usr/lib"), File("usr/lib/x.so", b"x" * 70_000), Dir("n" * 100),
           File("n" * 100 + "/" + "f" * 150, b"long names"), Dir("empty", 0o700), Fifo("pipe"), Dir("var"),
           File("var/old", b"old")]),
    Layer([Whiteout("etc/a"), Opaque("var"), File("var/new", b"new"), File("usr/lib/y.so", b"y"),
           Hardlink("usr/lib/x-again.so", "usr/lib/x.so")], compression="zstd"),
]


def published_tree(root: Path) -> dict[str, tuple]:
    """Everything a reader sees, but what differs by nature: the CVMFS manifest, the greeting ``mkfs`` leaves
    in a new repository, ducc's scratch space, and the record's conversion time."""
    tree = snapshot(root, skip=frozenset({".cvmfspublished", "new_repository", layout.STAGING.name,
                                          layout.REPOSITORY_NAME}))
    return {path: entry for path, entry in tree.items() if not path.endswith("/" + layout.RECORD_DETAILS)}


def test_the_same_images_give_the_same_trees_through_both_publishers(cvmfs, client, unique_ref, converter_into,
                                                                      tmp_path):
    """On the real server: the CVMFS mount and a directory root, after the same conversions, compared
    entry by entry (type, mode bits, content, link target). Ownership is not compared: ingest gives
    everything to the repository's owner, as the real command does without -k."""
    first, second = unique_ref("rich"), unique_ref("moved")
    push_image(client, first, ImageSpec(layers=RICH, entrypoint=["/bin/tool"], env=["PATH=/bin", "A=1"]))
    push_image(client, second, ImageSpec(layers=[RICH[0]]))
    directory = Converter(client, DirectoryPublisher(tmp_path / "directory"))
    cvmfs_converter = converter_into()
    for converter in (directory, cvmfs_converter):
        converter.convert(first)
        converter.convert(second)
    push_image(client, second, ImageSpec(layers=RICH, entrypoint=["/bin/tool"], env=["PATH=/bin", "A=1"]))
    for converter in (directory, cvmfs_converter):
        converter.convert(second)  # moved onto the flat root of the first
    expected = published_tree(tmp_path / "directory")
    got = published_tree(cvmfs.client)
    assert sorted(set(expected) ^ set(got)) == []
    assert {p: e for p, e in got.items() if expected[p] != e} == {}
    assert (cvmfs.client / layout.tag_link(first) / "bin" / "tool").stat().st_mode & 0o4000
    assert len(expected) > 60


@pytest.mark.slow
def test_the_real_debian_images_give_the_same_trees_through_both_publishers(cvmfs, client, registry, converter_into,
                                                                             tmp_path):
    """On the real server: the real Debian base and python images (two layers, thousands of entries)."""
    from ducc.model.reference import Reference
    from tests.support.debian import push_debian_images

    repository = push_debian_images(registry.host, ("base", "python"))
    directory = Converter(client, DirectoryPublisher(tmp_path / "directory"))
    cvmfs_converter = converter_into()
    for tag in ("base", "python"):
        ref = Reference.parse(f"{registry.host}/{repository}:{tag}")
        for converter in (directory, cvmfs_converter):
            converter.convert(ref)
    expected = published_tree(tmp_path / "directory")
    got = published_tree(cvmfs.client)
    assert sorted(set(expected) ^ set(got)) == []
    assert {p: e for p, e in got.items() if expected[p] != e} == {}
    assert len(expected) > 5000


# -- hostile layers -----------------------------------------------------------------------------


CVMFS_HOSTILE = {
    **HOSTILE,
    "malformed_whiteout": [Layer([File("ok", b"fine"), Dir("d"), Raw("d/.wh.", content=b"")])],
    # a plain tree takes it; cvmfs_server ingest would crash on a catalog marker that is not a file
    "catalog_marker_that_is_a_symlink": [Layer([File("ok", b"fine"), Symlink(".cvmfscatalog", "ok")])],
}


@pytest.mark.parametrize("layers", list(CVMFS_HOSTILE.values()), ids=list(CVMFS_HOSTILE))
def test_a_hostile_layer_publishes_nothing(cvmfs, client, unique_ref, converter_into, layers, tmp_path):
    """On the real server, whose ingest (like the real one) would drop ``..`` entries silently and put
    absolute names under the base dir: ducc refuses the layer before anything of it reaches ingest."""
    outside = tmp_path / "OUTSIDE"
    outside.mkdir()
    layers = [Layer([Symlink(e.path, str(outside)) if isinstance(e, Symlink) and e.target == "OUTSIDE" else e
                     for e in layer.entries], layer.compression) for layer in layers]
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=layers))
    converter = converter_into()
    with pytest.raises(UnsafeLayer):
        converter.convert(ref)
    assert not converter.publisher.has_layer(built.layer_digests[-1])
    assert [c for c in cvmfs.calls("ingest") if c.rc == 0 and "/.flat" in "/" + "/".join(c.argv)] == []
    assert not os.path.lexists(cvmfs.client / layout.tag_link(ref))
    assert not (cvmfs.client / layout.metadata_dir(ref)).exists()
    assert not (cvmfs.client / layout.FLAT).exists()
    assert list(outside.iterdir()) == []
    assert not cvmfs.in_transaction()


# -- a failure at each kind of call --------------------------------------------------------------

FAULTS = {
    # (command, nth call, at): a one-layer image into a fresh repository calls abort (none open),
    # ingest (the layer), abort (none open), ingest (the flat root), transaction, publish. An abort fails
    # only where a transaction is open: the one a dead writer left.
    "abort_of_a_dead_writers_transaction": ("abort", 1, "start"),
    "ingest_of_the_layer": ("ingest", 1, "start"),
    "ingest_of_the_layer_after_reading_it": ("ingest", 1, "end"),
    "ingest_of_the_flat_root": ("ingest", 2, "end"),
    "transaction": ("transaction", 1, "start"),
    "publish": ("publish", 1, "start"),
}


@pytest.mark.parametrize(("command", "nth", "at"), list(FAULTS.values()), ids=list(FAULTS))
def test_a_failed_call_leaves_nothing_of_the_image_visible_and_no_transaction_open(
        cvmfs, client, unique_ref, converter_into, command, nth, at):
    """On the real server, failing one call with exit 1 and its own words on stderr: the error quotes
    them, the image has no public path and no record, a layer or flat root published before the failure
    is visible only whole, ducc leaves no transaction open, and the next conversion publishes the image."""
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[APP]))
    if command == "abort":
        assert cvmfs.run("transaction", cvmfs.repository).returncode == 0
        (cvmfs.mount / "half-written").write_text("debris")
    cvmfs.fail(command, nth, at=at, message=f"Synchronization failed: injected {command} failure")
    converter = converter_into()
    with pytest.raises(CvmfsError) as error:
        converter.convert(ref)
    assert f"injected {command} failure" in str(error.value)
    assert not error.value.temporary
    assert not os.path.lexists(cvmfs.client / layout.tag_link(ref))
    assert not (cvmfs.client / layout.metadata_dir(ref)).exists()
    for tree in (layout.layerfs(built.layer_digests[0]), layout.flat_dir(built.config_digest)):
        assert not (cvmfs.client / tree).exists() or (cvmfs.client / tree / "usr" / "app").read_bytes() == b"v1"
    assert cvmfs.in_transaction() == (command == "abort")  # the dead writer's, which ducc could not abort
    cvmfs.clear_faults()
    assert converter.convert(ref).state == "published"
    assert not (cvmfs.client / "half-written").exists()
    assert (cvmfs.client / layout.tag_link(ref) / "usr" / "app").read_bytes() == b"v1"
    assert not cvmfs.in_transaction()


def test_a_transaction_a_dead_writer_left_open_is_aborted_by_the_next_writer(cvmfs, client, unique_ref,
                                                                              converter_into):
    """On the real server: a transaction opened and written into by a writer that died is aborted
    before the next one starts (it holds the repository, so the transaction can only be a dead one's);
    nothing the dead writer wrote becomes visible."""
    assert cvmfs.run("transaction", cvmfs.repository).returncode == 0
    (cvmfs.mount / "half-written").write_text("debris")
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[APP]))
    converter_into().convert(ref)
    assert [(c.command, c.rc) for c in cvmfs.calls()][:2] == [("transaction", 0), ("abort", 0)]
    assert not (cvmfs.client / "half-written").exists()
    assert (cvmfs.client / layout.tag_link(ref) / "usr" / "app").read_bytes() == b"v1"
    assert not cvmfs.in_transaction()


def test_reads_beside_a_dead_writers_open_transaction_see_the_published_state_and_clear_nothing(
        cvmfs, client, unique_ref, converter_into):
    """On the real server: while a transaction a dead writer left is open (its changes visible under
    /cvmfs/<repo>), the publisher's reads see the published revision (the spool's rdonly mount), take no
    lock and abort nothing; ``recover`` is the one step that aborts it."""
    ref, gone = unique_ref(), unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[APP]))
    converter = converter_into()
    converter.convert(ref)
    publisher = converter.publisher.reader
    record = publisher.read_record(ref, DEFAULT_PLATFORM)
    assert record is not None
    assert cvmfs.run("transaction", cvmfs.repository).returncode == 0
    (cvmfs.mount / layout.metadata_dir(ref) / layout.RECORD_MANIFEST).unlink()  # the dead writer's changes
    remove_tree(cvmfs.mount / layout.layer_dir(built.layer_digests[0]))
    (cvmfs.mount / layout.metadata_dir(gone)).mkdir(parents=True)
    (cvmfs.mount / layout.metadata_dir(gone) / layout.RECORD_MANIFEST).write_bytes(
        record.files()[layout.RECORD_MANIFEST])
    calls = len(cvmfs.calls())

    assert publisher.read_record(ref, DEFAULT_PLATFORM) == record
    assert publisher.read_record(gone, DEFAULT_PLATFORM) is None
    assert publisher.has_layer(built.layer_digests[0]) and publisher.has_flat(built.config_digest)
    assert [path for path, _ in publisher.published()] == [str(layout.tag_link(ref))]
    assert converter.is_current(ref)[0]
    assert cvmfs.in_transaction() and len(cvmfs.calls()) == calls  # nothing run, nothing aborted

    converter.publisher.recover()
    assert [(c.command, c.rc) for c in cvmfs.calls()[calls:]] == [("abort", 0)]
    assert not cvmfs.in_transaction()
    assert (cvmfs.mount / layout.layerfs(built.layer_digests[0])).is_dir()
    assert publisher.read_record(ref, DEFAULT_PLATFORM) == record
    assert publisher.has_layer(built.layer_digests[0])
    converter.publisher.recover()  # nothing open: nothing run
    assert len(cvmfs.calls()) == calls + 1


def test_a_failed_publish_whose_abort_failed_too_is_recovered_by_the_next_conversion(cvmfs, client, unique_ref,
                                                                                     converter_into):
    """On the real server: publish fails, then its abort fails: the transaction stays open, and the next
    writer aborts it first."""
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[APP]))
    cvmfs.fail("publish", 1, message="Synchronization failed: publish")
    cvmfs.fail("abort", 3, message="abort: device busy")  # aborts 1 and 2 found nothing open
    converter = converter_into()
    with pytest.raises(CvmfsError, match="Synchronization failed: publish"):
        converter.convert(ref)
    assert cvmfs.in_transaction()
    assert not os.path.lexists(cvmfs.client / layout.tag_link(ref))
    assert converter.convert(ref).state == "published"
    assert not cvmfs.in_transaction()


# -- what publishing costs ------------------------------------------------------------------------


def test_publishing_calls_a_new_image_a_moved_tag_and_an_unchanged_tag_cost(cvmfs, client, unique_ref,
                                                                           converter_into):
    """On the real server, counting the calls it logs: a new image costs at most its new layers + 2
    publishing calls (ingest or publish), a tag moved onto a published flat root 1, an unchanged tag 0."""
    converter = converter_into()
    first = unique_ref("first")
    push_image(client, first, ImageSpec(layers=[BASE, APP]))
    result = converter.convert(first)
    assert result.layers_unpacked == 2
    assert len(cvmfs.publishing_calls()) <= result.layers_unpacked + 2

    second = unique_ref("second")
    push_image(client, second, ImageSpec(layers=[BASE, Layer([File("other", b"2")])]))
    before = len(cvmfs.publishing_calls())
    result = converter.convert(second)
    assert result.layers_unpacked == 1 and len(cvmfs.publishing_calls()) - before <= 1 + 2

    push_image(client, second, ImageSpec(layers=[BASE, APP]))  # the tag moves onto the first's flat root
    before = len(cvmfs.publishing_calls())
    result = converter.convert(second)
    assert result.flat_reused and result.layers_unpacked == 0
    assert len(cvmfs.publishing_calls()) - before == 1

    before = len(cvmfs.calls())
    assert converter.convert(second).state == "unchanged"
    assert converter.convert(first).state == "unchanged"
    assert len(cvmfs.calls()) == before  # not even a transaction


# -- a gateway: several publisher nodes -----------------------------------------------------------


@pytest.fixture
def gateway(tmp_path):
    """The stand-in as a gateway repository with two publisher nodes, ``a`` and ``b``."""
    from tests.support.cvmfs import cvmfs_standin

    with cvmfs_standin(tmp_path / "gateway", gateway=True, nodes=("a", "b")) as standin:
        yield standin


def test_on_a_gateway_a_busy_lease_is_retried_until_it_is_free(gateway, client, unique_ref, tmp_path):
    """Through the stand-in in gateway mode: node a holds the lease the conversion on node b needs; b's
    ingest fails with "lease path busy", is retried, and publishes once a is done."""
    assert gateway.run("transaction", f"{gateway.repository}/.layers", node="a").returncode == 0
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[APP]))
    converter = Converter(client, gateway.publisher(tmp_path / "staging-b", node="b", host="b"))
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(converter.convert(ref)))
    thread.start()
    try:
        wait_until(lambda: [c for c in gateway.calls("ingest") if c.node == "b" and c.rc not in (None, 0)],
                   "b's ingest never met the busy lease")
    finally:
        assert gateway.run("abort", "-f", gateway.repository, node="a").returncode == 0
        thread.join(120)
    assert outcome and outcome[0].state == "published"
    failed = [c for c in gateway.calls("ingest") if c.node == "b" and c.rc not in (None, 0)]
    assert failed and all(c.rc == 1 for c in failed)
    assert (gateway.client / layout.tag_link(ref) / "usr" / "app").read_bytes() == b"v1"
    assert not gateway.in_transaction("a") and not gateway.in_transaction("b")


def test_on_a_gateway_two_nodes_convert_at_once(gateway, client, unique_ref, tmp_path):
    """Through the stand-in in gateway mode: conversions on nodes a and b at the same time both publish
    (each node its own transaction; overlapping leases wait for each other)."""
    refs = {"a": unique_ref("a"), "b": unique_ref("b")}
    for node, ref in refs.items():
        push_image(client, ref, ImageSpec(layers=[BASE, Layer([File("node", node.encode())])]))
    converters = {node: Converter(client, gateway.publisher(tmp_path / f"staging-{node}", node=node, host=node))
                  for node in refs}
    outcome: dict = {}

    def convert(node: str) -> None:
        try:
            outcome[node] = converters[node].convert(refs[node])
        except Exception as exc:  # reported below
            outcome[node] = exc

    threads = [threading.Thread(target=convert, args=(node,)) for node in refs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert {node: getattr(result, "state", result) for node, result in outcome.items()} == {"a": "published",
                                                                                            "b": "published"}
    for node, ref in refs.items():
        assert (gateway.client / layout.tag_link(ref) / "node").read_bytes() == node.encode()
    assert {c.node for c in gateway.publishing_calls()} == {"a", "b"}
    assert not gateway.in_transaction("a") and not gateway.in_transaction("b")
