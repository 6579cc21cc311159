"""Conversion end to end: idempotence, reuse, moved tags, multi-arch, blob faults and crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ducc import layout
from ducc.convert import Converter
from ducc.errors import DigestMismatch, NoMatchingPlatform, RegistryUnavailable
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish.directory import DirectoryPublisher
from tests.support.images import Dir, File, ImageSpec, Layer, push_image, push_index
from tests.support.proxy import via

BASE = Layer([Dir("etc"), File("etc/os-release", b"ID=base\n"), Dir("usr"), File("usr/big", os.urandom(300_000))])


def image(top: bytes = b"top") -> ImageSpec:
    return ImageSpec(layers=[BASE, Layer([File("app", top)])], cmd=["/app"])




def visible(root: Path) -> list[str]:
    """Everything a user could reach: public paths and records (not layers or staging)."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*")
        if not str(p.relative_to(root)).startswith((".layers", ".ducc-staging", ".flat"))
    )


def test_an_unchanged_tag_costs_one_manifest_head(client, unique_ref, proxy, root):
    ref = via(proxy, unique_ref())
    push_image(client, ref, image())
    converter = Converter(client, DirectoryPublisher(root))
    assert converter.convert(ref).state == "published"
    before = len(proxy.seen)
    again = converter.convert(ref)
    assert again.state == "unchanged"
    assert [(s.method, "/manifests/" in s.path) for s in proxy.seen[before:]] == [("HEAD", True)]


def test_a_moved_tag_is_reconverted_and_repointed_reusing_shared_layers(client, unique_ref, root):
    ref = unique_ref()
    first = push_image(client, ref, image(b"one"))
    converter = Converter(client, DirectoryPublisher(root))
    converter.convert(ref)
    link = root / layout.tag_link(ref)
    assert link.resolve().name == first.config_digest.hex
    second = push_image(client, ref, image(b"two"))
    result = converter.convert(ref)
    assert result.state == "published" and result.layers_reused == 1 and result.layers_unpacked == 1
    assert link.resolve().name == second.config_digest.hex
    assert (link / "app").read_bytes() == b"two"
    details = json.loads((root / layout.metadata_dir(ref) / layout.RECORD_DETAILS).read_text())
    assert details["tag_digest"] == str(second.digest)
    assert json.loads((root / layout.metadata_dir(ref) / "manifest.json").read_bytes()) == json.loads(second.manifest)


def test_the_same_image_under_two_tags_shares_one_flat_root(client, unique_ref, root):
    a, b = unique_ref("a"), unique_ref("b")
    built = push_image(client, a, image())
    client.push_manifest(Reference(b.registry, a.repository, "b"), built.manifest, built.manifest_media_type)
    converter = Converter(client, DirectoryPublisher(root))
    converter.convert(a)
    result = converter.convert(Reference(b.registry, a.repository, "b"))
    assert result.flat_reused and result.layers_unpacked == 0 and result.layers_reused == 2
    assert len([p for p in (root / ".flat").glob("*/*") if p.is_dir()]) == 1


def test_digest_references_are_published_by_digest(client, unique_ref, root):
    ref = unique_ref()
    built = push_image(client, ref, image())
    by_digest = Reference(ref.registry, ref.repository, None, built.digest)
    Converter(client, DirectoryPublisher(root)).convert(by_digest)
    assert (root / f"{ref.registry}/{ref.repository}@{built.digest}" / "app").read_bytes() == b"top"


def test_multi_arch_index_default_platform_and_others_under_multiarch(client, unique_ref, root):
    ref = unique_ref()
    amd = ImageSpec(layers=[Layer([File("arch", b"amd64")])])
    arm = ImageSpec(layers=[Layer([File("arch", b"arm64")])], architecture="arm64", variant="v8")
    from tests.support.images import build, push_built

    # Build attestations sit in indexes as unknown/unknown manifests: they must never be chosen.
    attest = build(ImageSpec(layers=[Layer([File("arch", b"attestation")])]))
    push_built(client, ref, attest, tag=False)
    attestation = {"mediaType": attest.manifest_media_type, "size": len(attest.manifest),
                   "digest": str(attest.digest), "platform": {"os": "unknown", "architecture": "unknown"}}
    push_index(client, ref, [amd, arm], extra=[attestation])
    converter = Converter(client, DirectoryPublisher(root))
    converter.convert(ref)
    converter.convert(ref, Platform.parse("linux/arm64"))
    assert (root / layout.tag_link(ref) / "arch").read_bytes() == b"amd64"
    assert (root / ".multiarch/arm64" / ref.registry / f"{ref.repository}:{ref.tag}" / "arch").read_bytes() == b"arm64"
    with pytest.raises(NoMatchingPlatform, match="s390x"):
        converter.convert(ref, Platform.parse("linux/s390x"))


def test_a_single_arch_image_of_another_architecture_is_not_published_as_amd64(client, unique_ref, root):
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([File("a", b"a")])], architecture="arm64"))
    with pytest.raises(NoMatchingPlatform, match="arm64"):
        Converter(client, DirectoryPublisher(root)).convert(ref)
    assert visible(root) == []


def test_a_truncated_blob_is_fetched_again(client, unique_ref, proxy, root):
    ref = via(proxy, unique_ref())
    built = push_image(client, ref, image())
    big = built.layer_digests[0]
    proxy.add("truncate", f"/blobs/{big}", times=1, keep_bytes=1000)
    result = Converter(client, DirectoryPublisher(root)).convert(ref)
    assert result.state == "published"
    assert len(proxy.requests("GET", f"/blobs/{big}")) == 2


def test_a_blob_that_keeps_breaking_off_fails_temporarily_and_publishes_nothing(client, unique_ref, proxy, root):
    ref = via(proxy, unique_ref())
    built = push_image(client, ref, image())
    proxy.add("truncate", f"/blobs/{built.layer_digests[0]}", times=-1, keep_bytes=1000)
    with pytest.raises(RegistryUnavailable) as error:
        Converter(client, DirectoryPublisher(root)).convert(ref)
    assert error.value.temporary
    assert visible(root) == []


def test_a_blob_with_wrong_bytes_publishes_nothing_and_names_the_digest(client, unique_ref, proxy, root):
    ref = via(proxy, unique_ref())
    built = push_image(client, ref, image())
    bad = built.layer_digests[1]
    proxy.add("corrupt", f"/blobs/{bad}", times=-1)
    with pytest.raises(DigestMismatch) as error:
        Converter(client, DirectoryPublisher(root)).convert(ref)
    assert str(bad) in str(error.value)
    assert not error.value.temporary
    assert visible(root) == []
    assert not (root / layout.layerfs(bad)).exists()


def test_a_config_that_lies_about_diff_ids_publishes_nothing(client, unique_ref, root):
    ref = unique_ref()
    spec = image()
    from tests.support.images import build, push_built

    built = build(spec)
    config = json.loads(built.config)
    config["rootfs"]["diff_ids"][1] = "sha256:" + "1" * 64
    from ducc.model.digest import Digest

    new_config = json.dumps(config).encode()
    del built.blobs[built.config_digest]
    manifest = json.loads(built.manifest)
    manifest["config"].update(digest=str(Digest.of(new_config)), size=len(new_config))
    built.blobs[Digest.of(new_config)] = new_config
    built.config, built.manifest = new_config, json.dumps(manifest).encode()
    push_built(client, ref, built)
    with pytest.raises(DigestMismatch, match="diff_id"):
        Converter(client, DirectoryPublisher(root)).convert(ref)
    assert visible(root) == []


def test_blob_cache_serves_a_second_root_without_the_registry(client, unique_ref, proxy, root, tmp_path):
    from ducc.cache import BlobCache

    ref = via(proxy, unique_ref())
    built = push_image(client, ref, image())
    cache = BlobCache(tmp_path / "cache")
    Converter(client, DirectoryPublisher(root), cache=cache).convert(ref)
    assert all(cache.get(d) for d in built.layer_digests)
    before = len(proxy.requests("GET", "/blobs/"))
    Converter(client, DirectoryPublisher(tmp_path / "other-root"), cache=cache).convert(ref)
    fetched = [s.path for s in proxy.requests("GET", "/blobs/")[before:]]
    assert fetched == [f"/v2/{ref.repository}/blobs/{built.config_digest}"]


def test_a_duccs_record_is_understood(client, unique_ref, root):
    """A tag converted by DUCC (Go-struct record, no ducc.json) is checked against the registry and adopted."""
    ref = unique_ref()
    built = push_image(client, ref, image())
    converter = Converter(client, DirectoryPublisher(root))
    converter.convert(ref)
    record_dir = root / layout.metadata_dir(ref)
    (record_dir / layout.RECORD_DETAILS).unlink()
    manifest = json.loads(built.manifest)
    go = {"SchemaVersion": 2, "MediaType": manifest["mediaType"],
          "Config": {k[0].upper() + k[1:]: v for k, v in manifest["config"].items()},
          "Layers": [{k[0].upper() + k[1:]: v for k, v in layer.items()} for layer in manifest["layers"]]}
    (record_dir / "manifest.json").write_text(json.dumps(go))
    record = converter.reader.read_record(ref, Platform("linux", "amd64"))
    assert record is not None and record.config_digest == built.config_digest and record.tag_digest is None
    result = converter.convert(ref)
    assert result.state == "published" and result.flat_reused and result.layers_unpacked == 0
    assert converter.convert(ref).state == "unchanged"


def test_sigkill_mid_conversion_leaves_nothing_visible_and_the_next_run_publishes(client, unique_ref, root, tmp_path):
    ref = unique_ref()
    files = [File(f"many/f{i:05d}", os.urandom(2000)) for i in range(6000)]
    push_image(client, ref, ImageSpec(layers=[BASE, Layer([Dir("many"), *files], compression="none")]))
    env = {**os.environ, "DUCC_CACHE_DIR": "off", "DUCC_ROOT": str(root)}
    process = subprocess.Popen([sys.executable, "-m", "ducc", "-q", "convert", str(ref)], env=env)
    staging = root / layout.STAGING
    deadline = time.monotonic() + 60
    while not any(staging.glob("*/*/layerfs/many/f*")):  # the 6000-file layer is being unpacked
        assert time.monotonic() < deadline and process.poll() is None, "the conversion never unpacked the layer"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (root / layout.tag_link(ref)).exists()
    assert visible(root) == []
    leftovers = [p for p in staging.iterdir() if p.is_dir()]
    assert leftovers, "the kill came too late to test anything"
    done = subprocess.run([sys.executable, "-m", "ducc", "-q", "convert", str(ref)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list((root / layout.tag_link(ref) / "many").iterdir())) == 6000
    assert [p for p in staging.iterdir() if p.is_dir()] == []


def test_a_registry_that_keeps_failing_is_asked_as_often_as_the_one_retry_policy_allows(client, unique_ref, proxy, root):
    """Retries live in the registry transport only: a layer that always answers 503 costs exactly the policy's
    attempts (the converter used to retry around the client: attempts x attempts requests)."""
    ref = via(proxy, unique_ref())
    built = push_image(client, ref, image())
    failing = built.layer_digests[0]
    proxy.add("status", f"/blobs/{failing}", times=-1, status=503)
    with pytest.raises(RegistryUnavailable):
        Converter(client, DirectoryPublisher(root)).convert(ref)
    assert len(proxy.requests("GET", f"/blobs/{failing}")) == client.retry.attempts == 3
    assert visible(root) == []


def test_a_blob_that_keeps_breaking_off_is_resumed_within_the_same_budget(client, unique_ref, proxy, root):
    ref = via(proxy, unique_ref())
    built = push_image(client, ref, image())
    big = built.layer_digests[0]
    proxy.add("truncate", f"/blobs/{big}", times=2, keep_bytes=100_000)
    result = Converter(client, DirectoryPublisher(root)).convert(ref)
    assert result.state == "published"
    gets = proxy.requests("GET", f"/blobs/{big}")
    assert len(gets) == 3
    assert [g.headers.get("Range") for g in gets] == [None, "bytes=100000-", "bytes=200000-"]


class Watermark:
    """Progress that remembers how many bytes of each layer were read at most."""

    def __init__(self) -> None:
        self.read: dict[object, int] = {}

    def stage(self, ref: object, stage: str, detail: str = "") -> None:
        pass

    def layer(self, digest: object, done: int, total: int | None) -> None:
        self.read[digest] = max(done, self.read.get(digest, 0))


def test_a_full_disk_fails_temporarily_at_once_naming_the_entry_and_the_layer(client, unique_ref, small_disk):
    from ducc.errors import StorageFull

    ref = unique_ref()
    big = os.urandom(40 << 20)  # incompressible: 40 MiB of gzip for a 2 MiB disk
    built = push_image(client, ref, ImageSpec(layers=[Layer([Dir("data"), File("data/big", big)])]))
    root = small_disk / "repo"
    watermark = Watermark()
    with pytest.raises(StorageFull) as error:
        Converter(client, DirectoryPublisher(root), progress=watermark).convert(ref)
    assert error.value.temporary
    message = str(error.value)
    assert str(ref) in message and str(built.layer_digests[0]) in message and "data/big" in message
    layer_size = len(built.blobs[built.layer_digests[0]])
    print(f"read {watermark.read[built.layer_digests[0]]} of {layer_size} bytes when the disk was full")
    assert watermark.read[built.layer_digests[0]] < layer_size / 2  # raised long before the download ended
    assert visible(root) == [] and not (root / layout.layerfs(built.layer_digests[0])).exists()


def test_a_name_the_filesystem_refuses_fails_permanently_naming_it(client, unique_ref, root):
    from ducc.errors import LocalStorageError

    ref = unique_ref()
    long_name = "n" * 300  # over NAME_MAX (255) of every Linux filesystem
    push_image(client, ref, ImageSpec(layers=[Layer([File("ok", b"1"), File(long_name, b"2")])]))
    with pytest.raises(LocalStorageError) as error:
        Converter(client, DirectoryPublisher(root)).convert(ref)
    assert not error.value.temporary
    assert "refuses this name" in str(error.value) and long_name in str(error.value)
    assert visible(root) == []
