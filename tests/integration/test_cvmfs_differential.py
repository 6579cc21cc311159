"""The stand-in and the real server, call for call: the same sequence gives the same exit codes and tree.

The stand-in (tests/support/cvmfs_server) stays for what one machine's real server cannot be (a
gateway with leases and several publisher nodes); this test keeps it honest. One sequence of calls —
transactions, ingests of plain and poisoned streams, ``--catalog`` with and without a marker at the
stream's root, ``-d`` of present and missing paths, ``abort``/``publish`` with nothing open, a second
``transaction``, ``ingest`` during a transaction — runs against both; the exit codes, the published
revision (as ducc reads it) and the visible tree (type, mode, content, link target) must agree.
Among the steps are the two places where the stand-in once disagreed with 2.12.0: ``--catalog`` with
a marker in the stream (the real one fails on an assertion) and ``.cvmfspublished`` (not in the mount).
"""

from __future__ import annotations

import os
from pathlib import Path

from ducc.publish import ingest_guard
from tests.support.cvmfs import cvmfs_standin, tar_of
from tests.support.trees import snapshot

PLAIN = tar_of(("dir", None), ("dir/file", b"plain"), ("top", b"t"))
MARKED = tar_of((".cvmfscatalog", b""), ("abc", None), ("abc/f", b"x"))
UNMARKED = tar_of(("abc", None), ("abc/f", b"y"))
# Two whole entries (a header and two data blocks each) and nothing after them: no end-of-archive block.
CUT = tar_of(("f0", b"a" * 600), ("f1", b"b" * 600), ("f2", b"c"))[: 2 * 1536]


def steps(repo: str) -> list[tuple[str, list[str], bytes | None]]:
    ingest = ["ingest", "-t", "-", "-b"]
    return [
        ("ingest a plain stream", [*ingest, "plain", repo], PLAIN),
        ("ingest --catalog without a marker in the stream", [*ingest, "nested/one", "-c", repo], UNMARKED),
        ("ingest --catalog with a marker at the stream's root", [*ingest, "nested/two", "-c", repo], MARKED),
        ("ingest a marker at the stream's root without --catalog", [*ingest, "nested/three", repo], MARKED),
        ("ingest into an existing nested catalog again", [*ingest, "nested/three", repo],
         tar_of((".cvmfscatalog", b""), ("more", b"m"))),
        ("ingest a stream cut between entries and poisoned", [*ingest, "poisoned", repo],
         CUT + ingest_guard.poison(len(CUT))),
        ("ingest a stream cut between entries, not poisoned", [*ingest, "cut", repo], CUT),
        ("delete a path", ["ingest", "-d", "plain/dir", repo], None),
        ("delete a missing path", ["ingest", "-d", "never/there", repo], None),
        ("abort with nothing open", ["abort", "-f", repo], None),
        ("publish with nothing open", ["publish", repo], None),
        ("open a transaction", ["transaction", repo], None),
        ("open a second transaction", ["transaction", repo], None),
        ("ingest during a transaction", [*ingest, "during", repo], PLAIN),
        ("abort the transaction", ["abort", "-f", repo], None),
    ]


EXPECTED = {
    "ingest a plain stream": 0,
    "ingest --catalog without a marker in the stream": 0,
    "ingest --catalog with a marker at the stream's root": 1,
    "ingest a marker at the stream's root without --catalog": 0,
    "ingest into an existing nested catalog again": 0,
    "ingest a stream cut between entries and poisoned": 1,
    "ingest a stream cut between entries, not poisoned": 0,
    "delete a path": 0,
    "delete a missing path": 0,
    "abort with nothing open": 22,
    "publish with nothing open": 1,
    "open a transaction": 0,
    "open a second transaction": 17,
    "ingest during a transaction": 1,
    "abort the transaction": 0,
}


def play(server, cwd: Path) -> list[tuple[str, int, int]]:
    """(step, exit code, revision after it) for every step."""
    out = []
    for name, argv, data in steps(server.repository):
        done = server.run(*argv, input=data, cwd=cwd)
        out.append((name, done.returncode, server.revision()))
    return out


def visible(root: Path) -> dict:
    """The published tree; ``new_repository`` (the real ``mkfs``'s greeting) left out."""
    return snapshot(root, skip=frozenset({"new_repository"}))


def test_the_stand_in_and_the_real_server_agree_call_for_call(cvmfs, tmp_path):
    with cvmfs_standin(tmp_path / "standin") as standin:
        imitated = play(standin, tmp_path)
        imitated_tree = visible(standin.client)
        imitated_manifest_in_mount = os.path.lexists(standin.mount / ".cvmfspublished")
        imitated_revision = standin.server().revision()
    real = play(cvmfs, tmp_path)
    assert [(name, rc) for name, rc, _ in imitated] == [(name, rc) for name, rc, _ in real]
    assert [rev for *_, rev in imitated] == [rev for *_, rev in real]
    assert imitated_tree == visible(cvmfs.client)
    assert imitated_manifest_in_mount is False and not os.path.lexists(cvmfs.mount / ".cvmfspublished")
    assert imitated_revision == cvmfs.server().revision() == real[-1][2]
    # What ducc's publisher relies on, as 2.12.0 does it (the exit codes, the marker --catalog makes):
    assert {name: rc for name, rc, _ in real} == EXPECTED
    assert sorted(p.name for p in (cvmfs.client / "cut").iterdir()) == ["f0", "f1"]
    assert not (cvmfs.client / "poisoned").exists() and not (cvmfs.client / "nested" / "two").exists()
    assert (cvmfs.client / "nested" / "one" / ".cvmfscatalog").stat().st_mode & 0o777 == 0o664
