"""The promises of the publishing protocols (ducc/publish/__init__.py), checked for every backend.

Each test takes a ``backend`` fixture parametrised by backend name: a new backend (the CVMFS one) adds
its name to ``BACKENDS`` and a branch to ``make_publisher``, and must pass the same suite unchanged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ducc import layout
from ducc.model.digest import Digest
from ducc.model.manifest import DEFAULT_PLATFORM, ImageConfig, Manifest, parse_manifest
from ducc.model.reference import Reference
from ducc.publish import Publisher
from ducc.publish.directory import DirectoryPublisher
from ducc.record import Record
from tests.support.cvmfs import attach
from tests.support.images import File, ImageSpec, Layer, build
from tests.support.processes import blocked_on_a_lock

BACKENDS = ["directory", "cvmfs"]


def make_publisher(name: str, root: Path) -> Publisher:
    if name == "directory":
        return DirectoryPublisher(root)
    if name == "cvmfs":  # the real cvmfs_server, a repository of its own (the cvmfs fixture)
        return attach(root.parent / "cvmfs-repo").publisher(root / "staging")
    raise AssertionError(f"no backend {name}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, root: Path) -> Callable[[], Publisher]:
    """A function giving a publisher of this backend over one repository (called again: another writer).

    ``cvmfs`` runs against the real ``cvmfs_server``, a repository of its own set up by the ``cvmfs``
    fixture at ``<tmp>/cvmfs-repo`` beside ``root``."""
    if request.param == "cvmfs":
        request.getfixturevalue("cvmfs")
    return lambda: make_publisher(request.param, root)


REF = Reference.parse("registry.example.org/team/app:v1")


def an_image(text: bytes = b"hello") -> tuple[Manifest, ImageConfig]:
    built = build(ImageSpec(layers=[Layer([File("hello", text)])]))
    manifest = parse_manifest(built.manifest)
    assert isinstance(manifest, Manifest)
    return manifest, ImageConfig.parse(built.config)


def record_of(manifest: Manifest, config: ImageConfig) -> Record:
    return Record.create(REF, DEFAULT_PLATFORM, manifest.digest, manifest, config,
                         converted_at="2026-01-01T00:00:00+00:00", converted_by="contract test")


def staged_tree(stage: Path, name: str, files: dict[str, bytes]) -> Path:
    tree = stage / name
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    return tree


def publish_all(publisher: Publisher, manifest: Manifest, config: ImageConfig) -> None:
    layer = manifest.layers[0].digest
    with publisher.reservations.directory() as stage:
        staged = staged_tree(stage, layer.hex, {"layerfs/hello": b"hello"})
        with publisher.transaction() as txn:
            txn.add_layer(layer, staged)
        flat = staged_tree(stage, "flat", {"hello": b"hello"})
        with publisher.transaction() as txn:
            txn.add_flat(config.digest, flat)
            txn.point_tag(REF, DEFAULT_PLATFORM, config.digest)
            txn.write_record(REF, DEFAULT_PLATFORM, record_of(manifest, config))


def test_nothing_is_visible_before_it_is_published_and_everything_after(backend):
    publisher = backend()
    manifest, config = an_image()
    layer = manifest.layers[0].digest
    with publisher.reservations.directory() as stage:
        staged = staged_tree(stage, layer.hex, {"layerfs/a/b/c": b"deep", "layerfs/hello": b"hello"})
        assert not publisher.has_layer(layer)
        with publisher.transaction() as txn:
            txn.add_layer(layer, staged)
        assert publisher.has_layer(layer)
        assert (publisher.layer_source(layer) / "a/b/c").read_bytes() == b"deep"
        flat = staged_tree(stage, "flat", {"hello": b"hello"})
        with publisher.transaction() as txn:
            txn.add_flat(config.digest, flat)
            assert publisher.read_record(REF, DEFAULT_PLATFORM) is None
            txn.point_tag(REF, DEFAULT_PLATFORM, config.digest)
            assert publisher.read_record(REF, DEFAULT_PLATFORM) is None  # the record comes last
            txn.write_record(REF, DEFAULT_PLATFORM, record_of(manifest, config))
    record = publisher.read_record(REF, DEFAULT_PLATFORM)
    assert record is not None and record.config_digest == config.digest and record.tag_digest == manifest.digest
    assert (publisher.public_path(REF, DEFAULT_PLATFORM) / "hello").read_bytes() == b"hello"
    assert [path for path, _ in publisher.published()] == [str(layout.tag_link(REF, DEFAULT_PLATFORM))]


def test_reads_neither_wait_for_a_writer_holding_the_repository_nor_change_anything(backend):
    """While another writer holds the repository (on CVMFS with a transaction open, its mount writable),
    every read answers at once from the published state and leaves the repository as it was."""
    publisher = backend()
    manifest, config = an_image()
    publish_all(publisher, manifest, config)
    layer = manifest.layers[0].digest
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        writer = backend()
        with writer.transaction():
            server = getattr(writer, "server", None)
            if server is not None:  # CVMFS: a transaction open under the writer, as while it grafts
                server.transaction()
            try:
                holding.set()
                release.wait(120)
            finally:
                if server is not None:
                    server.abort()

    answers: list[object] = []

    def read() -> None:
        reader = backend()
        answers.extend([reader.has_layer(layer), reader.has_flat(config.digest), reader.is_published(REF, DEFAULT_PLATFORM),
                        reader.read_record(REF, DEFAULT_PLATFORM), sorted(reader.layers()), sorted(reader.flats()),
                        [path for path, _ in reader.published()], reader.reservations.reserved()])

    writer = threading.Thread(target=hold)
    writer.start()
    try:
        assert holding.wait(120)
        before = sorted(str(p) for p in publisher.location.rglob("*") if layout.STAGING.name not in p.parts)
        reads = threading.Thread(target=read)
        reads.start()
        reads.join(60)
        assert not reads.is_alive(), "a read waited for the writer"
        after = sorted(str(p) for p in publisher.location.rglob("*") if layout.STAGING.name not in p.parts)
    finally:
        release.set()
        writer.join(120)
    assert answers == [True, True, True, record_of(manifest, config), [layer], [config.digest],
                       [str(layout.tag_link(REF, DEFAULT_PLATFORM))], frozenset()]
    assert after == before


def test_a_reader_never_sees_a_record_without_the_rest_of_it(backend):
    """A reader polling all along sees either no record or a complete one (config, details, manifest)."""
    publisher = backend()
    manifest, config = an_image()
    seen: list[Record | None] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(publisher.read_record(REF, DEFAULT_PLATFORM))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            publish_all(publisher, manifest, config)
    finally:
        stop.set()
        reader.join()
    found = [r for r in seen if r is not None]
    assert found, "the reader never saw the record"
    assert all(r.config is not None and r.details.get("config_digest") == str(config.digest) for r in found)


def test_publishing_again_changes_nothing_and_is_no_error(backend):
    publisher = backend()
    manifest, config = an_image()
    publish_all(publisher, manifest, config)
    before = sorted(str(p) for p in publisher.location.rglob("*") if layout.STAGING.name not in p.parts)
    publish_all(publisher, manifest, config)
    publish_all(backend(), manifest, config)  # another writer, same repository
    after = sorted(str(p) for p in publisher.location.rglob("*") if layout.STAGING.name not in p.parts)
    assert after == before
    assert (publisher.public_path(REF, DEFAULT_PLATFORM) / "hello").read_bytes() == b"hello"


def test_a_moved_tag_leads_to_the_new_flat_root_at_once(backend):
    publisher = backend()
    first, first_config = an_image(b"one")
    second, second_config = an_image(b"two")
    publish_all(publisher, first, first_config)
    with publisher.reservations.directory() as stage:
        flat = staged_tree(stage, "flat", {"hello": b"two"})
        with publisher.transaction() as txn:
            txn.add_flat(second_config.digest, flat)
            txn.point_tag(REF, DEFAULT_PLATFORM, second_config.digest)
            txn.write_record(REF, DEFAULT_PLATFORM, record_of(second, second_config))
    assert (publisher.public_path(REF, DEFAULT_PLATFORM) / "hello").read_bytes() == b"two"
    assert publisher.has_flat(first_config.digest)  # the old target stays for running jobs (gc decides later)
    record = publisher.read_record(REF, DEFAULT_PLATFORM)
    assert record is not None and record.config_digest == second_config.digest


CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from tests.integration.test_publisher_contract import make_publisher
publisher = make_publisher(sys.argv[1], Path(sys.argv[2]))
with publisher.reservations.directory() as stage:
    tree = stage / "half" / "layerfs"
    tree.mkdir(parents=True)
    (tree / "data").write_bytes(b"x" * 100000)
    print(stage, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_killed_writer_left_in_staging_is_swept_by_the_next_and_never_visible(backend, request, root):
    name = request.node.callspec.params["backend"]
    project = Path(__file__).resolve().parents[2]
    crashed = subprocess.run([sys.executable, "-c", CRASHING_WRITER, name, str(root), str(project)],
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    debris = Path(crashed.stdout.strip())
    assert debris.exists()
    publisher = backend()
    assert list(publisher.published()) == []
    manifest, config = an_image()
    publish_all(publisher, manifest, config)
    assert not debris.exists()
    assert not publisher.has_layer(Digest.of(b"half"))
    assert [p for p in publisher.published()] != []


# -- what garbage collection needs: enumeration, removal, reservations, its state -------------------


def test_every_layer_and_flat_present_is_listed_with_its_size(backend):
    publisher = backend()
    assert list(publisher.layers()) == [] and list(publisher.flats()) == []
    manifest, config = an_image()
    publish_all(publisher, manifest, config)
    layer = manifest.layers[0].digest
    assert list(publisher.layers()) == [layer]
    assert list(publisher.flats()) == [config.digest]
    # layerfs/ and layerfs/hello (+ the catalog marker); the bytes are the file's, markers are empty
    assert publisher.layer_size(layer).bytes == len(b"hello") and publisher.layer_size(layer).entries >= 2
    assert publisher.flat_size(config.digest).bytes == len(b"hello")


def test_the_record_of_a_published_path_is_read_from_that_path(backend):
    publisher = backend()
    manifest, config = an_image()
    publish_all(publisher, manifest, config)
    [(path, _)] = list(publisher.published())
    record = publisher.read_record_at(path)
    assert record is not None and record.layers == (manifest.layers[0].digest,)
    assert publisher.read_record_at("registry.example.org/team/other:v1") is None


def test_removed_layers_and_flat_roots_are_gone_whole_and_removing_again_is_no_error(backend):
    publisher = backend()
    manifest, config = an_image()
    publish_all(publisher, manifest, config)
    layer = manifest.layers[0].digest
    with publisher.transaction() as txn:
        txn.remove_tag(REF, DEFAULT_PLATFORM)
        txn.remove_flat(config.digest)
        txn.remove_layer(layer)
    assert not publisher.has_layer(layer) and not publisher.has_flat(config.digest)
    assert list(publisher.layers()) == [] and list(publisher.flats()) == []
    assert not (publisher.location / layout.layer_dir(layer)).exists()
    with publisher.transaction() as txn:
        txn.remove_flat(config.digest)
        txn.remove_layer(layer)
        txn.remove_tag(REF, DEFAULT_PLATFORM)
    publish_all(publisher, manifest, config)  # and it can be published again
    assert (publisher.public_path(REF, DEFAULT_PLATFORM) / "hello").read_bytes() == b"hello"


def test_an_unpublished_tag_loses_its_link_and_record_together_and_keeps_its_flat(backend):
    publisher = backend()
    # What the repository held before (a new CVMFS repository has mkfs's ``new_repository`` greeting).
    before = {p.name for p in publisher.location.iterdir()} if publisher.location.is_dir() else set()
    manifest, config = an_image()
    publish_all(publisher, manifest, config)
    with publisher.transaction() as txn:
        txn.remove_tag(REF, DEFAULT_PLATFORM)
        txn.remove_tag(Reference.parse("registry.example.org/team/never:v1"), DEFAULT_PLATFORM)
    assert publisher.read_record(REF, DEFAULT_PLATFORM) is None
    assert not publisher.public_path(REF, DEFAULT_PLATFORM).is_symlink()
    assert list(publisher.published()) == []
    assert publisher.has_flat(config.digest) and publisher.has_layer(manifest.layers[0].digest)
    # Nothing of the image's paths is left: empty directories go with the link and the record.
    public = [p for p in publisher.location.iterdir() if layout.is_public(p.name) and p.name not in before]
    assert public == [] and not any((publisher.location / layout.METADATA).rglob("*"))


def test_the_gc_state_is_read_back_as_written(backend):
    publisher = backend()
    assert publisher.gc_state.read_gc_state() is None
    with publisher.transaction():
        publisher.gc_state.write_gc_state(b'{"first": 1}')
    with publisher.transaction():
        publisher.gc_state.write_gc_state(b'{"second": 2}')
    assert publisher.gc_state.read_gc_state() == b'{"second": 2}'
    assert backend().gc_state.read_gc_state() == b'{"second": 2}'  # another writer of the same repository


def test_reservations_last_as_long_as_their_staging_and_wait_for_a_sweep(backend):
    publisher = backend()
    manifest, config = an_image()
    layer = manifest.layers[0].digest
    with publisher.reservations.directory() as stage:
        publisher.reservations.reserve(stage, [layer])
        publisher.reservations.reserve(stage, [config.digest])
        assert publisher.reservations.reserved() == {layer, config.digest}
        other = backend()
        assert other.reservations.reserved() == {layer, config.digest}  # any writer of the repository sees them
        late = Digest.of(b"late")
        reserved_later = threading.Event()
        waiter = threading.Thread(target=lambda: (publisher.reservations.reserve(stage, [late]), reserved_later.set()))
        with other.transaction(), other.reservations.frozen() as reserved:
            assert reserved == {layer, config.digest}
            # A reservation made while the reservations are frozen waits for the block's end.
            waiter.start()
            deadline = time.monotonic() + 30
            while not blocked_on_a_lock(os.getpid()):  # the waiter has reached the frozen reservations' lock
                assert waiter.is_alive() and time.monotonic() < deadline, "the reservation neither waited nor ended"
                time.sleep(0.01)
            assert not reserved_later.is_set()
            other.gc_state.write_gc_state(b"{}")
        waiter.join(30)
        assert reserved_later.is_set() and publisher.reservations.reserved() == {layer, config.digest, late}
    assert publisher.reservations.reserved() == frozenset()


CRASHING_REMOVER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from ducc.model.digest import Digest
from tests.integration.test_publisher_contract import make_publisher
publisher = make_publisher(sys.argv[1], Path(sys.argv[2]))
with publisher.transaction() as txn:
    txn.remove_flat(Digest.parse(sys.argv[4]))
    print("removing", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_remover_leaves_the_tree_whole_or_gone_and_the_next_writer_finishes(backend, request, root):
    name = request.node.callspec.params["backend"]
    publisher = backend()
    manifest, config = an_image()
    publish_all(publisher, manifest, config)
    with publisher.reservations.directory() as stage:
        big = staged_tree(stage, "flat", {f"d{i}/f{j}": b"x" * 100 for i in range(20) for j in range(50)})
        other = Digest.of(b"other flat")
        with publisher.transaction() as txn:
            txn.add_flat(other, big)
    project = Path(__file__).resolve().parents[2]
    crashed = subprocess.run([sys.executable, "-c", CRASHING_REMOVER, name, str(root), str(project), str(other)],
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    flat = publisher.flat_path(other)
    if flat.exists():  # not removed yet (CVMFS removes at the end of the transaction): whole
        assert publisher.flat_size(other).entries == 20 * 51 + 1
    with publisher.transaction() as txn:
        txn.remove_flat(other)
    assert not flat.exists()
    assert (publisher.public_path(REF, DEFAULT_PLATFORM) / "hello").read_bytes() == b"hello"
    trash = publisher.location / layout.TRASH
    assert not trash.exists() or [p for p in trash.iterdir() if p.suffix != ".lock"] == []
