"""ducc's cvmfs_server edge and tar streams, checked against the real CernVM-FS 2.12 server.

Each test has a repository of its own (the ``cvmfs`` fixture: ``mkfs``, then ``rmfs -f``), reached
through the recorder that logs calls and injects faults. The gateway's one-path-per-delete rule
runs on the stand-in (tests/support/cvmfs_server): a gateway cannot be set up on one machine.
Trees are real files, compared entry by entry.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from ducc.errors import CvmfsError, DigestMismatch, PublishError
from ducc.model.digest import Digest
from ducc.publish import ingest_guard
from ducc.publish.cvmfs_server import CvmfsServer
from ducc.publish.tarstream import write_tree
from tests.support.cvmfs import tar_of
from tests.support.trees import snapshot

REPO = "test.cern.ch"


@pytest.fixture
def server(cvmfs) -> CvmfsServer:
    return cvmfs.server()


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
    """On the real server: type, mode (setuid too), content, link target, uid, gid and mtime survive."""
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
    """On the real server: the poisoned stream makes ingest fail; no revision, no transaction, the error re-raised."""
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
    """Why ducc poisons: the real ingest (libarchive) takes a stream that stops between entries as complete."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(3):
        (source / f"f{i}").write_bytes(b"x" * 512)
    buf = io.BytesIO()
    write_tree(source, buf)
    cut = buf.getvalue()[: 2 * 1024]  # two whole entries, no end marker
    assert cvmfs.run("ingest", "-t", "-", "-b", "partial", cvmfs.repository, input=cut).returncode == 0
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
    """On the real server: ducc's process is SIGKILLed while it streams; the guard between it and
    ``ingest`` poisons the stream, so even a cut between two entries (a finished archive to libarchive,
    see the test above) publishes nothing and leaves no transaction open."""
    import subprocess
    import sys

    entries = [(f"f{i}", b"x" * 700) for i in range(20)]
    whole = tar_of(*entries)
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


def test_a_digest_mismatch_found_at_the_end_publishes_nothing(cvmfs, server, tmp_path):
    """On the real server: the last check fails after every entry was streamed, before the end of the
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
    """On the real server: an ingest that exits before reading its stdin is a CvmfsError, not a broken pipe."""
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
        cvmfs.run("ingest", "-t", "-", "-b", path, "-c", cvmfs.repository, input=b"")
    before = len(cvmfs.calls("ingest"))
    assert server.delete(paths, batch=2) == 3
    assert len(cvmfs.calls("ingest")) - before == 3
    assert [p.name for p in cvmfs.client.iterdir()] == ["new_repository"]


def test_delete_on_a_gateway_takes_one_path_per_call(tmp_path):
    from tests.support.cvmfs import cvmfs_standin

    with cvmfs_standin(tmp_path / "gw", gateway=True) as gw:
        server = CvmfsServer(REPO, binary=str(gw.binary), mount=gw.mount, env=gw.env(), gateway=True)
        for path in ("a", "b"):
            gw.run("ingest", "-t", "-", "-b", path, REPO, input=tar_of(("f", b"x")))
        assert server.delete(["a", "b"]) == 2
        assert [p.name for p in gw.client.iterdir()] == []


@pytest.mark.parametrize("path", ["with space", "glob*", "../up", "a/[b]", "team:a", "a/b:c"])
def test_paths_the_real_script_would_mangle_are_refused_before_running(tmp_path, path):
    """Whitespace and globs (the script expands them unquoted), ``..``, and ``:`` (ingest splits -b and -d
    on it: ``-d team:a/x`` deleted the sibling tree ``team``) never reach the command."""
    called = tmp_path / "called"
    binary = script(tmp_path / "cvmfs_server", f"touch {called}\n")
    server = CvmfsServer("test.cern.ch", binary=str(binary), mount=tmp_path / "mount")
    if ":" not in path:  # a delete path with ':' is done without -d (test below)
        with pytest.raises(PublishError):
            server.delete([path])
    with pytest.raises(PublishError):
        server.ingest(lambda out: None, path, catalog=False)
    assert not called.exists()


def test_a_path_with_a_colon_is_deleted_in_a_transaction_not_with_ingest_d(cvmfs, server):
    """On the real server: ``ingest -d`` would split ``reg/img:1`` on ':'; ducc deletes it with
    ``transaction`` + remove + ``publish`` and leaves its siblings alone."""
    server.transaction()
    for name in ("img:1", "img", "1"):
        (cvmfs.mount / "reg" / name).mkdir(parents=True)
        (cvmfs.mount / "reg" / name / "f").write_text(name)
    server.publish()
    assert server.delete(["reg/img:1"]) == 1
    assert sorted(p.name for p in (cvmfs.client / "reg").iterdir()) == ["1", "img"]
    assert not [c for c in cvmfs.calls("ingest") if "-d" in c.argv]
    assert not cvmfs.in_transaction()


def test_it_never_runs_from_inside_the_mount(cvmfs):
    with pytest.raises(PublishError):
        CvmfsServer(cvmfs.repository, mount=cvmfs.mount, cwd=cvmfs.mount)


def test_a_missing_binary_is_a_cvmfs_error(tmp_path):
    server = CvmfsServer(REPO, binary=str(tmp_path / "nowhere"), mount=tmp_path)
    with pytest.raises(CvmfsError) as error:
        server.publish()
    assert error.value.returncode == 127


# -- timing ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.bench
def test_timing_of_a_large_tree(cvmfs, server, tmp_path, capsys):
    """On the real server; and separately ducc's own stream cost, with a command that only reads its input."""
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
    CvmfsServer(cvmfs.repository, binary=str(reader), mount=cvmfs.mount).ingest(lambda out: write_tree(source, out), "x",
                                                                    catalog=True)
    stream_seconds = time.monotonic() - started
    started = time.monotonic()
    server.ingest(lambda out: write_tree(source, out), ".flat/la/large", catalog=True)
    ingest_seconds = time.monotonic() - started
    assert snapshot(cvmfs.client / ".flat/la/large", skip=frozenset({".cvmfscatalog"})) == snapshot(source)
    with capsys.disabled():
        print(f"\n{files} files, {total / 1e6:.0f} MB: ducc's stream alone {stream_seconds:.1f} s, "
              f"ingest by the real server {ingest_seconds:.1f} s")


CUTS = [0, 100, 512, 1024, 1536, 2048, 2048 + 300, 4096, 6000, 6144]


def test_a_poisoned_stream_fails_wherever_it_was_cut(cvmfs):
    """On the real server: between entries, inside a header or inside data, the poison makes ingest fail
    (one repository for every cut: each failed ingest leaves it as it was)."""
    entries = [("a", b"x" * 1000), ("b", b"y" * 3000), ("c", b"z")]
    whole = tar_of(*entries)
    for cut in CUTS:
        data = whole[:cut]
        done = cvmfs.run("ingest", "-t", "-", "-b", "cut", cvmfs.repository, input=data + ingest_guard.poison(len(data)))
        assert done.returncode == 1, (cut, done.stdout)
        said = done.stderr + done.stdout
        assert b"Truncated tar archive" in said or b"Unrecognized archive format" in said, (cut, done.stderr)
        assert not (cvmfs.client / "cut").exists(), cut
    assert cvmfs.revision() == 1


def test_after_the_end_marker_the_poison_comes_too_late(cvmfs):
    """Why the streams write the end-of-archive blocks only after ``before_end``: past them a reader has finished."""
    data = tar_of(("a", b"x"))
    assert cvmfs.run("ingest", "-t", "-", "-b", "late", cvmfs.repository, input=data + ingest_guard.poison(len(data))).returncode == 0
    assert (cvmfs.client / "late" / "a").exists()


# -- the one process runner: sessions, deadlines, the writer's lock --------------------------------


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_a_command_that_runs_past_its_deadline_is_killed_with_everything_it_started(tmp_path):
    """A timeout kills the whole process group of the command, not only the script: its children (the
    ``cvmfs2`` restarts, swissknife) must not go on while ducc aborts."""
    pidfile = tmp_path / "child.pid"
    binary = script(tmp_path / "slow", f"sleep 300 & echo $! > {pidfile}\nwait\n")
    server = CvmfsServer("test.cern.ch", binary=str(binary), mount=tmp_path, timeout=2)
    started = time.monotonic()
    with pytest.raises(CvmfsError) as error:
        server.publish()
    assert time.monotonic() - started < 30
    assert error.value.returncode == -1 and "no answer within 2 s" in str(error.value)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}"), "the command's child survived the timeout"


def test_a_command_holding_its_output_open_in_a_child_does_not_hang_ducc(tmp_path):
    """As ``cvmfs2``, restarted by ``publish``, may do: a child that outlives the command and keeps its
    stdout and stderr open. ducc reads files, not pipes, and returns when the command exits."""
    binary = script(tmp_path / "leaky", "(sleep 30 &) ; echo done\n")
    server = CvmfsServer("test.cern.ch", binary=str(binary), mount=tmp_path, timeout=20)
    started = time.monotonic()
    server.publish()
    assert time.monotonic() - started < 10


INTERRUPTED_PUBLISH = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from ducc.publish.cvmfs_server import CvmfsServer
try:
    CvmfsServer("test.cern.ch", binary=sys.argv[2], mount=Path(sys.argv[3])).publish()
except KeyboardInterrupt:
    Path(sys.argv[3], "interrupted").write_text("yes")
"""


def test_ctrl_c_in_ducc_never_reaches_cvmfs_server_and_ducc_waits_for_it(tmp_path):
    """A terminal's Ctrl-C goes to ducc's process group; ``cvmfs_server publish`` runs in a session of its
    own, so it finishes undisturbed, and ducc returns only once it has (then reports the interrupt)."""
    import signal
    import subprocess
    import sys

    binary = script(tmp_path / "publish", f"trap 'echo INT > {tmp_path}/got-int' INT\n"
                    f"echo started > {tmp_path}/started\nsleep 3\necho finished > {tmp_path}/finished\n")
    project = Path(__file__).resolve().parents[2]
    ducc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_PUBLISH, str(project), str(binary), str(tmp_path)],
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(ducc.pid, signal.SIGINT)  # what a terminal does
    assert ducc.wait(60) == 0
    assert (tmp_path / "interrupted").exists()
    assert (tmp_path / "finished").exists(), "ducc returned before cvmfs_server publish had finished"
    assert not (tmp_path / "got-int").exists(), "Ctrl-C reached cvmfs_server"


KILLED_AFTER_THE_END_FRAME = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from ducc.publish import cvmfs_server
from ducc.publish.tarstream import write_tree
from tests.support.cvmfs import attach
end = cvmfs_server._Frames.end
def end_then_die(self):
    end(self)
    os.kill(os.getpid(), signal.SIGKILL)  # ducc dies while ingest still commits
cvmfs_server._Frames.end = end_then_die
publisher = attach(Path(sys.argv[2])).publisher(Path(sys.argv[3]))
with publisher._held():
    publisher.server.ingest(lambda out: write_tree(Path(sys.argv[4]), out), "committed", catalog=False)
"""


def test_a_writer_killed_while_ingest_commits_keeps_the_repository_until_ingest_has_ended(cvmfs, tmp_path):
    """On the real server: the writer's lock lives on in the command's guard, so the next writer waits for
    the ingest to end instead of running ``abort -f`` against it; the ingest publishes."""
    import subprocess
    import sys

    source = tmp_path / "src"
    source.mkdir()
    for i in range(200):
        (source / f"f{i:03}").write_bytes(os.urandom(2000))
    project = Path(__file__).resolve().parents[2]
    writer = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_END_FRAME, str(project), str(cvmfs.state.parent),
                             str(tmp_path / "staging"), str(source)], capture_output=True, text=True, timeout=300)
    assert writer.returncode == -9, writer.stderr
    with cvmfs.publisher(tmp_path / "staging").transaction():  # the next writer: it clears a dead one's first
        pass
    [ingest] = cvmfs.calls("ingest")
    abort = cvmfs.calls("abort")[-1]  # the next writer's, once it held the repository
    assert ingest.rc == 0 and ingest.ended is not None
    assert abort.started is not None and abort.started >= ingest.ended, "abort -f ran while ingest committed"
    assert abort.rc == 22  # nothing left open to abort
    assert (cvmfs.client / "committed" / "f199").exists()


# -- the ducc command: sub-directories, doctor ------------------------------------------------------


def ducc(*args: str, env: dict[str, str], timeout: float = 300):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ducc", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def test_a_repository_subdirectory_with_a_colon_is_refused_at_once_in_one_line(tmp_path):
    """``--cvmfs-repo REPO/team:a`` once sent ``-d team:a/.flat/…``, which ingest split on ':'."""
    called = tmp_path / "called"
    binary = script(tmp_path / "cvmfs_server", f"touch {called}\n")
    env = {**os.environ, "DUCC_CVMFS_SERVER": str(binary), "DUCC_STATE_DIR": str(tmp_path / "state"),
           "DUCC_CACHE_DIR": "off"}
    done = ducc("gc", "--cvmfs-repo", "test.ducc.org/team:a", "--grace", "0", env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "':'" in done.stderr and "team:a" in done.stderr
    assert not called.exists()


def test_doctor_says_what_holds_one_line_each_and_exits_0_only_when_all_do(cvmfs, tmp_path):
    """On the real server: the command, the mount, the revision, a throw-away transaction; with a
    transaction already open (left by someone) that check fails, and doctor does not abort it."""
    env = cvmfs.ducc_env(tmp_path / "state")
    healthy = ducc("doctor", "--cvmfs-repo", cvmfs.repository, env=env)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lines = healthy.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["ok"] * 4, lines
    assert lines[2] == "ok    revision 1"
    assert cvmfs.revision() == 1 and not cvmfs.in_transaction()
    assert cvmfs.run("transaction", cvmfs.repository).returncode == 0
    busy = ducc("doctor", "--cvmfs-repo", cvmfs.repository, env=env)
    assert busy.returncode == 1
    assert busy.stdout.splitlines()[-1].startswith("FAIL  transaction opened and aborted: a transaction is already open")
    assert cvmfs.in_transaction()


def test_doctor_names_a_missing_command(tmp_path):
    env = {**os.environ, "DUCC_CVMFS_SERVER": str(tmp_path / "nowhere" / "cvmfs_server"),
           "DUCC_STATE_DIR": str(tmp_path / "state")}
    done = ducc("doctor", "--cvmfs-repo", "absent.ducc.test", env=env)
    assert done.returncode == 1
    assert done.stdout == f"FAIL  command {tmp_path}/nowhere/cvmfs_server: not found or not executable\n"


# -- the guard cuts a stream only at a block boundary ------------------------------------------------


def run_guard(tmp_path: Path, sent: bytes) -> bytes:
    """What a command behind the guard reads when ducc sends ``sent`` (frames) and stops."""
    import subprocess
    import sys

    out = tmp_path / "received"
    done = subprocess.run([sys.executable, "-I", "-S", ingest_guard.__file__, "--", "sh", "-c", f"cat > {out}"],
                          input=sent, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def test_the_guard_forwards_a_whole_stream_sent_in_frames_of_any_size(tmp_path):
    data = os.urandom(700 + 1 + 3000 + 512 * 9)
    sizes, sent, start = [700, 1, 3000, 512 * 9], b"", 0
    for size in sizes:
        sent += ingest_guard.frame_header(size) + data[start:start + size]
        start += size
    assert run_guard(tmp_path, sent + ingest_guard.END) == data


@pytest.mark.parametrize("cut", [100, 1536 + 100, 1536 + 511, 4096], ids=lambda cut: f"after_{cut}_bytes")
def test_a_stream_cut_inside_a_frame_reaches_the_command_cut_at_a_block_boundary_then_poisoned(tmp_path, cut):
    """ducc killed in the middle of a frame (inside a tar header, say): the command gets only whole
    512-byte blocks, then the poison. A header completed by the poison's filler would make the real
    swissknife hang for good (seen on 2.12.0) instead of failing."""
    data = os.urandom(cut)
    received = run_guard(tmp_path, ingest_guard.frame_header(10_000) + data)
    boundary = cut - cut % 512
    assert received == data[:boundary] + ingest_guard.poison(boundary)


def test_the_layers_of_one_transaction_are_one_ingest_that_keeps_the_shards_other_layers(cvmfs, tmp_path):
    """On the real server: two layers added in one transaction are one publishing call; one of them
    joins a shard that holds an earlier layer, which stays whole, and every layer is a nested catalog."""
    publisher = cvmfs.publisher(tmp_path / "staging")
    earlier, joining, other = (Digest.parse("sha256:" + p * 2 + "0" * 60 + s) for p, s in
                               (("a", "01"), ("a", "02"), ("b", "01")))

    def staged(stage: Path, digest: Digest) -> Path:
        tree = make_tree(stage / digest.hex / "layerfs")
        (tree / "which").write_text(digest.hex)
        return stage / digest.hex

    with publisher.reservations.directory() as stage:
        with publisher.transaction() as txn:
            txn.add_layer(earlier, staged(stage, earlier))
    before = len(cvmfs.publishing_calls())
    with publisher.reservations.directory() as stage:
        with publisher.transaction() as txn:
            for digest in (joining, other):
                source = txn.add_layer(digest, staged(stage, digest))
                assert (source / "which").read_text() == digest.hex  # readable at once, from staging
            assert not publisher.has_layer(joining)  # published when the transaction ends
        assert len(cvmfs.publishing_calls()) == before + 1
    for digest in (earlier, joining, other):
        assert publisher.has_layer(digest)
        published = publisher.layer_source(digest)
        assert (published / "which").read_text() == digest.hex
        assert snapshot(published, skip=frozenset({"which"})) == snapshot(make_tree(tmp_path / "expected" / digest.hex))
    catalogs = subprocess.run(["cvmfs_server", "list-catalogs", cvmfs.repository], capture_output=True, text=True,
                              check=True, cwd="/").stdout
    for digest in (earlier, joining, other):
        assert f"/.layers/{digest.prefix}/{digest.hex}\n" in catalogs
