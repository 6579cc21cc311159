"""Garbage collection and ``ducc rm`` on a directory root, with real images in a real registry, through the
real ``ducc`` command (a process of its own), and converted images run as an unprivileged user with ``ch-run``."""

from __future__ import annotations

import calendar
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ducc import layout
from ducc.convert import Converter
from ducc.errors import TreeMissing
from ducc.gc import GcState, Item, Kind, collect
from ducc.model.manifest import DEFAULT_PLATFORM
from ducc.publish.directory import DirectoryPublisher
from tests.integration.test_runtimes import PROGRAMS, run_in, world_root  # noqa: F401  (a fixture)
from tests.support.images import Dir, File, ImageSpec, Layer, host_programs_layer, push_image
from tests.support.processes import blocked_on_a_lock
from tests.support.trees import snapshot

DAY = 86400


@pytest.fixture(scope="module")
def programs() -> Layer:
    accounts = [Dir("etc"), File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"), File("etc/group", b"root:x:0:\n")]
    return Layer(accounts + host_programs_layer(PROGRAMS).entries)


def ducc(*args: str, root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k != "DUCC_GC_GRACE"}
    full_env = {**inherited, "DUCC_ROOT": str(root), "DUCC_CACHE_DIR": "off", "DUCC_RETRY_ATTEMPTS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ducc", *args], env=full_env, capture_output=True, text=True,
                          timeout=600)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def trees(root: Path) -> tuple[set[str], set[str]]:
    publisher = DirectoryPublisher(root)
    return {d.hex for d in publisher.layers()}, {d.hex for d in publisher.flats()}


def utc(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S UTC"))


def test_a_moved_tag_leaves_its_old_image_for_the_grace_and_gc_then_keeps_exactly_what_is_used(
    client, unique_ref, world_root, programs  # noqa: F811
):
    root = world_root
    ref = unique_ref("v")
    shared = Layer([Dir("srv"), File("srv/shared", b"in both images\n")])
    old = push_image(client, ref, ImageSpec(layers=[programs, shared, Layer([File("srv/which", b"old\n")])]))
    ok(ducc("convert", str(ref), root=root))
    new = push_image(client, ref, ImageSpec(layers=[programs, shared, Layer([File("srv/which", b"new\n")])]))
    ok(ducc("convert", str(ref), root=root))
    only_old = old.layer_digests[2]
    kept_layers = {d.hex for d in new.layer_digests}
    assert trees(root) == (kept_layers | {only_old.hex}, {old.config_digest.hex, new.config_digest.hex})

    # The default grace (7 days): nothing goes, and the plan says when it will.
    started = time.time()
    waiting = ok(ducc("gc", root=root))
    assert trees(root) == (kept_layers | {only_old.hex}, {old.config_digest.hex, new.config_digest.hex})
    until = dict(re.findall(r"waiting  (?:flat |layer) sha256:([0-9a-f]{64})  until (\S+ \S+ UTC)", waiting))
    assert set(until) == {old.config_digest.hex, only_old.hex}, waiting
    assert all(started + 7 * DAY - 60 <= utc(t) <= time.time() + 7 * DAY for t in until.values())
    assert "deleted 0 flat roots and 0 layers" in waiting and "2 waiting" in waiting

    # --dry-run prints what --grace 0 would do and changes nothing, byte for byte.
    before = snapshot(root)
    plan = ok(ducc("gc", "--grace", "0", "--dry-run", root=root))
    assert snapshot(root) == before
    assert f"would delete  flat  {old.config_digest}" in plan and f"would delete  layer {only_old}" in plan
    assert "would delete 1 flat root and 1 layer" in plan

    swept = ok(ducc("gc", "--grace", "0", root=root))
    assert f"deleted  flat  {old.config_digest}" in swept and f"deleted  layer {only_old}" in swept
    freed = re.search(r"deleted 1 flat root and 1 layer \((\d+) entries, (\d+) bytes", swept)
    assert freed and int(freed.group(1)) > 0 and int(freed.group(2)) > 0, swept
    assert trees(root) == (kept_layers, {new.config_digest.hex})
    assert not (root / layout.TRASH).exists() or not [p for p in (root / layout.TRASH).iterdir() if p.is_dir()]

    # The current image still runs, shared layers and all.
    flat = (root / layout.tag_link(ref)).resolve()
    done = run_in("ch-run", flat, "/.singularity.d/actions/exec", "/bin/sh", "-c", "cat /srv/shared /srv/which")
    assert (done.returncode, done.stdout) == (0, "in both images\nnew\n"), done.stderr

    # rm, then gc --grace 0: nothing of the image is left.
    removed = ducc("rm", str(ref), root=root)
    assert removed.returncode == 0 and removed.stdout.startswith("unpublished\t"), removed.stderr
    assert not (root / layout.tag_link(ref)).is_symlink() and not (root / layout.metadata_dir(ref)).exists()
    assert trees(root) == (kept_layers, {new.config_digest.hex})  # until gc
    ok(ducc("gc", "--grace", "0", root=root))
    assert trees(root) == (set(), set())
    assert [p.name for p in root.iterdir() if layout.is_public(p.name)] == []
    assert not any((root / layout.METADATA).rglob("*"))
    again = ducc("rm", str(ref), root=root)
    assert again.returncode == 1 and again.stdout.startswith("not published\t")


def test_rm_refuses_a_bad_reference_before_unpublishing_anything(client, unique_ref, root):  # exit 2: a usage error
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([File("a", b"a")])]))
    ok(ducc("convert", str(ref), root=root))
    done = ducc("rm", str(ref), "Not A Reference", root=root)
    assert done.returncode == 2 and "Not A Reference" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (root / layout.tag_link(ref)).is_symlink()


def test_a_bad_grace_is_one_line_and_changes_nothing(root):
    done = ducc("gc", "--grace", "7 days", root=root)
    assert done.returncode == 2 and "'7 days' is not a duration" in done.stderr
    env_done = ducc("gc", root=root, env={"DUCC_GC_GRACE": "soon"})
    assert env_done.returncode == 2 and "DUCC_GC_GRACE" in env_done.stderr


def test_the_grace_is_counted_from_when_gc_first_saw_a_tree_unreferenced_not_from_its_files(client, unique_ref, root):
    ref = unique_ref()
    old = push_image(client, ref, ImageSpec(layers=[Layer([File("a", b"old")])]))
    ok(ducc("convert", str(ref), root=root))
    push_image(client, ref, ImageSpec(layers=[Layer([File("a", b"new")])]))
    ok(ducc("convert", str(ref), root=root))
    ancient = time.time() - 365 * DAY
    for path in [root / layout.flat_dir(old.config_digest), *(root / layout.flat_dir(old.config_digest)).rglob("*")]:
        os.utime(path, (ancient, ancient), follow_symlinks=False)
    flat = Item(Kind.FLAT, old.config_digest)
    before = time.time()
    first = ok(ducc("gc", "--grace", "3s", root=root))
    assert "deleted 0 flat roots" in first  # a year-old mtime does not count: first seen now
    publisher = DirectoryPublisher(root)
    since = GcState.parse(publisher.gc_state.read_gc_state()).unreferenced[flat]
    assert before <= since <= time.time()
    # the later runs read the clock ducc is given: the grace ends at exactly since + 3 s, with no waiting
    assert collect(publisher, grace=3, clock=lambda: since + 2.9).deleted == ()
    assert flat in collect(publisher, grace=3, clock=lambda: since + 3).deleted
    assert not (root / layout.flat_dir(old.config_digest)).exists()


# -- beside conversions ------------------------------------------------------------------------------


class Sweep:
    """``ducc gc --grace 0`` started while the test holds the repository: it plans, then waits for it."""

    def __init__(self, root: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "ducc", "-v", "gc", "--grace", "0", "--root", str(root)],
                                        env={**os.environ, "DUCC_CACHE_DIR": "off"}, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.reader = threading.Thread(target=lambda: self.log.extend(self.process.stderr or []), daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 120
        while not any("taking the repository" in line for line in self.log):
            assert time.monotonic() < deadline and self.process.poll() is None, "".join(self.log)
            time.sleep(0.05)

    def finish(self) -> str:
        out, _ = self.process.communicate(timeout=300)
        self.reader.join(10)
        assert self.process.returncode == 0, "".join(self.log)
        return out


def in_thread(call) -> tuple[threading.Thread, dict[str, object]]:  # type: ignore[no-untyped-def]
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["done"] = call()
        except BaseException as exc:  # reported by the test
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def superseded(client, unique_ref, root: Path, layers: list[Layer]):  # type: ignore[no-untyped-def]
    """An image converted under a tag that then moved to another image: all of it is unreferenced."""
    ref = unique_ref("v")
    old = push_image(client, ref, ImageSpec(layers=layers))
    converter = Converter(client, DirectoryPublisher(root))
    converter.convert(ref)
    push_image(client, ref, ImageSpec(layers=[Layer([File("other", b"another image")])]))
    converter.convert(ref)
    return old


OLD_LAYERS = [Layer([File("a", b"old base")]), Layer([File("b", b"old top")])]


def test_a_sweep_that_started_earlier_never_takes_the_layers_a_conversion_reuses(client, unique_ref, root):
    """gc plans to delete an old image's layers and waits for the repository; meanwhile a conversion of
    another image made of those layers reserves and reuses them, and stays inside its flattening until
    the sweep has finished. The sweep keeps the layers (in use) and the conversion publishes a whole image."""
    old = superseded(client, unique_ref, root, OLD_LAYERS)
    reusing = unique_ref("reusing")
    push_image(client, reusing, ImageSpec(layers=OLD_LAYERS, env=["PATH=/bin", "ANOTHER=config"]))
    parked, go = threading.Event(), threading.Event()

    def park(flat: Path, config: object) -> None:
        parked.set()
        assert go.wait(300)

    holder = DirectoryPublisher(root)
    with holder.transaction():
        sweep = Sweep(root)
        conversion, result = in_thread(lambda: Converter(client, DirectoryPublisher(root), flat_hooks=[park]).convert(reusing))
        assert parked.wait(120), result
    out = sweep.finish()  # the conversion is still parked, holding nothing but its reservation
    go.set()
    conversion.join(120)
    assert "error" not in result, result
    for layer in old.layer_digests:
        assert f"in use   layer {layer}" in out and holder.has_layer(layer)
    assert f"deleted  flat  {old.config_digest}" in out  # not reserved by this conversion: it went
    record = holder.read_record(reusing, DEFAULT_PLATFORM)
    assert record is not None and all(holder.has_layer(d) for d in record.layers) and holder.has_flat(record.config_digest)
    assert (root / layout.tag_link(reusing) / "b").read_bytes() == b"old top"


def test_a_sweep_that_started_earlier_never_takes_the_flat_root_a_conversion_reuses(client, unique_ref, root):
    """The same image under another tag reuses the old flat root and layers; its conversion reserves them
    and reaches its final transaction while the sweep waits too. Whoever gets the repository first, the
    image published there is whole."""
    old = superseded(client, unique_ref, root, OLD_LAYERS)
    again = unique_ref("again")
    push_image(client, again, ImageSpec(layers=OLD_LAYERS))
    holder = DirectoryPublisher(root)
    with holder.transaction():
        sweep = Sweep(root)
        conversion, result = in_thread(lambda: Converter(client, DirectoryPublisher(root)).convert(again))
        deadline = time.monotonic() + 120
        while not blocked_on_a_lock(os.getpid()):  # reserved, everything found, waiting to publish
            assert time.monotonic() < deadline and conversion.is_alive(), result
            time.sleep(0.02)
        assert holder.reservations.reserved() >= {old.config_digest, *old.layer_digests}
    out = sweep.finish()
    conversion.join(120)
    assert "error" not in result, result
    record = holder.read_record(again, DEFAULT_PLATFORM)
    assert record is not None and record.config_digest == old.config_digest
    assert all(holder.has_layer(d) for d in record.layers) and holder.has_flat(record.config_digest)
    assert (root / layout.tag_link(again) / "b").read_bytes() == b"old top"
    assert "deleted 0 flat roots and 0 layers" in out


def test_a_layer_removed_under_a_conversion_fails_it_temporarily_and_the_retry_republishes(client, unique_ref, root):
    """The last safety net, for a sweep that cannot see the conversion's reservation (another publisher node):
    a flat hook removes a layer the conversion reuses; nothing is recorded, the retry publishes it again."""
    base = Layer([File("base", b"shared")])
    first = unique_ref("first")
    built = push_image(client, first, ImageSpec(layers=[base]))
    publisher = DirectoryPublisher(root)
    Converter(client, publisher).convert(first)
    second = unique_ref("second")
    push_image(client, second, ImageSpec(layers=[base, Layer([File("top", b"2")])]))
    removed: list[bool] = []

    def remove_base(flat: Path, config: object) -> None:
        if not removed:
            with DirectoryPublisher(root).transaction() as txn:  # not a gc: it ignores reservations
                txn.remove_layer(built.layer_digests[0])
            removed.append(True)

    with pytest.raises(TreeMissing) as error:
        Converter(client, publisher, flat_hooks=[remove_base]).convert(second)
    assert error.value.temporary and str(built.layer_digests[0]) in str(error.value)
    assert publisher.read_record(second, DEFAULT_PLATFORM) is None
    assert not (root / layout.tag_link(second)).is_symlink()
    Converter(client, publisher).convert(second)
    record = publisher.read_record(second, DEFAULT_PLATFORM)
    assert record is not None and all(publisher.has_layer(d) for d in record.layers)


def test_a_conversion_reserves_every_layer_and_its_flat_root_while_it_runs(client, unique_ref, root):
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[Layer([File("a", b"1")]), Layer([File("b", b"2")])]))
    publisher = DirectoryPublisher(root)
    seen: list[frozenset] = []
    Converter(client, publisher, flat_hooks=[lambda flat, config: seen.append(publisher.reservations.reserved())]).convert(ref)
    assert seen == [frozenset({*built.layer_digests, built.config_digest})]
    assert publisher.reservations.reserved() == frozenset()  # gone with its staging


# -- a sweep killed midway ---------------------------------------------------------------------------


def test_a_sweep_killed_midway_leaves_nothing_half_deleted_and_the_next_one_finishes(client, unique_ref, root):
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([File("keep", b"me")])]))
    publisher = DirectoryPublisher(root)
    Converter(client, publisher).convert(ref)
    image_before = snapshot((root / layout.tag_link(ref)).resolve())
    candidates = []
    with publisher.reservations.directory() as stage:
        for n in range(40):
            tree = stage / f"flat{n}"
            for d in range(20):
                (tree / f"d{d}").mkdir(parents=True)
                for f in range(60):
                    (tree / f"d{d}" / f"f{f}").write_bytes(b"%d" % f)
            digest = layout.digest_of_hex(f"{n:064x}")
            assert digest is not None
            with publisher.transaction() as txn:
                txn.add_flat(digest, tree)
            candidates.append(digest)
    whole = 20 * 61 + 1  # directories, files and the catalog marker

    gc = subprocess.Popen([sys.executable, "-m", "ducc", "gc", "--grace", "0", "--root", str(root)],
                          env={**os.environ, "DUCC_CACHE_DIR": "off"}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    trash = root / layout.TRASH
    deadline = time.monotonic() + 120
    while not (trash.is_dir() and any(any(p.iterdir()) for p in trash.iterdir() if p.is_dir())):
        assert gc.poll() is None and time.monotonic() < deadline, "gc finished before it could be killed"
        time.sleep(0.002)
    gc.send_signal(signal.SIGKILL)
    gc.wait(30)

    left = [d for d in candidates if publisher.has_flat(d)]
    assert all(publisher.flat_size(d).entries == whole for d in left)  # whole, or gone
    assert [d for d in trash.iterdir() if d.is_dir()]  # the killed sweep's trash is still there
    assert snapshot((root / layout.tag_link(ref)).resolve()) == image_before

    ok(ducc("gc", "--grace", "0", root=root))
    assert [d for d in candidates if publisher.has_flat(d)] == []
    assert not trash.exists() or [d for d in trash.iterdir() if d.is_dir()] == []
    assert snapshot((root / layout.tag_link(ref)).resolve()) == image_before
    assert (root / layout.tag_link(ref) / "keep").read_bytes() == b"me"
