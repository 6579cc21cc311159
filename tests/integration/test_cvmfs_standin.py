"""The cvmfs_server stand-in enforces the real command's contract.

``cvmfs_server`` (CernVM-FS 2.12) cannot be installed on these machines, so ducc's CVMFS tests run
tests/support/cvmfs_server in its place. These tests check the stand-in itself, rule by rule:
the argument grammar of the real usage text (unknown options fail), one open transaction per
repository (17), abort/publish without one (22/1), ``ingest`` refused while one is open, the mount
read-only outside a transaction, nothing visible to a client before ``publish`` or a finished
``ingest``, ``abort -f`` discarding everything, ``ingest``'s handling of compressed input,
whiteout files, ``..``, absolute names, hardlinks, merges, ``--catalog`` and ``--delete``, the
current-directory rule, the revision in ``.cvmfspublished``, the call log, failure injection,
and the gateway's sub-path leases.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from tests.support.cvmfs import CvmfsStandin, cvmfs_standin, tar_of
from tests.support.processes import wait_until

REPO = "test.cern.ch"


@pytest.fixture
def cvmfs(tmp_path):
    """The stand-in itself (the shared ``cvmfs`` fixture is the real server)."""
    with cvmfs_standin(tmp_path / "cvmfs-repo") as standin:
        yield standin


def ingest(cvmfs: CvmfsStandin, data: bytes, base: str, *extra: str):
    return cvmfs.run("ingest", "-t", "-", "-b", base, *extra, REPO, input=data)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".cvmfspublished")


# -- argument grammar ---------------------------------------------------------------------------

BAD_ARGUMENTS = {
    "transaction_unknown_option": (["transaction", "-x", REPO], 1, "unrecognized parameter"),
    "transaction_without_repository": (["transaction"], 1, "missing argument"),
    "transaction_unknown_repository": (["transaction", "other.cern.ch"], 1, "repository other.cern.ch not found"),
    "publish_unknown_option": (["publish", "-x", REPO], 3, "Unrecognized option"),
    "abort_unknown_option": (["abort", "-f", "-q", REPO], 1, "unrecognized parameter"),
    "ingest_unknown_option": (["ingest", "--frobnicate", "-t", "-", "-b", "x", REPO], 3, "Unrecognized option"),
    "ingest_base_without_tar": (["ingest", "-b", "x", REPO], 1, "Please provide the tarball"),
    "ingest_tar_without_base": (["ingest", "-t", "-", REPO], 1, "Please set the base directory"),
    "ingest_nothing_to_do": (["ingest", REPO], 1, "Please provide some parameters"),
    "ingest_keep_and_user": (["ingest", "-k", "-u", "root", "-t", "-", "-b", "x", REPO], 1, "You cannot provide both"),
    "ingest_group_without_user": (["ingest", "-g", "root", "-t", "-", "-b", "x", REPO], 1, "must provide a user"),
    "ingest_base_the_shell_would_split": (["ingest", "-t", "-", "-b", "a b", REPO], 1, "word-split"),
    "unknown_command": (["frobnicate", REPO], 3, "Unrecognized command"),
}


@pytest.mark.parametrize("argv,code,message", list(BAD_ARGUMENTS.values()), ids=list(BAD_ARGUMENTS))
def test_arguments_outside_the_real_usage_text_fail(cvmfs, argv, code, message):
    """Stand-in for cvmfs_server: the real command's option grammar, exit codes and messages."""
    done = cvmfs.run(*argv, input=b"")
    assert done.returncode == code
    assert message in (done.stderr + done.stdout).decode()
    assert not cvmfs.in_transaction()


def test_long_options_and_the_template_option_are_accepted(cvmfs):
    """Stand-in for cvmfs_server: ``--tar_file/--base_dir/--catalog`` and ``transaction -T from=to`` parse."""
    assert cvmfs.run("ingest", "--tar_file", "-", "--base_dir", "a", "--catalog", REPO,
                     input=tar_of(("f", "x"))).returncode == 0
    done = cvmfs.run("transaction", "-T", "a=b", REPO)
    assert done.returncode == 0, done.stderr
    assert (cvmfs.mount / "b" / "f").read_text() == "x"  # the template is cloned inside the transaction
    assert cvmfs.run("publish", REPO).returncode == 0
    assert (cvmfs.client / "b" / "f").read_text() == "x"


# -- transactions -------------------------------------------------------------------------------


def test_a_second_transaction_fails_with_17_and_ingest_cannot_start(cvmfs):
    """Stand-in for cvmfs_server: one open transaction per repository."""
    assert cvmfs.run("transaction", REPO).returncode == 0
    second = cvmfs.run("transaction", REPO)
    assert second.returncode == 17
    assert b"another transaction is already open" in second.stderr
    blocked = ingest(cvmfs, tar_of(("f", "x")), "a")
    assert blocked.returncode == 1
    assert b"Impossible to start a transaction" in blocked.stderr
    assert not (cvmfs.client / "a").exists()


def test_abort_and_publish_without_a_transaction_fail(cvmfs):
    """Stand-in for cvmfs_server: abort -f → 22, publish → 1, both "Repository … is not in a transaction"."""
    aborted = cvmfs.run("abort", "-f", REPO)
    assert aborted.returncode == 22
    assert f"Repository {REPO} is not in a transaction".encode() in aborted.stderr
    published = cvmfs.run("publish", REPO)
    assert published.returncode == 1
    assert f"Repository {REPO} is not in a transaction".encode() in published.stdout + published.stderr
    assert cvmfs.revision() == 1


def test_abort_without_force_asks_first(cvmfs):
    """Stand-in for cvmfs_server: ``abort`` without ``-f`` reads an answer from stdin (EINTR unless y)."""
    cvmfs.run("transaction", REPO)
    assert cvmfs.run("abort", REPO, input=b"n\n").returncode == 4
    assert cvmfs.in_transaction()
    assert cvmfs.run("abort", REPO, input=b"y\n").returncode == 0
    assert not cvmfs.in_transaction()


def test_the_mount_is_read_only_outside_a_transaction(cvmfs):
    """Stand-in for cvmfs_server: /cvmfs/<repo> refuses writes (EROFS) unless a transaction is open."""
    with pytest.raises(OSError) as error:
        (cvmfs.mount / "file").write_text("x")
    assert error.value.errno == 30
    cvmfs.run("transaction", REPO)
    (cvmfs.mount / "file").write_text("x")
    cvmfs.run("publish", REPO)
    with pytest.raises(OSError):
        (cvmfs.mount / "file").write_text("y")


def test_nothing_is_visible_to_a_client_before_publish(cvmfs):
    """Stand-in for cvmfs_server: changes of an open transaction reach clients only with ``publish``."""
    cvmfs.run("transaction", REPO)
    (cvmfs.mount / "dir").mkdir()
    (cvmfs.mount / "dir" / "file").write_text("new")
    assert not (cvmfs.client / "dir").exists()
    assert cvmfs.revision() == 1
    done = cvmfs.run("publish", REPO)
    assert done.returncode == 0, done.stderr
    assert (cvmfs.client / "dir" / "file").read_text() == "new"
    assert (cvmfs.mount / "dir" / "file").read_text() == "new"
    assert cvmfs.revision() == 2


def test_abort_discards_everything_since_transaction(cvmfs):
    """Stand-in for cvmfs_server: ``abort -f`` returns to the state before ``transaction``, deletions included."""
    ingest(cvmfs, tar_of(("keep", "old"), ("gone", "old")), "a")
    cvmfs.run("transaction", REPO)
    (cvmfs.mount / "a" / "gone").unlink()
    (cvmfs.mount / "a" / "keep").write_text("changed")
    (cvmfs.mount / "b").mkdir()
    assert cvmfs.run("abort", "-f", REPO).returncode == 0
    assert listing(cvmfs.mount) == ["a", "a/gone", "a/keep"]
    assert (cvmfs.mount / "a" / "keep").read_text() == "old"
    assert cvmfs.revision() == 2


def test_deletions_in_a_transaction_are_published(cvmfs):
    """Stand-in for cvmfs_server: removing files and directories through the mount publishes the removal."""
    ingest(cvmfs, tar_of(("d/f", "x"), ("e/g", "y")), "a")
    cvmfs.run("transaction", REPO)
    (cvmfs.mount / "a" / "d" / "f").unlink()
    (cvmfs.mount / "a" / "d").rmdir()
    assert cvmfs.run("publish", REPO).returncode == 0
    assert listing(cvmfs.client) == ["a", "a/e", "a/e/g"]


def test_publish_and_ingest_refuse_a_current_directory_inside_the_mount(cvmfs):
    """Stand-in for cvmfs_server: "Current working directory is in /cvmfs/<repo>" for publish and ingest."""
    cvmfs.run("transaction", REPO)
    done = cvmfs.run("publish", REPO, cwd=cvmfs.mount)
    assert done.returncode == 1
    assert b"Current working directory is in" in done.stdout + done.stderr
    assert cvmfs.in_transaction()
    cvmfs.run("abort", "-f", REPO)
    done = cvmfs.run("ingest", "-t", "-", "-b", "a", REPO, input=tar_of(("f", "x")), cwd=cvmfs.mount)
    assert done.returncode == 1
    assert b"Current working directory is in" in done.stderr
    assert not cvmfs.in_transaction()
    assert not (cvmfs.client / "a").exists()


def test_the_revision_grows_by_one_per_publish_or_ingest(cvmfs):
    """Stand-in for cvmfs_server: the stratum 0's ``.cvmfspublished`` (not in the mount), its ``S`` line +1 per
    publishing call."""
    assert cvmfs.revision() == 1
    ingest(cvmfs, tar_of(("f", "x")), "a")
    cvmfs.run("transaction", REPO)
    cvmfs.run("publish", REPO)
    cvmfs.run("ingest", "-d", "a", REPO)
    assert cvmfs.revision() == 4
    manifest = (cvmfs.state / "srv" / ".cvmfspublished").read_text()
    assert "S4\n" in manifest and f"N{REPO}\n" in manifest
    assert not os.path.lexists(cvmfs.mount / ".cvmfspublished")  # as on the real server: only /srv has it


def test_a_subpath_transaction_needs_an_existing_parent(cvmfs):
    """Stand-in for cvmfs_server: ``transaction repo/path`` → 2 if the parent is missing, 20 if it is a file."""
    ingest(cvmfs, tar_of(("file", "x")), "a")
    assert cvmfs.run("transaction", f"{REPO}/missing/sub").returncode == 2
    assert cvmfs.run("transaction", f"{REPO}/a/file/sub").returncode == 20
    done = cvmfs.run("transaction", f"{REPO}/a/new")
    assert done.returncode == 0, done.stderr
    cvmfs.run("abort", "-f", REPO)


# -- ingest ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [gzip.compress, lambda data: zstandard.ZstdCompressor().compress(data)],
                         ids=["gzip", "zstd"])
def test_ingest_rejects_compressed_input_and_publishes_nothing(cvmfs, compress):
    """Stand-in for cvmfs_server: ingest reads plain tar only; compressed input fails with exit 1."""
    done = ingest(cvmfs, compress(tar_of(("f", "x"))), "a")
    assert done.returncode == 1
    assert not (cvmfs.client / "a").exists()
    assert cvmfs.revision() == 1
    assert not cvmfs.in_transaction()


def test_ingest_keeps_whiteouts_drops_dotdot_and_puts_absolute_names_under_the_base(cvmfs):
    """Stand-in for cvmfs_server: ``.wh.*`` literal, ``..`` entries dropped silently, ``/abs`` under the base dir."""
    data = tar_of(("d/.wh.gone", ""), ("d/.wh..wh..opq", ""), ("../escape", "x"), ("d/../../escape2", "x"),
                  ("/abs/file", "y"), ("./dot", "z"))
    done = ingest(cvmfs, data, "base")
    assert done.returncode == 0, done.stderr
    assert listing(cvmfs.client) == ["base", "base/abs", "base/abs/file", "base/d", "base/d/.wh..wh..opq",
                                     "base/d/.wh.gone", "base/dot"]
    assert not (cvmfs.state.parent / "escape").exists()


def test_ingest_turns_hardlinks_into_separate_files(cvmfs):
    """Stand-in for cvmfs_server: every name of a hardlink group becomes its own file, same content."""
    done = ingest(cvmfs, tar_of(("a", "same"), ("dir/b", "=>a"), ("c", "=>a")), "x")
    assert done.returncode == 0, done.stderr
    names = [cvmfs.client / "x" / n for n in ("a", "dir/b", "c")]
    assert [p.read_text() for p in names] == ["same"] * 3
    assert len({os.stat(p).st_ino for p in names}) == 3
    assert all(os.stat(p).st_nlink == 1 for p in names)


def test_ingest_merges_into_an_existing_base_dir(cvmfs):
    """Stand-in for cvmfs_server: old entries stay, tar entries are added or replaced."""
    ingest(cvmfs, tar_of(("old", "1"), ("both", "old"), ("sub/x", "1")), "base")
    ingest(cvmfs, tar_of(("both", "new"), ("sub/y", "2"), ("added", "3")), "base")
    assert listing(cvmfs.client) == ["base", "base/added", "base/both", "base/old", "base/sub", "base/sub/x", "base/sub/y"]
    assert (cvmfs.client / "base" / "both").read_text() == "new"


def test_ingest_catalog_marks_the_base_dir_and_delete_removes(cvmfs):
    """Stand-in for cvmfs_server: ``--catalog`` puts ``.cvmfscatalog`` at the base dir; ``-d`` deletes (repeatable)."""
    assert ingest(cvmfs, tar_of(("f", "x")), "a/b", "-c").returncode == 0
    assert (cvmfs.client / "a" / "b" / ".cvmfscatalog").is_file()
    ingest(cvmfs, tar_of(("g", "y")), "c")
    done = cvmfs.run("ingest", "-d", "a/b", "-d", "c/g", "-d", "does/not/exist", REPO)
    assert done.returncode == 0, done.stderr
    assert listing(cvmfs.client) == ["a", "c"]
    assert cvmfs.revision() == 4


def test_ingest_owns_everything_by_the_repository_owner_unless_keep_ownership(cvmfs):
    """Stand-in for cvmfs_server: without ``-k`` the tar's uid/gid are replaced by the owner's; with it they stay."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.uid, info.gid, info.mode, info.size = 1234, 4321, 0o4755, 1
        tar.addfile(info, io.BytesIO(b"x"))
    ingest(cvmfs, buf.getvalue(), "owner")
    ingest(cvmfs, buf.getvalue(), "kept", "-k")
    owned, kept = os.lstat(cvmfs.client / "owner" / "f"), os.lstat(cvmfs.client / "kept" / "f")
    assert (owned.st_uid, owned.st_gid) == (os.getuid(), os.getgid())
    assert (kept.st_uid, kept.st_gid) == (1234, 4321)
    assert kept.st_mode & 0o7777 == 0o4755


def test_ingest_of_an_empty_stream_is_an_empty_archive(cvmfs):
    """Stand-in for cvmfs_server: zero bytes are a valid (empty) archive, as libarchive's "empty" format."""
    assert ingest(cvmfs, b"", "empty", "-c").returncode == 0
    assert listing(cvmfs.client) == ["empty", "empty/.cvmfscatalog"]


def test_ingest_accepts_a_stream_ending_between_entries_but_not_one_cut_inside_an_entry(cvmfs):
    """Stand-in for cvmfs_server: libarchive takes a missing end marker as the end; a cut header or body is fatal."""
    whole = tar_of(("a", "x" * 1000), ("b", "y"))
    between = whole[: 512 * 3]  # header + 2 data blocks of "a": the stream stops between entries
    assert ingest(cvmfs, between, "between").returncode == 0
    assert listing(cvmfs.client) == ["between", "between/a"]
    assert ingest(cvmfs, whole[: 512 * 2], "body").returncode == 1  # inside a's data
    assert ingest(cvmfs, whole[: 512 * 4], "data").returncode == 1  # b's header, but not its data
    assert ingest(cvmfs, whole[: 512 * 3 + 100], "header").returncode == 1  # inside b's header
    assert listing(cvmfs.client) == ["between", "between/a"]
    assert cvmfs.revision() == 2
    assert not cvmfs.in_transaction()


def test_ingest_refuses_a_catalog_marker_that_is_not_a_file(cvmfs):
    """Stand-in for cvmfs_server: a ``.cvmfscatalog`` symlink or directory makes ingest fail."""
    done = ingest(cvmfs, tar_of((".cvmfscatalog", "->elsewhere")), "a")
    assert done.returncode == 1
    assert not (cvmfs.client / "a").exists()


# -- call log and failure injection ----------------------------------------------------------------


def test_every_call_is_logged_with_its_exit_code(cvmfs):
    """Stand-in for cvmfs_server: calls.jsonl lists each call, so tests can count publishing operations."""
    cvmfs.run("transaction", REPO)
    cvmfs.run("transaction", REPO)
    cvmfs.run("publish", REPO)
    assert [(c.command, c.rc) for c in cvmfs.calls()] == [("transaction", 0), ("transaction", 17), ("publish", 0)]
    assert len(cvmfs.publishing_calls()) == 1


@pytest.mark.parametrize("at", ["start", "end"])
def test_an_injected_ingest_failure_publishes_nothing_and_leaves_no_transaction(cvmfs, at):
    """Stand-in for cvmfs_server: the chosen ingest exits 1 with the message; like the real one it aborts its own."""
    cvmfs.fail("ingest", nth=2, at=at, message="disk on fire")
    assert ingest(cvmfs, tar_of(("f", "1")), "first").returncode == 0
    done = ingest(cvmfs, tar_of(("f", "2")), "second")
    assert done.returncode == 1
    assert b"disk on fire" in done.stderr
    assert listing(cvmfs.client) == ["first", "first/f"]
    assert not cvmfs.in_transaction()
    assert ingest(cvmfs, tar_of(("f", "3")), "third").returncode == 0


def test_an_injected_publish_failure_keeps_the_transaction_open(cvmfs):
    """Stand-in for cvmfs_server: a failed publish publishes nothing and, as the real script, leaves the transaction."""
    cvmfs.fail("publish", message="Synchronization failed")
    cvmfs.run("transaction", REPO)
    (cvmfs.mount / "f").write_text("x")
    done = cvmfs.run("publish", REPO)
    assert done.returncode == 1 and b"Synchronization failed" in done.stderr
    assert cvmfs.in_transaction()
    assert not (cvmfs.client / "f").exists()
    assert cvmfs.run("abort", "-f", REPO).returncode == 0
    assert cvmfs.revision() == 1


def test_an_ingest_killed_midway_leaves_its_transaction_for_abort(cvmfs):
    """Stand-in for cvmfs_server: a killed ingest leaves the repository in a transaction until ``abort -f``."""
    import signal
    import subprocess

    cvmfs.fail("ingest", action="hang")
    process = subprocess.Popen([str(cvmfs.binary), "ingest", "-t", "-", "-b", "a", REPO], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cvmfs.env())
    try:
        wait_until(cvmfs.in_transaction, "the ingest never opened its transaction", timeout=30, interval=0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert cvmfs.run("transaction", REPO).returncode == 17
    assert cvmfs.run("abort", "-f", REPO).returncode == 0
    assert cvmfs.calls("ingest")[0].rc is None  # the log shows a call that never finished
    assert ingest(cvmfs, tar_of(("f", "x")), "a").returncode == 0


# -- gateway ----------------------------------------------------------------------------------------


@pytest.fixture
def gateway(tmp_path):
    with cvmfs_standin(tmp_path / "gw", gateway=True, nodes=("default", "b")) as standin:
        yield standin


def test_gateway_nodes_publish_disjoint_subpaths_at_once(gateway):
    """Stand-in for a gateway-connected cvmfs_server: disjoint leases coexist, overlapping ones fail with 16."""
    for shard in ("x", "y"):
        assert ingest(gateway, b"", shard, "-c").returncode == 0
    assert gateway.run("transaction", f"{REPO}/x", node="default").returncode == 0
    busy = gateway.run("transaction", f"{REPO}/x/sub", node="b")
    assert busy.returncode == 16 and b"lease path busy" in busy.stderr
    assert gateway.run("transaction", f"{REPO}/y", node="b").returncode == 0
    (gateway.nodes["default"] / "x" / "one").write_text("1")
    (gateway.nodes["b"] / "y" / "two").write_text("2")
    assert gateway.run("publish", REPO, node="b").returncode == 0
    assert gateway.run("publish", REPO, node="default").returncode == 0
    assert (gateway.client / "x" / "one").read_text() == "1"
    assert (gateway.client / "y" / "two").read_text() == "2"
    assert gateway.revision() == 5


def test_gateway_publish_refuses_changes_outside_the_lease(gateway):
    """Stand-in for a gateway-connected cvmfs_server: only the leased sub-path may change."""
    ingest(gateway, b"", "x", "-c")
    gateway.run("transaction", f"{REPO}/x")
    (gateway.mount / "elsewhere").write_text("no")
    done = gateway.run("publish", REPO)
    assert done.returncode == 1 and b"outside the lease path" in done.stderr
    assert gateway.in_transaction()
    gateway.run("abort", "-f", REPO)


def test_gateway_ingest_takes_one_delete_and_needs_the_base_parent(gateway):
    """Stand-in for a gateway-connected cvmfs_server: the real script's gateway rules for ingest."""
    many = gateway.run("ingest", "-d", "a", "-d", "b", REPO)
    assert many.returncode == 1 and b"Could not delete multiple paths" in many.stderr
    both = gateway.run("ingest", "-t", "-", "-b", "a", "-d", "b", REPO, input=b"")
    assert both.returncode == 1 and b"Could not delete and add" in both.stderr
    orphan = ingest(gateway, tar_of(("f", "x")), "no/parent/here")
    assert orphan.returncode == 1 and b"non-existing path" in orphan.stderr
    assert ingest(gateway, tar_of(("f", "x")), "top").returncode == 0
