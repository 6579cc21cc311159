"""The converter publishing into a CVMFS repository: real images from the real registry, real ``ducc``
processes, and ``cvmfs_server`` played by the stand-in.

``cvmfs_server`` cannot be installed on these machines: every test here runs tests/support/cvmfs_server
in its place, which enforces the real command's contract (one transaction at a time, nothing visible
before ``publish`` or a finished ``ingest``, a stream that stops between entries counting as complete,
exit codes and messages) and logs every call with its exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ducc import layout
from ducc.convert import Converter
from ducc.model.manifest import Platform
from tests.support.images import Dir, File, ImageSpec, Layer, push_image, push_index


def ducc(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ducc", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def wait_until(condition, what: str, timeout: float = 120.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError(what)


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
    """Through the stand-in: another writer publishes the moment the repository lease is released;
    the conversion still reports the revision its record landed in, read while it held the lease."""
    others = []

    @contextmanager
    def lease(name: str):
        yield
        others.append(cvmfs.run("ingest", "-t", "-", "-b", f"other/{len(others)}", "-c", cvmfs.repository, input=b""))

    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[BASE, APP]))
    result = converter_into(lock=lease).convert(ref)
    assert all(done.returncode == 0 for done in others) and others
    assert result.revision == cvmfs.revision() - 1
    assert [c.command for c in cvmfs.calls() if c.command in ("publish", "ingest")][-2:] == ["publish", "ingest"]


# -- a writer killed in the middle of an ingest ---------------------------------------------------

# Empty files are one tar block each: wherever a killed writer's stream stops, it stops between two
# entries, the cut a tar reader takes for a finished archive.
MANY_FILES = 10_000


def test_a_ducc_convert_killed_mid_ingest_publishes_nothing_and_the_next_run_completes(cvmfs, client, unique_ref,
                                                                                      tmp_path):
    """Through the stand-in: SIGKILL of ``ducc convert`` while its layer streams into ``ingest``."""
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([Dir("many")] + [File(f"many/f{i:05}") for i in range(MANY_FILES)])]))
    env = cvmfs.ducc_env(tmp_path / "state")
    with open(tmp_path / "killed.log", "wb") as log:
        writer = subprocess.Popen([sys.executable, "-m", "ducc", "convert", str(ref), "--cvmfs-repo", cvmfs.repository],
                                  env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: [c for c in cvmfs.calls("ingest") if c.rc is None], "no ingest started", timeout=300)
            time.sleep(0.3)  # well inside the stream: the stand-in takes seconds to write 10,000 files
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
    """Through the stand-in (a plain overlayfs mount: variant links are not expanded there, so the test
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
    """Through the stand-in: arm64 alone lives under .multiarch only; amd64 then makes the variant link."""
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
