"""Images whose trees are built to break whatever walks them: thousands of nested directories, paths far
beyond PATH_MAX. A few-KB image of that kind is refused in one line with a permanent error naming the limit,
nothing of it is published, and the root stays fully usable: the next conversion, ``gc --grace 0`` and the
conversion after it succeed, with nothing left in staging or the trash. With the limits raised, such a tree
is published, flattened, measured and deleted like any other; debris deeper than PATH_MAX left by an
earlier run is swept; debris that cannot be deleted is left aside and never fails a writer.

Real images from the real registry, the real ``ducc`` command as a process; the CVMFS side through the
``cvmfs`` fixture."""

from __future__ import annotations

import io
import logging
import os
import resource
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from ducc import layout
from ducc.convert import Converter
from ducc.model.reference import Reference
from ducc.publish.directory import DirectoryPublisher
from ducc.publish.tarstream import write_tree
from ducc.registry.client import RegistryClient
from ducc.tree import Event, TreeSize, measure, open_dir, remove_tree, walk
from ducc.unpack.flatten import flatten
from tests.support.images import Dir, File, Hardlink, ImageSpec, Layer, Whiteout, push_image
from tests.support.mounts import tmpfs
from tests.support.service import ducc_cli

PATH_MAX = os.pathconf("/", "PC_PATH_MAX")


@pytest.fixture(autouse=True)
def _deep_trees_removed(tmp_path: Path):
    """Whatever a test leaves under its directory goes with ducc's own remover once every other fixture
    (the CVMFS repository's mounts too) is torn down: pytest's recursive clean-up of old test directories
    cannot delete trees this deep, on this machine or the next test session."""
    yield
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    if any(f" {tmp_path}/" in line for line in mounts):
        return  # something is still mounted here: never delete through a mount
    for entry in tmp_path.iterdir():
        remove_tree(entry)


def deep_layer(levels: int, name: str = "a") -> Layer:
    """``levels`` nested directories ``name/name/...`` with a file at the bottom."""
    paths = ["/".join([name] * i) for i in range(1, levels + 1)]
    return Layer([Dir(p) for p in paths] + [File(paths[-1] + "/leaf", b"at the bottom\n")])


def ducc(*args: str, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DUCC_")}
    return ducc_cli("-q", *args, env={**inherited, "DUCC_ROOT": str(root), "DUCC_CACHE_DIR": "off", **env},
                    timeout=600)


def children_rss() -> int:
    """The largest resident size (MiB) of the processes this test session has run and waited for."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >> 10


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def leftovers(directory: Path) -> list[str]:
    """Directories (debris, trash) under a staging or trash root."""
    return sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.exists() else []


def build_deep(top: Path, levels: int, name: str = "d" * 9, mode: int = 0o555) -> None:
    """``levels`` nested directories under ``top`` built from descriptors (the full path may be far beyond
    PATH_MAX), read-only like a published layer's."""
    top.mkdir(parents=True)
    fd = open_dir(top)
    for _ in range(levels):
        os.mkdir(name, 0o755, dir_fd=fd)
        child = open_dir(name, fd)
        os.close(fd)
        fd = child
    leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(leaf, b"deep\n")
    os.close(leaf)
    os.chmod(fd, mode)
    os.close(fd)


def read_at_depth(top: Path, names: list[str]) -> bytes:
    """The file reached from ``top`` through ``names``, one directory descriptor at a time."""
    fd = open_dir(top)
    try:
        for name in names[:-1]:
            child = open_dir(name, fd)
            os.close(fd)
            fd = child
        leaf = os.open(names[-1], os.O_RDONLY, dir_fd=fd)
        with os.fdopen(leaf, "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def still_usable(client: RegistryClient, ref: Reference, root: Path) -> None:
    """A conversion, a moved tag, ``gc --grace 0`` that deletes the old image, another conversion: all
    succeed and neither staging nor the trash keeps anything."""
    push_image(client, ref, ImageSpec(layers=[Layer([File("which", b"first")])]))
    assert ok(ducc("convert", str(ref), root=root)).startswith("published")
    push_image(client, ref, ImageSpec(layers=[Layer([File("which", b"second")])]))
    ok(ducc("convert", str(ref), root=root))
    swept = ok(ducc("gc", "--grace", "0", root=root))
    assert "deleted" in swept, swept
    push_image(client, ref, ImageSpec(layers=[Layer([File("which", b"third")])]))
    ok(ducc("convert", str(ref), root=root))
    assert (root / layout.tag_link(ref) / "which").read_bytes() == b"third"
    assert leftovers(root / layout.STAGING) == [] and leftovers(root / layout.TRASH) == []


# -- refused: the defaults ---------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [1100, 2100], ids=["1100-levels", "2100-levels-beyond-PATH_MAX"])
def test_a_layer_of_thousands_of_nested_directories_is_refused_in_one_line_and_the_root_stays_usable(
        client, unique_ref, root, levels):
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[deep_layer(levels)]))
    print(f"{levels} levels: a {len(built.blobs[built.layer_digests[0]])}-byte layer blob")
    started = time.monotonic()
    done = ducc("convert", str(ref), root=root)
    print(f"refused in {time.monotonic() - started:.1f} s, ducc processes' peak RSS so far {children_rss()} MiB")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.splitlines()
    shown = "/".join(["a"] * 513)
    assert line == (f"ducc: {ref}: layer {built.layer_digests[0]} refused: more than DUCC_MAX_PATH_DEPTH=512 levels "
                    f"of directories (513 at {shown[:60]!r}...(1025 characters)...{shown[-40:]!r})")
    assert not (root / layout.tag_link(ref)).exists() and not (root / layout.metadata_dir(ref)).exists()
    assert not (root / layout.layer_dir(built.layer_digests[0])).exists()
    assert not (root / layout.flat_dir(built.config_digest)).exists()
    assert leftovers(root / layout.STAGING) == []
    still_usable(client, unique_ref("next"), root)


def test_a_path_longer_than_the_limit_is_refused_naming_the_limit(client, unique_ref, root):
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[deep_layer(300, "abcdefghijkl")]))
    done = ducc("convert", str(ref), root=root)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"ducc: {ref}: layer {built.layer_digests[0]} refused: a path longer than "
                           "DUCC_MAX_PATH_BYTES=3072 bytes (3080 bytes: 'abcdefghijkl/abcdefghijkl/")
    assert not (root / layout.layer_dir(built.layer_digests[0])).exists()
    assert leftovers(root / layout.STAGING) == []


def test_the_path_limits_are_settings_that_must_be_positive_numbers(root):
    for name in ("DUCC_MAX_PATH_DEPTH", "DUCC_MAX_PATH_BYTES"):
        done = ducc("list", root=root, **{name: "0"})
        assert done.returncode == 2 and done.stderr.splitlines() == [f"ducc: {name} must be at least 1, not 0"]


# -- allowed: raised limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [1100, 2100], ids=["1100-levels", "2100-levels-beyond-PATH_MAX"])
def test_with_raised_limits_a_deep_image_is_published_and_gc_deletes_it_leaving_the_trash_empty(
        client, unique_ref, root, levels):
    ref = unique_ref()
    bottom = "/".join(["a"] * levels)
    lower = Layer(deep_layer(levels).entries + [Hardlink(f"{bottom}/twin", f"{bottom}/leaf")])
    upper = Layer([Dir("a"), Dir("a/a"), Whiteout("a/a/gone"), File("a/a/top", b"upper\n")])
    built = push_image(client, ref, ImageSpec(layers=[Layer([File("a/a/gone", b"x")]), lower, upper]))
    raised = {"DUCC_MAX_PATH_DEPTH": "4000", "DUCC_MAX_PATH_BYTES": "8000"}
    started = time.monotonic()
    ok(ducc("convert", str(ref), root=root, **raised))
    print(f"{levels} levels published (unpack, flatten, publish) in {time.monotonic() - started:.1f} s, "
          f"ducc processes' peak RSS so far {children_rss()} MiB")
    flat = root / layout.flat_dir(built.config_digest)
    assert read_at_depth(flat, ["a"] * levels + ["leaf"]) == b"at the bottom\n"
    assert read_at_depth(flat, ["a"] * levels + ["twin"]) == b"at the bottom\n"
    assert read_at_depth(flat, ["a", "a", "top"]) == b"upper\n"
    assert not (flat / "a" / "a" / "gone").exists() and not (flat / "a" / "a" / ".wh.gone").exists()
    assert measure(flat / "a") == TreeSize(levels + 2, 20)  # the directories below 'a', leaf, twin and 'top'

    ok(ducc("rm", str(ref), root=root))
    started = time.monotonic()
    swept = ok(ducc("gc", "--grace", "0", root=root))
    print(f"gc of {levels} levels in {time.monotonic() - started:.1f} s")
    assert f"flat  {built.config_digest}" in swept and f"layer {built.layer_digests[1]}" in swept, swept
    assert not flat.exists() and not (root / layout.layer_dir(built.layer_digests[1])).exists()
    assert leftovers(root / layout.TRASH) == [] and leftovers(root / layout.STAGING) == []
    still_usable(client, unique_ref("next"), root)


# -- what an earlier run left behind ---------------------------------------------------------------------


def test_debris_deeper_than_path_max_left_in_staging_and_trash_is_swept_by_the_next_writer(client, unique_ref, root):
    levels = 2100
    staging, trash = root / layout.STAGING, root / layout.TRASH
    build_deep(staging / "1234-0123456789ab" / "0123" / "layerfs", levels)
    build_deep(trash / "99-ba9876543210" / "flat-0123", levels)
    assert len(str(staging)) + levels * 10 > PATH_MAX
    started = time.monotonic()
    still_usable(client, unique_ref(), root)
    print(f"two {levels}-level trees swept, with three conversions and a gc, in {time.monotonic() - started:.1f} s")


def test_debris_that_cannot_be_deleted_is_left_aside_and_the_conversion_succeeds(client, unique_ref, root, caplog):
    debris = root / layout.STAGING / "1234-0123456789ab"
    build_deep(debris, 3, mode=0o755)
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([File("f", b"fine")])]))
    with tmpfs(debris / "busy", "size=1m", "a mount point that cannot be removed"):
        with caplog.at_level(logging.WARNING, logger="ducc"):
            Converter(client, DirectoryPublisher(root)).convert(ref)
        assert (root / layout.tag_link(ref) / "f").read_bytes() == b"fine"
        warnings = [r.getMessage() for r in caplog.records if "leaving it aside" in r.getMessage()]
        assert warnings and all(str(debris) in w for w in warnings), warnings
        assert debris.is_dir()
    assert DirectoryPublisher(root).reservations.sweep() == 1  # unmounted: deletable again


# -- the walker itself, on trees far beyond PATH_MAX ------------------------------------------------------


def walked_far_beyond_path_max(tmp_path: Path, levels: int = 3000) -> dict[str, float]:
    """Measure, flatten, stream and delete trees ``levels`` directories deep (and half as deep), checking
    what each gives; returns the seconds each took."""
    build_deep(tmp_path / "lower", levels)
    build_deep(tmp_path / "upper", levels // 2, mode=0o755)
    names = ["d" * 9] * levels + ["leaf"]
    figures = {}

    started = time.monotonic()
    assert measure(tmp_path / "lower") == TreeSize(levels + 1, 5)
    figures["measure"] = time.monotonic() - started

    (tmp_path / "flat").mkdir()
    started = time.monotonic()
    flatten([tmp_path / "lower", tmp_path / "upper"], tmp_path / "flat")
    figures["flatten"] = time.monotonic() - started
    assert read_at_depth(tmp_path / "flat", names) == b"deep\n"
    assert read_at_depth(tmp_path / "flat", names[: levels // 2] + ["leaf"]) == b"deep\n"

    started = time.monotonic()
    stream = io.BytesIO()
    report = write_tree(tmp_path / "flat", stream)
    figures["stream"] = time.monotonic() - started
    assert report.entries == levels + 2
    stream.seek(0)
    with tarfile.open(fileobj=stream) as tar:
        deepest = max(tar.getmembers(), key=lambda m: len(m.name))
    assert deepest.name == "/".join(names) and deepest.size == 5

    depth = 0
    for visit in walk(tmp_path / "flat"):
        if visit.event is Event.ENTER:
            depth = max(depth, visit.rel.count("/") + 1 if visit.rel else 0)
    assert depth == levels

    started = time.monotonic()
    for name in ("flat", "lower", "upper"):
        remove_tree(tmp_path / name)
    figures["delete"] = time.monotonic() - started
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    print(f"{levels} levels: " + ", ".join(f"{k} {v:.2f} s" for k, v in figures.items()) + f"; peak RSS {rss} MiB")
    return figures


def test_trees_far_beyond_path_max_are_measured_flattened_streamed_and_deleted(tmp_path):
    walked_far_beyond_path_max(tmp_path)


@pytest.mark.bench
def test_timing_of_the_walker_on_trees_far_beyond_path_max(tmp_path):
    assert sum(walked_far_beyond_path_max(tmp_path).values()) < 60


# -- the CVMFS publisher ----------------------------------------------------------------------------------


def cvmfs_ducc(cvmfs, tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = cvmfs.ducc_env(tmp_path / "state", **extra)
    env.pop("DUCC_GC_GRACE", None)
    return ducc_cli("-q", *args, "--cvmfs-repo", cvmfs.repository, env=env, cwd=tmp_path, timeout=600)


def test_on_cvmfs_a_deep_layer_is_refused_before_anything_is_ingested_and_the_repository_stays_usable(
        cvmfs, client, unique_ref, tmp_path):
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[deep_layer(2100)]))
    before = len(cvmfs.publishing_calls())
    done = cvmfs_ducc(cvmfs, tmp_path, "convert", str(ref))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"ducc: {ref}: layer {built.layer_digests[0]} refused: more than DUCC_MAX_PATH_DEPTH=512 ")
    assert len(cvmfs.publishing_calls()) == before and not cvmfs.in_transaction()
    staging = tmp_path / "state" / "cvmfs-staging"
    assert [p for p in staging.rglob("*") if p.is_dir() and p.parent != staging] == []

    other = unique_ref("next")
    for which in (b"first", b"second"):
        push_image(client, other, ImageSpec(layers=[Layer([File("which", which)])]))
        assert cvmfs_ducc(cvmfs, tmp_path, "convert", str(other)).returncode == 0
    swept = cvmfs_ducc(cvmfs, tmp_path, "gc", "--grace", "0")
    assert swept.returncode == 0 and "deleted" in swept.stdout, swept.stdout + swept.stderr
    push_image(client, other, ImageSpec(layers=[Layer([File("which", b"third")])]))
    assert cvmfs_ducc(cvmfs, tmp_path, "convert", str(other)).returncode == 0
    assert (cvmfs.client / layout.tag_link(other) / "which").read_bytes() == b"third"
    assert not cvmfs.in_transaction()


def test_on_cvmfs_with_raised_limits_a_deep_image_streams_into_ingest_and_gc_deletes_it(
        cvmfs, client, unique_ref, tmp_path):
    levels = 1100
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[deep_layer(levels)]))
    raised = {"DUCC_MAX_PATH_DEPTH": "4000", "DUCC_MAX_PATH_BYTES": "3000"}
    started = time.monotonic()
    done = cvmfs_ducc(cvmfs, tmp_path, "convert", str(ref), **raised)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    ingests = sum(c.seconds or 0 for c in cvmfs.calls("ingest"))
    print(f"{levels} levels published on CVMFS in {time.monotonic() - started:.1f} s, {ingests:.1f} s of it in ingest")
    flat = cvmfs.client / layout.flat_dir(built.config_digest)
    assert read_at_depth(flat, ["a"] * levels + ["leaf"]) == b"at the bottom\n"
    assert cvmfs_ducc(cvmfs, tmp_path, "rm", str(ref)).returncode == 0
    swept = cvmfs_ducc(cvmfs, tmp_path, "gc", "--grace", "0")
    assert swept.returncode == 0 and f"flat  {built.config_digest}" in swept.stdout, swept.stdout + swept.stderr
    assert not (cvmfs.client / layout.flat_dir(built.config_digest)).exists()
    assert not (cvmfs.client / layout.layer_dir(built.layer_digests[0])).exists()
    assert not cvmfs.in_transaction()

