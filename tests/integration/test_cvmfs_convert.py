"""The converter publishing into a CVMFS repository: real images from the real registry, real ``ducc``
processes, and ``cvmfs_server`` played by the stand-in.

``cvmfs_server`` cannot be installed on these machines: every test here runs tests/support/cvmfs_server
in its place, which enforces the real command's contract (one transaction at a time, nothing visible
before ``publish`` or a finished ``ingest``, a stream that stops between entries counting as complete,
exit codes and messages) and logs every call with its exit code.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ducc import layout
from ducc.convert import Converter
from tests.support.images import Dir, File, ImageSpec, Layer, push_image


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
