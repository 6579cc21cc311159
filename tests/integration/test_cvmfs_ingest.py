"""ducc's cvmfs_server edge and tar streams, checked against the cvmfs_server stand-in.

``cvmfs_server`` cannot be installed on these machines; these tests run tests/support/cvmfs_server
in its place, which enforces the real command's contract (one transaction at a time, nothing
visible before publish or a finished ingest, plain tar only, a stream that stops between entries
counting as complete, exit codes and messages). Trees are real files, compared entry by entry.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from ducc.errors import CvmfsError, DigestMismatch, PublishError
from ducc.publish import ingest_guard
from ducc.publish.cvmfs_server import CvmfsServer
from ducc.publish.tarstream import write_tree
from tests.support.trees import snapshot

REPO = "test.cern.ch"


@pytest.fixture
def server(cvmfs) -> CvmfsServer:
    return CvmfsServer(REPO, binary=str(cvmfs.binary), mount=cvmfs.mount, env=cvmfs.env())


def make_tree(root: Path) -> Path:
    """Everything ducc stages: dirs, files, symlinks, hardlinks (same and other directory), setuid, owners."""
    (root / "bin").mkdir(parents=True)
    (root / "etc" / "deep" / ("n" * 120)).mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o4755)
    (root / "etc" / "shadow").write_text("secret")
    os.chmod(root / "etc" / "shadow", 0o640)
    os.chown(root / "etc" / "shadow", 0, 42)
    (root / "etc" / "deep" / ("n" * 120) / ("f" * 150)).write_text("long names")
    os.link(root / "bin" / "tool", root / "bin" / "tool-again")
    os.link(root / "bin" / "tool", root / "etc" / "tool-elsewhere")
    os.symlink("/usr/bin/env", root / "bin" / "absolute")
    os.symlink("../etc/shadow", root / "bin" / "relative")
    os.symlink("dangling/nowhere", root / "dangling")
    (root / "home").mkdir()
    (root / "home" / "user").write_text("mine")
    os.chown(root / "home" / "user", 1000, 1000)
    os.chown(root / "home", 1000, 1000)
    (root / ".wh.kept-literally").write_text("")
    os.chmod(root / "etc", 0o555)
    for path in [root / "bin" / "tool", root / "etc" / "shadow", root / "home" / "user"]:
        os.utime(path, (1_500_000_000, 1_500_000_000))
    return root


def owners(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_uid, st.st_gid,
                                                                       int(st.st_mtime) if not os.path.islink(os.path.join(dirpath, name)) else 0)
    return out


def test_a_staged_tree_is_published_entry_by_entry_as_it_was(cvmfs, server, tmp_path):
    """Through the stand-in: type, mode (setuid too), content, link target, uid, gid and mtime survive."""
    source = make_tree(tmp_path / "src")
    before = server.revision()
    server.ingest(lambda out: write_tree(source, out), ".flat/ab/abcdef", catalog=True, keep_ownership=True)
    published = cvmfs.client / ".flat" / "ab" / "abcdef"
    assert snapshot(published, skip=frozenset({".cvmfscatalog"})) == snapshot(source)
    got = owners(published)
    got.pop(".cvmfscatalog")
    assert got == owners(source)
    assert (published / ".cvmfscatalog").is_file()
    assert server.revision() == before + 1
    assert len(cvmfs.publishing_calls()) == 1


def test_hardlinks_are_kept_only_within_one_directory(tmp_path):
    """The stream links a second name only in the same directory; elsewhere it repeats the content."""
    source = make_tree(tmp_path / "src")
    buf = io.BytesIO()
    report = write_tree(source, buf)
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(buf.getvalue()))}
    assert members["bin/tool-again"].islnk() and members["bin/tool-again"].linkname == "bin/tool"
    assert members["etc/tool-elsewhere"].isreg() and members["etc/tool-elsewhere"].size == members["bin/tool"].size
    assert report.hardlinks == 1
    assert members["bin/absolute"].linkname == "/usr/bin/env"
    assert all(m.uname == "" and m.gname == "" for m in members.values())


def test_the_stream_is_deterministic(tmp_path):
    source = make_tree(tmp_path / "src")
    first, second = io.BytesIO(), io.BytesIO()
    write_tree(source, first)
    write_tree(source, second)
    assert first.getvalue() == second.getvalue()
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(first.getvalue()))]
    assert names.index("bin") < names.index("bin/tool") and names == sorted(names, key=lambda n: n.split("/"))


def test_a_prefix_puts_the_tree_below_the_base_dir(cvmfs, server, tmp_path):
    source = make_tree(tmp_path / "src")
    server.ingest(lambda out: write_tree(source, out, prefix="layerfs"), ".layers/ab/abcdef", catalog=True)
    assert snapshot(cvmfs.client / ".layers/ab/abcdef/layerfs") == snapshot(source)


def test_a_writer_failing_midway_publishes_nothing(cvmfs, server, tmp_path):
    """Through the stand-in: the poisoned stream makes ingest fail; no revision, no transaction, the error re-raised."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(50):
        (source / f"f{i:02}").write_bytes(os.urandom(40_000))

    class Boom(Exception):
        pass

    def half_then_fail(out):
        def stop():
            raise Boom("verification failed")
        write_tree(source, out, before_end=stop)

    with pytest.raises(Boom):
        server.ingest(half_then_fail, "partial", catalog=True)
    assert not (cvmfs.client / "partial").exists()
    assert server.revision() == 1
    assert not server.in_transaction()
    assert cvmfs.calls("ingest")[0].rc == 1  # the command itself refused the stream


def test_closing_the_stream_alone_would_have_published_a_partial_tree(cvmfs, tmp_path):
    """Why ducc poisons: the stand-in, like libarchive, takes a stream that stops between entries as complete."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(3):
        (source / f"f{i}").write_bytes(b"x" * 512)
    buf = io.BytesIO()
    write_tree(source, buf)
    cut = buf.getvalue()[: 2 * 1024]  # two whole entries, no end marker
    assert cvmfs.run("ingest", "-t", "-", "-b", "partial", REPO, input=cut).returncode == 0
    assert sorted(p.name for p in (cvmfs.client / "partial").iterdir()) == ["f0", "f1"]


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.support.cvmfs import attach
data = Path(sys.argv[3]).read_bytes()
def write_then_die(out):
    out.write(data)
    out.flush()  # in the pipe: the guard still reads it after this process is gone
    os.kill(os.getpid(), signal.SIGKILL)
attach(Path(sys.argv[2])).server().ingest(write_then_die, "partial", catalog=True)
"""


def wait_for_end(cvmfs, command: str = "ingest", timeout: float = 120):
    """The last call of ``command`` once it has ended (the stand-in logs its exit code)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = cvmfs.calls(command)
        if calls and calls[-1].rc is not None:
            return calls[-1]
        time.sleep(0.1)
    raise TimeoutError(f"{command} did not end: {cvmfs.calls()}")


@pytest.mark.parametrize("cut", ["between_entries", "inside_a_header", "inside_data"])
def test_a_writer_killed_mid_stream_publishes_nothing_wherever_the_stream_was_cut(cvmfs, tmp_path, cut):
    """Through the stand-in: ducc's process is SIGKILLed while it streams; the guard between it and
    ``ingest`` poisons the stream, so even a cut between two entries (a finished archive to libarchive,
    see the test above) publishes nothing and leaves no transaction open."""
    import subprocess
    import sys

    entries = [(f"f{i}", b"x" * 700) for i in range(20)]
    whole = layer_tar(entries)
    offsets = {"between_entries": 10 * 1536, "inside_a_header": 10 * 1536 + 100, "inside_data": 10 * 1536 + 800}
    (tmp_path / "stream").write_bytes(whole[: offsets[cut]])
    project = Path(__file__).resolve().parents[2]
    writer = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(project), str(cvmfs.state.parent),
                             str(tmp_path / "stream")], capture_output=True, text=True, timeout=120)
    assert writer.returncode == -9, writer.stderr
    call = wait_for_end(cvmfs)
    assert call.rc != 0
    assert not (cvmfs.client / "partial").exists()
    assert cvmfs.revision() == 1
    assert not cvmfs.in_transaction()


def layer_tar(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            elif isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            elif isinstance(content, str) and content.startswith("=>"):
                info.type, info.linkname = tarfile.LNKTYPE, content[2:]
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o600
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_a_digest_mismatch_found_at_the_end_publishes_nothing(cvmfs, server, tmp_path):
    """Through the stand-in: the last check fails after every entry was streamed, before the end of the
    archive: the stream is poisoned and nothing is published."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(b"x" * 5000)

    def verify():
        raise DigestMismatch("layer", "sha256:aa", "sha256:bb")

    with pytest.raises(DigestMismatch):
        server.ingest(lambda out: write_tree(source, out, before_end=verify), ".layers/ef/efg/layerfs", catalog=True)
    assert not (cvmfs.client / ".layers").exists()
    assert server.revision() == 1
    assert not server.in_transaction()


# -- the commands and their errors ---------------------------------------------------------------


def test_a_failing_ingest_reports_the_commands_own_stderr(cvmfs, server, tmp_path):
    """Through the stand-in: an ingest that exits before reading its stdin is a CvmfsError, not a broken pipe."""
    cvmfs.fail("ingest", message="Synchronization failed: disk full")
    big = tmp_path / "big"
    big.mkdir()
    (big / "blob").write_bytes(os.urandom(8 << 20))
    with pytest.raises(CvmfsError) as error:
        server.ingest(lambda out: write_tree(big, out), "big", catalog=True)
    assert error.value.returncode == 1
    assert "disk full" in str(error.value) and "ingest" in str(error.value)
    assert not (cvmfs.client / "big").exists()


def test_transaction_errors_carry_exit_code_and_message(cvmfs, server):
    server.transaction()
    assert server.in_transaction()
    with pytest.raises(CvmfsError) as error:
        server.transaction()
    assert error.value.returncode == 17 and "another transaction is already open" in str(error.value)
    assert not error.value.temporary
    assert server.abort() is True
    assert server.abort(missing_ok=True) is False
    with pytest.raises(CvmfsError) as aborted:
        server.abort()
    assert aborted.value.returncode == 22
    with pytest.raises(CvmfsError) as published:
        server.publish()
    assert published.value.returncode == 1 and "is not in a transaction" in str(published.value)
    assert not server.in_transaction()


def test_a_transaction_published_becomes_one_revision(cvmfs, server):
    server.transaction()
    (cvmfs.mount / "record").write_text("done")
    server.publish()
    assert (cvmfs.client / "record").read_text() == "done"
    assert server.revision() == 2
    assert [c.command for c in cvmfs.calls()] == ["transaction", "publish"]


def test_a_failed_publish_leaves_the_transaction_for_abort(cvmfs, server):
    cvmfs.fail("publish", message="Synchronization failed")
    server.transaction()
    (cvmfs.mount / "record").write_text("x")
    with pytest.raises(CvmfsError, match="Synchronization failed"):
        server.publish()
    assert server.in_transaction()
    assert server.abort()
    assert not (cvmfs.client / "record").exists()


def test_delete_batches_paths_into_few_ingests(cvmfs, server):
    paths = [f"d{i}" for i in range(5)]
    for path in paths:
        cvmfs.run("ingest", "-t", "-", "-b", path, "-c", REPO, input=b"")
    before = len(cvmfs.calls("ingest"))
    assert server.delete(paths, batch=2) == 3
    assert len(cvmfs.calls("ingest")) - before == 3
    assert [p.name for p in cvmfs.client.iterdir()] == [".cvmfspublished"]


def test_delete_on_a_gateway_takes_one_path_per_call(tmp_path):
    from tests.support.cvmfs import cvmfs_standin

    with cvmfs_standin(tmp_path / "gw", gateway=True) as gw:
        server = CvmfsServer(REPO, binary=str(gw.binary), mount=gw.mount, env=gw.env(), gateway=True)
        for path in ("a", "b"):
            gw.run("ingest", "-t", "-", "-b", path, REPO, input=layer_tar([("f", b"x")]))
        assert server.delete(["a", "b"]) == 2
        assert [p.name for p in gw.client.iterdir()] == [".cvmfspublished"]


@pytest.mark.parametrize("path", ["with space", "glob*", "../up", "a/[b]"])
def test_paths_the_real_script_would_mangle_are_refused_before_running(cvmfs, server, path):
    with pytest.raises(PublishError):
        server.delete([path])
    with pytest.raises(PublishError):
        server.ingest(lambda out: None, path, catalog=False)
    assert cvmfs.calls() == []


def test_it_never_runs_from_inside_the_mount(cvmfs):
    with pytest.raises(PublishError):
        CvmfsServer(REPO, mount=cvmfs.mount, cwd=cvmfs.mount)


def test_a_missing_binary_is_a_cvmfs_error(tmp_path):
    server = CvmfsServer(REPO, binary=str(tmp_path / "nowhere"), mount=tmp_path)
    with pytest.raises(CvmfsError) as error:
        server.publish()
    assert error.value.returncode == 127


# -- timing ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_timing_of_a_large_tree(cvmfs, server, tmp_path, capsys):
    """Through the stand-in; and separately ducc's own stream cost, with a command that only reads its input."""
    source = tmp_path / "large"
    files, total = 0, 0
    for d in range(100):
        directory = source / f"dir{d:03}" / "sub"
        directory.mkdir(parents=True)
        for f in range(100):
            size = 20_000 if f % 10 else 400_000
            (directory / f"file{f:03}").write_bytes(os.urandom(64) * (size // 64))
            files += 1
            total += size
    reader = tmp_path / "reader"
    reader.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    reader.chmod(0o755)
    started = time.monotonic()
    CvmfsServer(REPO, binary=str(reader), mount=cvmfs.mount).ingest(lambda out: write_tree(source, out), "x",
                                                                    catalog=True)
    stream_seconds = time.monotonic() - started
    started = time.monotonic()
    server.ingest(lambda out: write_tree(source, out), ".flat/la/large", catalog=True)
    ingest_seconds = time.monotonic() - started
    assert snapshot(cvmfs.client / ".flat/la/large", skip=frozenset({".cvmfscatalog"})) == snapshot(source)
    with capsys.disabled():
        print(f"\n{files} files, {total / 1e6:.0f} MB: ducc's stream alone {stream_seconds:.1f} s, "
              f"ingest through the stand-in {ingest_seconds:.1f} s")


@pytest.mark.parametrize("cut", [0, 100, 512, 1024, 1536, 2048, 2048 + 300, 4096, 6000, 6144])
def test_a_poisoned_stream_fails_wherever_it_was_cut(cvmfs, cut):
    """Through the stand-in: between entries, inside a header or inside data, the poison makes ingest fail."""
    entries = [("a", b"x" * 1000), ("b", b"y" * 3000), ("c", b"z")]
    data = layer_tar(entries)[:cut]
    done = cvmfs.run("ingest", "-t", "-", "-b", "cut", REPO, input=data + ingest_guard.poison(len(data)))
    assert done.returncode == 1, done.stdout
    assert not (cvmfs.client / "cut").exists()


def test_after_the_end_marker_the_poison_comes_too_late(cvmfs):
    """Why the streams write the end-of-archive blocks only after ``before_end``: past them a reader has finished."""
    data = layer_tar([("a", b"x")])
    assert cvmfs.run("ingest", "-t", "-", "-b", "late", REPO, input=data + ingest_guard.poison(len(data))).returncode == 0
    assert (cvmfs.client / "late" / "a").exists()
