"""The Publisher protocol's promises (ducc/publish/__init__.py), checked for every backend.

Each test takes a ``backend`` fixture parametrised by backend name: a new backend (the CVMFS one) adds
its name to ``BACKENDS`` and a branch to ``make_publisher``, and must pass the same suite unchanged.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
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

BACKENDS = ["directory", "cvmfs"]


def make_publisher(name: str, root: Path) -> Publisher:
    if name == "directory":
        return DirectoryPublisher(root)
    if name == "cvmfs":  # through the cvmfs_server stand-in (the real command cannot be installed here)
        return attach(root.parent / "cvmfs-repo").publisher(root / "staging")
    raise AssertionError(f"no backend {name}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, root: Path) -> Callable[[], Publisher]:
    """A function giving a publisher of this backend over one repository (called again: another writer).

    ``cvmfs`` runs against the stand-in ``cvmfs_server`` of tests/support (the real one cannot be
    installed on these machines), set up at ``<tmp>/cvmfs-repo`` beside ``root``."""
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
    with publisher.staging() as stage:
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
    with publisher.staging() as stage:
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
    with publisher.staging() as stage:
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
with publisher.staging() as stage:
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
