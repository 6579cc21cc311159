"""Flat roots published by grafts, on the real CernVM-FS server of this machine.

Every test makes its own repository with ``cvmfs_server mkfs`` (root only; skipped, with the reason,
where ``cvmfs_server`` is not installed) and removes it again. The repository chunks files from
64 KiB on (what a transaction publishes; ``ingest`` stores each file whole), so that small files
already come in chunks. Trees are read back through
``/cvmfs/<repo>``, the stratum 0's own client: content, modes, owners, mtimes, link targets and what
the repository stores for each file (its chunk list and compression).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ducc import layout
from ducc.convert import Converter
from ducc.publish import graft
from ducc.publish.cvmfs import CvmfsPublisher
from ducc.publish.cvmfs_server import CvmfsServer
from ducc.publish.directory import DirectoryPublisher
from tests.support.images import MTIME, Dir, File, Hardlink, ImageSpec, Layer, Opaque, Symlink, Whiteout, push_image
from tests.support.trees import snapshot

SMALL_CHUNKS = {"CVMFS_MIN_CHUNK_SIZE": "65536", "CVMFS_AVG_CHUNK_SIZE": "131072", "CVMFS_MAX_CHUNK_SIZE": "262144"}


def _server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["cvmfs_server", *args], cwd="/", capture_output=True, text=True, timeout=300)


@pytest.fixture
def repository():
    """A fresh repository on the real server, with small chunks; removed after the test."""
    if shutil.which("cvmfs_server") is None:
        pytest.skip("cvmfs_server is not installed (see ../shared/cvmfs/README.md): no real repository to publish into")
    if os.geteuid() != 0:
        pytest.skip("cvmfs_server mkfs needs root")
    name = f"benchgraft{secrets.token_hex(3)}.ducc.test"
    made = _server("mkfs", "-o", "root", name)
    assert made.returncode == 0, made.stdout + made.stderr
    try:
        config = Path("/etc/cvmfs/repositories.d") / name / "server.conf"
        lines = [line for line in config.read_text().splitlines() if line.split("=", 1)[0] not in SMALL_CHUNKS]
        config.write_text("\n".join(lines + [f"{k}={v}" for k, v in SMALL_CHUNKS.items()]) + "\n")
        yield name
    finally:
        _server("abort", "-f", name)
        _server("rmfs", "-f", name)


class StreamingPublisher(CvmfsPublisher):
    """The CVMFS publisher as it was before grafts: every flat root streamed into ``ingest``."""

    def graft_flat(self, config_digest, staged, layers) -> bool:  # type: ignore[no-untyped-def]
        return False


def publisher(repository: str, staging: Path, kind: type[CvmfsPublisher] = CvmfsPublisher) -> CvmfsPublisher:
    return kind(CvmfsServer(repository), staging_root=staging)


def published(path: Path) -> dict[str, tuple]:
    """Every entry under ``path`` (a published flat root) as a client sees it, with what the repository
    stores for each file. Iterative: an image's tree is never walked by recursion."""
    out: dict[str, tuple] = {}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(path / rel_dir) as scan:
            for entry in scan:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                st = entry.stat(follow_symlinks=False)
                # The layers' entries keep the image's mtime; what ducc makes or touches has the conversion's.
                mtime = int(st.st_mtime) if int(st.st_mtime) == MTIME else "the conversion's"
                row: tuple = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, mtime)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel)
                elif stat.S_ISLNK(st.st_mode):
                    row += (os.readlink(entry.path),)
                else:
                    row += (st.st_size, Path(entry.path).read_bytes(),
                            os.getxattr(entry.path, "user.chunk_list"), os.getxattr(entry.path, "user.compression"))
                out[rel] = row
    return out


def _random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


BASE = Layer([
    Dir("etc"), File("etc/os-release", b"ID=graft-test\n"), File("etc/shadow", b"root:*:1::::::\n", 0o600),
    Dir("usr"), Dir("usr/bin"), File("usr/bin/tool", _random(300_000, 1), 0o755),
    Hardlink("usr/bin/tool-alias", "usr/bin/tool"), Symlink("usr/bin/sh", "tool"),
    Dir("usr/lib"), File("usr/lib/libc.so", b"A" * 4096), File("usr/lib/empty"),
    Dir("usr/share"), Dir("usr/share/doc"), File("usr/share/doc/README", b"docs" * 100),
    Dir("var"), Dir("var/cache"), File("var/cache/old", b"old"), Dir("opt"), Symlink("opt/abs", "/etc/os-release"),
])
UPPER = Layer([
    Whiteout("usr/share/doc"), Opaque("var/cache"), File("var/cache/new", b"new"),
    Dir("usr"), Dir("usr/lib"), File("usr/lib/libc.so", b"B" * 4096),  # same size and mtime, other content
    File("usr/bin/suid", b"#!/bin/sh\n", 0o4755), Hardlink("etc/tool-hardlink", "usr/bin/tool"),
    Dir("srv", 0o750), File("srv/data.bin", _random(200_000, 2)),
])


def test_a_flat_root_published_by_grafts_is_the_stream_and_directory_publishers_tree(
        repository, client, unique_ref, tmp_path, caplog):
    """Grafted: the same entries, bytes, modes, owners, mtimes and stored chunks as the streamed flat root
    of the same layers, the same tree as the directory publisher's; no graft marker shows."""
    grafted_ref, streamed_ref = unique_ref("grafted"), unique_ref("streamed")
    push_image(client, grafted_ref, ImageSpec(layers=[BASE, UPPER], cmd=["/usr/bin/tool"]))
    push_image(client, streamed_ref, ImageSpec(layers=[BASE, UPPER], cmd=["/usr/bin/sh"]))  # another config

    revision = CvmfsServer(repository).revision()
    with caplog.at_level(logging.INFO, logger="ducc"):
        Converter(client, publisher(repository, tmp_path / "staging")).convert(grafted_ref)
    # Both layers in one ingest; the flat root, the tag and the record in one transaction.
    assert CvmfsServer(repository).revision() == revision + 2, "the layers, then the flat root and the tag: 2 revisions"
    assert any("files grafted" in r.getMessage() for r in caplog.records)
    Converter(client, publisher(repository, tmp_path / "staging", StreamingPublisher)).convert(streamed_ref)

    mount = Path("/cvmfs") / repository
    grafted = published((mount / layout.tag_link(grafted_ref)).resolve())
    streamed = published((mount / layout.tag_link(streamed_ref)).resolve())
    assert not [rel for rel in grafted if ".cvmfsgraft-" in rel]
    # .singularity.d is made per conversion from the config (which differs here), all else from the layers.
    image = {rel: row for rel, row in grafted.items() if not rel.startswith(".singularity.d")}
    assert image == {rel: row for rel, row in streamed.items() if not rel.startswith(".singularity.d")}
    assert grafted["usr/lib/libc.so"][5] == b"B" * 4096
    assert grafted["usr/bin/suid"][0] == "-rwsr-xr-x"
    assert "usr/share/doc" not in grafted and "var/cache/old" not in grafted

    Converter(client, DirectoryPublisher(tmp_path / "dir")).convert(grafted_ref)
    flat = (tmp_path / "dir" / layout.tag_link(grafted_ref)).resolve()
    assert snapshot((mount / layout.tag_link(grafted_ref)).resolve()) == snapshot(flat)


def test_a_flat_root_on_layers_published_earlier_is_grafted_onto_them(repository, client, unique_ref, tmp_path, caplog):
    """Its base layer was published by an earlier conversion: the flat root copies it out of /cvmfs,
    and its files are still grafted, not sent to cvmfs_server again."""
    first, second = unique_ref("first"), unique_ref("second")
    push_image(client, first, ImageSpec(layers=[BASE]))
    push_image(client, second, ImageSpec(layers=[BASE, UPPER]))
    Converter(client, publisher(repository, tmp_path / "staging")).convert(first)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ducc"):
        Converter(client, publisher(repository, tmp_path / "staging")).convert(second)
    [line] = [r.getMessage() for r in caplog.records if "files grafted" in r.getMessage()]
    # Those over a page: usr/bin/tool, usr/bin/tool-alias, etc/tool-hardlink (base), srv/data.bin (upper).
    assert line.split(": ", 1)[1].startswith("4 files grafted"), line
    mount = Path("/cvmfs") / repository
    tree = published((mount / layout.tag_link(second)).resolve())
    assert tree["etc/tool-hardlink"][5] == tree["usr/bin/tool"][5] == _random(300_000, 1)


def test_an_image_holding_a_graft_marker_name_is_streamed_and_keeps_that_file(
        repository, client, unique_ref, tmp_path, caplog):
    """A file named .cvmfsgraft-… in the image would be taken for a marker inside a transaction: such a
    flat root is streamed, and the file is published as the image has it."""
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[BASE, Layer([Dir("opt"), File("opt/.cvmfsgraft-abs", b"size=1\n")])]))
    with caplog.at_level(logging.INFO, logger="ducc"):
        Converter(client, publisher(repository, tmp_path / "staging")).convert(ref)
    assert not any("files grafted" in r.getMessage() for r in caplog.records)
    flat = (Path("/cvmfs") / repository / layout.tag_link(ref)).resolve()
    assert (flat / "opt" / ".cvmfsgraft-abs").read_bytes() == b"size=1\n"
    assert os.readlink(flat / "opt" / "abs") == "/etc/os-release"


def test_a_chunked_file_is_grafted_with_its_chunks_and_reads_back_whole(repository, tmp_path):
    """A file the repository stores in chunks (published by a transaction) grafted elsewhere: the same
    chunks, no whole-file hash (as publish leaves a chunked file), the same bytes."""
    data = _random(1_000_000, 3)
    cvmfs = publisher(repository, tmp_path / "staging")
    cvmfs.small_changes([Path("src/big")], [lambda root: (root / "src").mkdir() or (root / "src" / "big").write_bytes(data)])
    mount = Path("/cvmfs") / repository
    chunks = os.getxattr(mount / "src" / "big", "user.chunk_list")
    assert chunks.count(b"\n") > 2, "the repository should store the file in several chunks"

    staged = tmp_path / "copy"
    staged.mkdir()
    (staged / "big").write_bytes(data)
    os.utime(staged / "big", ns=(1_700_000_000 * 10**9,) * 2)
    layer = tmp_path / "layer"
    layer.mkdir()
    os.link(staged / "big", layer / "big")
    planned = graft.plan(staged, [graft.LayerCopy(layer, mount / "src")])
    assert planned is not None and planned.grafts == 1
    cvmfs.small_changes([Path("dst/x")], [lambda root: graft.write(planned, root / "dst", 0o755, 0)])

    assert (mount / "dst" / "big").read_bytes() == data
    assert os.getxattr(mount / "dst" / "big", "user.chunk_list") == chunks
    assert int((mount / "dst" / "big").stat().st_mtime) == 1_700_000_000
    with pytest.raises(OSError):
        os.getxattr(mount / "dst" / "big", "user.hash")
    assert sorted(os.listdir(mount / "dst")) == ["big"]
